package main

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path"
	"strings"

	"github.com/microdc/mdc/api/agentapi"
	"github.com/microdc/mdc/machine"
)

// config is everything the agent needs to know, from (lowest first) its
// defaults, the environment, the config file and the kernel command line.
type config struct {
	URL     string // mdc.url: http://10.0.0.1:8080
	Machine machine.ID
	Token   string // never logged
	Mode    agentapi.Mode
	Image   string // the image's name, if the image says (image= or /etc/mdc/image)

	JoinHook  string   // overrides the hook the role configuration names
	RunDir    string   // where the role configuration goes (0700)
	FileRoots []string // role files may go only under these
	Console   string   // also log here ("" for none)
	Root      string   // prefix of every host path: /sys, /proc, /etc … ("/" on a node)
}

func defaultConfig() config {
	return config{RunDir: "/run/mdc", FileRoots: []string{"/etc", "/run", "/var/lib"}, Console: "/dev/console", Root: "/"}
}

// hostPath is p on the host the agent describes.
func (c *config) hostPath(p string) string { return path.Join(c.Root, p) }

// set applies one key=value from any source; keys may carry the mdc.
// prefix of the kernel command line.
func (c *config) set(key, value string) error {
	switch strings.TrimPrefix(key, "mdc.") {
	case "url":
		c.URL = value
	case "machine":
		id, err := machine.ParseID(value)
		if err != nil {
			return fmt.Errorf("machine: %w", err)
		}
		c.Machine = id
	case "token":
		c.Token = value
	case "mode":
		c.Mode = agentapi.Mode(value)
	case "image":
		c.Image = value
	case "join_hook":
		c.JoinHook = value
	case "run_dir":
		c.RunDir = value
	case "file_roots":
		c.FileRoots = nil
		for _, r := range strings.Split(value, ",") {
			if r = strings.TrimSpace(r); r != "" {
				c.FileRoots = append(c.FileRoots, path.Clean(r))
			}
		}
	case "console":
		if value == "off" {
			value = ""
		}
		c.Console = value
	default:
		return fmt.Errorf("unknown setting %q (url, machine, token, mode, image, join_hook, run_dir, file_roots, console)", key)
	}
	return nil
}

// fromEnv reads the variables the NixOS module sets.
func (c *config) fromEnv(getenv func(string) string) {
	if v := getenv("MDC_JOIN_HOOK"); v != "" {
		c.JoinHook = v
	}
	if v := getenv("MDC_RUN_DIR"); v != "" {
		c.RunDir = v
	}
}

// fromFile reads key=value lines; # starts a comment. A missing file is
// fine unless required.
func (c *config) fromFile(file string, required bool) error {
	f, err := os.Open(file)
	if errors.Is(err, fs.ErrNotExist) && !required {
		return nil
	}
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return fmt.Errorf("%s:%d: want key=value", file, n)
		}
		if err := c.set(strings.TrimSpace(k), unquote(strings.TrimSpace(v))); err != nil {
			return fmt.Errorf("%s:%d: %w", file, n, err)
		}
	}
	return sc.Err()
}

// fromCmdline applies the mdc.* parameters of a kernel command line.
func (c *config) fromCmdline(cmdline string) error {
	for _, p := range splitCmdline(cmdline) {
		k, v, _ := strings.Cut(p, "=")
		if !strings.HasPrefix(k, "mdc.") {
			continue
		}
		if err := c.set(k, v); err != nil {
			return fmt.Errorf("kernel command line: %w", err)
		}
	}
	return nil
}

// splitCmdline splits a kernel command line as the kernel does: on spaces,
// with double quotes keeping spaces inside a value (and removed).
func splitCmdline(s string) []string {
	var out []string
	var b strings.Builder
	quoted, in := false, false
	for _, r := range s {
		switch {
		case r == '"':
			quoted, in = !quoted, true
		case !quoted && (r == ' ' || r == '\t' || r == '\n'):
			if in {
				out = append(out, b.String())
				b.Reset()
				in = false
			}
		default:
			b.WriteRune(r)
			in = true
		}
	}
	if in {
		out = append(out, b.String())
	}
	return out
}

func unquote(v string) string {
	if len(v) >= 2 && (v[0] == '"' && v[len(v)-1] == '"' || v[0] == '\'' && v[len(v)-1] == '\'') {
		return v[1 : len(v)-1]
	}
	return v
}

// validate says what is missing, in words an operator at the console
// can act on.
func (c *config) validate() error {
	var missing []string
	if c.URL == "" {
		missing = append(missing, "mdc.url")
	}
	if c.Machine == "" {
		missing = append(missing, "mdc.machine")
	}
	if c.Token == "" {
		missing = append(missing, "mdc.token")
	}
	if len(missing) > 0 {
		return fmt.Errorf("%s missing: mdc puts them on the kernel command line of the boots it serves; was this machine booted by mdc?",
			strings.Join(missing, ", "))
	}
	u, err := url.Parse(c.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("mdc.url %q: want http://HOST[:PORT]", c.URL)
	}
	c.URL = strings.TrimRight(c.URL, "/")
	switch c.Mode {
	case agentapi.ModeCommissioning, agentapi.ModeRole:
	case "":
		return errors.New("mdc.mode missing: want commissioning or role")
	default:
		return fmt.Errorf("mdc.mode %q: want commissioning or role", c.Mode)
	}
	for _, r := range c.FileRoots {
		if !path.IsAbs(r) || r == "/" {
			return fmt.Errorf("file_roots: %q is not an absolute directory below /", r)
		}
	}
	return nil
}
