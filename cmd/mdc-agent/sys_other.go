//go:build !linux

package main

import (
	"errors"
	"os"
	"os/exec"
	"time"

	"github.com/microdc/mdc/api/agentapi"
)

// mdc-agent runs on Linux nodes; elsewhere it builds for development only.

func power(agentapi.Action) error { return errors.New("reboot and power off need Linux") }

func killGroup(*exec.Cmd) {}

func sameDevice(a, b *os.File) bool { return false }

func linksUp(string, time.Duration) []string { return nil }
