package main

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// One setting given three ways: the flag wins, then the environment, then
// the file; settings given only one way are taken from there.
func TestSettlePrecedence(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "mdc.yaml")
	if err := os.WriteFile(cfg, []byte("http-addr: 10.0.0.1:1\nlog-level: debug\ndata-dir: /from/file\nshutdown-timeout: 3s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	type want struct {
		httpAddr, dataDir string
		level             slog.Level
		shutdown          time.Duration
	}
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want want
	}{
		{"file only", []string{"--config", cfg}, nil,
			want{"10.0.0.1:1", "/from/file", slog.LevelDebug, 3 * time.Second}},
		{"env over file", []string{"--config", cfg}, map[string]string{"MDC_HTTP_ADDR": "10.0.0.2:2", "MDC_SHUTDOWN_TIMEOUT": "4s"},
			want{"10.0.0.2:2", "/from/file", slog.LevelDebug, 4 * time.Second}},
		{"flag over env and file", []string{"--config", cfg, "--http-addr", "10.0.0.3:3"}, map[string]string{"MDC_HTTP_ADDR": "10.0.0.2:2", "MDC_LOG_LEVEL": "warn"},
			want{"10.0.0.3:3", "/from/file", slog.LevelWarn, 3 * time.Second}},
		{"config file named in env", nil, map[string]string{"MDC_CONFIG": cfg},
			want{"10.0.0.1:1", "/from/file", slog.LevelDebug, 3 * time.Second}},
		{"defaults without file", nil, nil,
			want{":8080", "/var/lib/mdc", slog.LevelInfo, 10 * time.Second}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseServe(tc.args, &bytes.Buffer{}, env(tc.env))
			if err != nil {
				t.Fatal(err)
			}
			got := want{c.httpAddr, c.dataDir, c.logLevel, c.shutdownTimeout}
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

// Mistakes in how serve is called are one line on stderr and exit 2, found
// before anything starts (no data directory is created).
func TestServeUsageErrors(t *testing.T) {
	dir := t.TempDir()
	cfg := func(body string) string {
		p := filepath.Join(dir, strings.ReplaceAll(body[:8], " ", "_")+".yaml")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	data := filepath.Join(dir, "data")
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"unknown flag", []string{"serve", "--no-such-flag"}, nil, "flag provided but not defined: -no-such-flag"},
		{"bad duration flag", []string{"serve", "--shutdown-timeout", "soon"}, nil, "shutdown-timeout"},
		{"bad env value", []string{"serve"}, map[string]string{"MDC_SHUTDOWN_TIMEOUT": "soon"}, "MDC_SHUTDOWN_TIMEOUT"},
		{"unknown yaml key", []string{"serve", "--config", cfg("http-adr: :1\n")}, nil, `unknown setting "http-adr"`},
		{"yaml map value", []string{"serve", "--config", cfg("http-addr:\n  a: b\n")}, nil, "want a value, not a map"},
		{"missing config", []string{"serve", "--config", filepath.Join(dir, "nope.yaml")}, nil, "nope.yaml"},
		{"bad read access", []string{"serve", "--read-access", "everyone"}, nil, "read-access"},
		{"unknown command", []string{"serv"}, nil, `unknown command "serv"`},
		{"ceph conf without keyring", []string{"serve", "--ceph-conf", "/etc/ceph/ceph.conf"}, nil, "--ceph-conf and --ceph-keyring go together"},
		{"nats cluster on every interface", []string{"serve", "--nats-cluster", "0.0.0.0:6222"}, nil, "not 0.0.0.0 or a name"},
		{"nats cluster by name", []string{"serve", "--nats-cluster", "mdc.local:6222"}, nil, "--nats-cluster"},
		{"nats clients without cluster", []string{"serve", "--nats-cluster-clients", ":4222"}, nil, "--nats-cluster-clients goes with --nats-cluster"},
		{"nats node ports", []string{"serve", "--nats-cluster", "10.0.0.1:6222", "--nats-node-ports", "4222,6222"}, nil, "--nats-node-ports"},
		{"nats node port not a number", []string{"serve", "--nats-cluster", "10.0.0.1:6222", "--nats-node-ports", "4222,x,8222"}, nil, "--nats-node-ports"},
		{"nats node host", []string{"serve", "--nats-cluster", "10.0.0.1:6222", "--nats-node-host", "any"}, nil, "--nats-node-host"},
		{"bmc timeout too short", []string{"serve", "--bmc-timeout", "10ms"}, nil, "--bmc-timeout"},
		{"bmc boot mode", []string{"serve", "--bmc-boot-mode", "efi"}, nil, "--bmc-boot-mode"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append(tc.args, "--data-dir", data)
			e := map[string]string{}
			for k, v := range tc.env {
				e[k] = v
			}
			var stdout, stderr bytes.Buffer
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			code := exitCode(run(ctx, args, &stdout, &stderr, env(e)), &stderr)
			if code != 2 {
				t.Fatalf("exit %d, want 2; stderr: %s", code, stderr.String())
			}
			msg := stderr.String()
			if strings.Count(msg, "\n") != 1 || !strings.HasPrefix(msg, "mdc: ") || !strings.Contains(msg, tc.want) {
				t.Errorf("stderr = %q, want one line containing %q", msg, tc.want)
			}
			if _, err := os.Stat(data); err == nil {
				t.Errorf("%s was created before the arguments were checked", data)
			}
		})
	}
}
