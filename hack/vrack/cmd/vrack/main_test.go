package main

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// Bad flags are usage errors (exit 2), found before anything starts.
func TestUpUsage(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "mdc")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, args := range map[string][]string{
		"no command":     {},
		"unknown":        {"down"},
		"no dir":         {"up", "--mdc", bin, "--agent", bin},
		"bad bmc":        {"up", "--dir", t.TempDir(), "--mdc", bin, "--agent", bin, "--bmc", "none,ilo"},
		"bad firmware":   {"up", "--dir", t.TempDir(), "--mdc", bin, "--agent", bin, "--firmware", "coreboot"},
		"too many":       {"up", "--dir", t.TempDir(), "--mdc", bin, "--agent", bin, "--machines", "41"},
		"missing binary": {"up", "--dir", t.TempDir(), "--mdc", filepath.Join(t.TempDir(), "nope")},
	} {
		err := run(context.Background(), args, io.Discard, io.Discard)
		var u usageError
		if !errors.As(err, &u) {
			t.Errorf("%s: %v, want a usage error", name, err)
		}
	}
}

func TestPerMachine(t *testing.T) {
	got := perMachine("none, ipmi", 4)
	want := []string{"none", "ipmi", "ipmi", "ipmi"}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("perMachine = %q, want %q", got, want)
		}
	}
}
