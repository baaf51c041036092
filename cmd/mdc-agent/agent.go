package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/microdc/mdc/api/agentapi"
	"github.com/microdc/mdc/machine"
)

// agent is one run of mdc-agent on a booted node.
type agent struct {
	cfg config
	c   *client
	log *slog.Logger
	// power reboots or powers off the node. On a node it does not return;
	// tests record the action instead.
	power func(agentapi.Action) error
	// joinBackoff paces retries of a failing join step.
	joinBackoff backoff
}

// run does what the boot is for.
func (a *agent) run(ctx context.Context) error {
	a.log.Info("starting", "version", version, "machine", a.cfg.Machine, "mode", a.cfg.Mode, "mdc", a.cfg.URL)
	if a.cfg.Mode == agentapi.ModeCommissioning {
		return a.commission(ctx)
	}
	return a.role(ctx)
}

// commission reports the hardware and does what mdc answers.
func (a *agent) commission(ctx context.Context) error {
	if a.cfg.Root == "/" || a.cfg.Root == "" {
		if up := linksUp("/sys", 5*time.Second); len(up) > 0 {
			a.log.Info("brought links up to read their carrier", "links", strings.Join(up, ","))
		}
	}
	f := collectFacts(a.cfg.Root)
	a.log.Info("hardware", "summary", describe(f))
	var ans agentapi.Answer
	if err := a.c.do(ctx, "POST", agentapi.PathFacts, f, &ans); err != nil {
		return fmt.Errorf("report facts: %w", err)
	}
	if ans.Event != nil {
		a.log.Info("facts recorded", "event", ans.Event.Type, "seq", ans.Event.Seq)
	}
	return a.obey(ctx, ans, agentapi.PhaseWaiting, "")
}

// describe is one line about the hardware for the console.
func describe(f machine.Facts) string {
	var disks, nics []string
	for _, d := range f.Disks {
		disks = append(disks, fmt.Sprintf("%s %s", d.Name, size(d.SizeBytes)))
	}
	for _, n := range f.NICs {
		link := "no link"
		if n.Carrier {
			link = "link"
			if n.SpeedMbps > 0 {
				link = strconv.Itoa(n.SpeedMbps) + "Mb/s"
			}
		}
		nics = append(nics, fmt.Sprintf("%s %s %s %s", n.Name, n.MAC, n.Driver, link))
	}
	return fmt.Sprintf("%s %s, %s boot, %d CPUs (%s), %s memory, disks [%s], NICs [%s]",
		f.Vendor, f.Product, f.BootMode, f.CPUs, f.CPUModel, size(f.MemoryBytes), strings.Join(disks, ", "), strings.Join(nics, ", "))
}

func size(b uint64) string {
	switch {
	case b >= 1<<40:
		return strconv.FormatFloat(float64(b)/(1<<40), 'f', 1, 64) + "TiB"
	case b >= 1<<30:
		return strconv.FormatFloat(float64(b)/(1<<30), 'f', 1, 64) + "GiB"
	default:
		return strconv.FormatUint(b>>20, 10) + "MiB"
	}
}

// obey carries out mdc's answers: reboot and poweroff end the agent's work;
// wait and none send heartbeats (reporting phase and status) and obey
// their answers in turn.
func (a *agent) obey(ctx context.Context, ans agentapi.Answer, phase, status string) error {
	said := ""
	for {
		switch ans.Action {
		case agentapi.ActionReboot, agentapi.ActionPoweroff:
			a.log.Info("mdc says "+string(ans.Action), "role", ans.Role, "reason", ans.Reason)
			if err := a.power(ans.Action); err != nil {
				return fmt.Errorf("%s: %w", ans.Action, err)
			}
			return nil
		case agentapi.ActionWait, agentapi.ActionNone:
		default:
			a.log.Warn("mdc asks for an action this agent does not know; waiting", "action", ans.Action)
		}
		if msg := string(ans.Action) + ans.Reason; msg != said && ans.Action != agentapi.ActionNone {
			a.log.Info("waiting", "reason", ans.Reason)
			said = msg
		}
		every := time.Duration(max(ans.HeartbeatSeconds, 1)) * time.Second
		if err := a.c.sleep(ctx, every); err != nil {
			return nil // stopped
		}
		next, err := a.heartbeat(ctx, phase, status)
		var he *httpError
		switch {
		case errors.As(err, &he):
			a.log.Error("heartbeat refused; trying again", "err", err)
			continue
		case err != nil:
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if next.HeartbeatSeconds == 0 {
			next.HeartbeatSeconds = ans.HeartbeatSeconds
		}
		ans = next
	}
}

func (a *agent) heartbeat(ctx context.Context, phase, status string) (agentapi.Answer, error) {
	hb := agentapi.Heartbeat{Phase: phase, Status: status, UptimeSeconds: a.uptime()}
	var ans agentapi.Answer
	err := a.c.do(ctx, "POST", agentapi.PathHeartbeat, hb, &ans)
	return ans, err
}

func (a *agent) uptime() int64 {
	f := strings.Fields(read(a.cfg.hostPath("/proc/uptime")))
	if len(f) == 0 {
		return 0
	}
	s, _ := strconv.ParseFloat(f[0], 64)
	return int64(s)
}

// role reports the boot, joins the role's cluster and heartbeats.
func (a *agent) role(ctx context.Context) error {
	image := a.cfg.Image
	if image == "" {
		image = read(a.cfg.hostPath("/etc/mdc/image"))
	}
	booted := machine.BootedData{Image: image, Kernel: read(a.cfg.hostPath("/proc/sys/kernel/osrelease"))}
	var rec agentapi.Recorded
	if err := a.c.do(ctx, "POST", agentapi.PathBooted, booted, &rec); err != nil {
		return fmt.Errorf("report booted: %w", err)
	}
	a.log.Info("booted recorded", "kernel", booted.Kernel, "state", rec.State)

	var rc agentapi.RoleConfig
	var evidence map[string]string
	for attempt := 0; ; attempt++ {
		if err := a.c.do(ctx, "GET", agentapi.PathConfig+a.report(), nil, &rc); err != nil {
			return fmt.Errorf("fetch the role configuration: %w", err)
		}
		var err error
		if evidence, err = a.join(ctx, rc); err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil
		}
		d := a.joinBackoff.delay(attempt)
		a.log.Error("join failed; trying again", "role", rc.Role, "attempt", attempt+1, "in", d.Round(time.Second), "err", err)
		// Tell mdc (its timeout reason quotes the last status), and stop
		// if it wants the node elsewhere.
		ans, herr := a.heartbeat(ctx, agentapi.PhaseJoining, err.Error())
		if errors.Is(herr, errRefused) {
			return herr
		}
		if herr == nil && (ans.Action == agentapi.ActionReboot || ans.Action == agentapi.ActionPoweroff) {
			return a.obey(ctx, ans, agentapi.PhaseJoining, "")
		}
		if err := a.c.sleep(ctx, d); err != nil {
			return nil
		}
	}
	if err := a.c.do(ctx, "POST", agentapi.PathJoined, machine.JoinedData{Role: rc.Role, Evidence: evidence}, &rec); err != nil {
		return fmt.Errorf("report joined: %w", err)
	}
	a.log.Info("joined", "role", rc.Role, "state", rec.State)
	return a.obey(ctx, agentapi.Answer{Action: agentapi.ActionNone, HeartbeatSeconds: rc.HeartbeatSeconds}, agentapi.PhaseJoined, "joined")
}

// join writes the role's files and runs its join hook; it returns the
// evidence the hook printed.
func (a *agent) join(ctx context.Context, rc agentapi.RoleConfig) (map[string]string, error) {
	for _, f := range rc.Files {
		if err := a.writeFile(f); err != nil {
			return nil, err
		}
	}
	if len(rc.Files) > 0 {
		a.log.Info("role files written", "files", len(rc.Files))
	}
	hook := rc.Join.Hook
	if hook == "" {
		a.log.Info("the role has no join step", "role", rc.Role)
		return map[string]string{}, nil
	}
	if a.cfg.JoinHook != "" {
		hook = a.cfg.JoinHook
	}
	hookPath := a.cfg.hostPath(hook)
	if _, err := os.Stat(hookPath); err != nil {
		return nil, fmt.Errorf("join hook %s is not in this image (role %s): %v", hook, rc.Role, err)
	}
	runDir := a.cfg.hostPath(a.cfg.RunDir)
	if err := os.MkdirAll(runDir, 0o700); err != nil {
		return nil, fmt.Errorf("run directory: %w", err)
	}
	conf := filepath.Join(runDir, "role-config.json")
	var body bytes.Buffer
	if len(rc.Config) == 0 || json.Compact(&body, rc.Config) != nil {
		body.Reset()
		body.WriteString("{}")
	}
	body.WriteByte('\n')
	if err := os.WriteFile(conf, body.Bytes(), 0o600); err != nil {
		return nil, fmt.Errorf("role configuration: %w", err)
	}
	timeout := time.Duration(rc.Join.TimeoutSeconds) * time.Second
	if timeout <= 0 {
		timeout = 10 * time.Minute
	}
	hctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(hctx, hookPath, conf)
	cmd.Env = append(os.Environ(), "MDC_ROLE_CONFIG="+conf, "MDC_ROLE="+rc.Role, "MDC_MACHINE="+string(a.cfg.Machine),
		"MDC_NAME="+rc.Name, "MDC_IMAGE="+rc.Image, "MDC_URL="+a.cfg.URL)
	var out limitedBuffer
	out.max = 64 << 10
	stdout, stderr := &lineLogger{log: a.log, prefix: "join hook"}, &lineLogger{log: a.log, prefix: "join hook"}
	cmd.Stdout, cmd.Stderr = io.MultiWriter(&out, stdout), stderr
	killGroup(cmd)
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	a.log.Info("running the join hook", "hook", hook, "role", rc.Role)
	err := cmd.Run()
	stdout.flush()
	stderr.flush()
	if hctx.Err() == context.DeadlineExceeded {
		return nil, fmt.Errorf("join hook %s ran longer than %s", hook, timeout)
	}
	if err != nil {
		return nil, fmt.Errorf("join hook %s: %v", hook, err)
	}
	evidence := lastJSONObject(out.Bytes())
	var missing []string
	for _, k := range rc.Evidence {
		if evidence[k] == "" {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("join hook %s succeeded but printed no %s: it must end its output with a JSON object carrying them",
			hook, strings.Join(missing, ", "))
	}
	a.log.Info("join hook succeeded", "hook", hook, "took", time.Since(start).Round(time.Millisecond), "evidence", keys(evidence))
	return evidence, nil
}

func keys(m map[string]string) string {
	k := make([]string, 0, len(m))
	for key := range m {
		k = append(k, key)
	}
	slices.Sort(k)
	return strings.Join(k, ",")
}

// writeFile writes one role file, atomically, refusing paths outside the
// allowed roots even through symbolic links.
func (a *agent) writeFile(f agentapi.File) error {
	p := f.Path
	if !path.IsAbs(p) || path.Clean(p) != p {
		return fmt.Errorf("role file %q: not a clean absolute path", p)
	}
	var root, rel string
	for _, r := range a.cfg.FileRoots {
		if strings.HasPrefix(p, r+"/") {
			root, rel = r, strings.TrimPrefix(p, r+"/")
			break
		}
	}
	if root == "" {
		return fmt.Errorf("role file %s: outside the directories this agent writes (%s)", p, strings.Join(a.cfg.FileRoots, ", "))
	}
	mode, err := strconv.ParseUint(f.Mode, 8, 32)
	if err != nil || mode > 0o777 {
		return fmt.Errorf("role file %s: mode %q: want octal permissions up to 0777", p, f.Mode)
	}
	hostRoot := a.cfg.hostPath(root)
	if err := os.MkdirAll(hostRoot, 0o755); err != nil {
		return fmt.Errorf("role file %s: %w", p, err)
	}
	r, err := os.OpenRoot(hostRoot)
	if err != nil {
		return fmt.Errorf("role file %s: %w", p, err)
	}
	defer r.Close()
	if dir := path.Dir(rel); dir != "." {
		if err := r.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("role file %s: %w", p, err)
		}
	}
	tmp := rel + ".mdc-agent.tmp"
	if err := r.WriteFile(tmp, []byte(f.Content), os.FileMode(mode)); err != nil {
		return fmt.Errorf("role file %s: %w", p, err)
	}
	if err := r.Chmod(tmp, os.FileMode(mode)); err != nil { // past the umask
		_ = r.Remove(tmp)
		return fmt.Errorf("role file %s: %w", p, err)
	}
	if err := r.Rename(tmp, rel); err != nil {
		_ = r.Remove(tmp)
		return fmt.Errorf("role file %s: %w", p, err)
	}
	return nil
}

// lastJSONObject finds the last line of out that is a JSON object and
// returns its members as strings (other JSON values compactly encoded).
func lastJSONObject(out []byte) map[string]string {
	lines := bytes.Split(bytes.TrimSpace(out), []byte("\n"))
	for i := len(lines) - 1; i >= 0; i-- {
		line := bytes.TrimSpace(lines[i])
		if len(line) == 0 || line[0] != '{' {
			continue
		}
		var obj map[string]json.RawMessage
		if json.Unmarshal(line, &obj) != nil {
			continue
		}
		ev := make(map[string]string, len(obj))
		for k, v := range obj {
			var s string
			if json.Unmarshal(v, &s) == nil {
				ev[k] = s
			} else {
				ev[k] = string(v)
			}
		}
		return ev
	}
	return map[string]string{}
}

// limitedBuffer keeps the first max bytes written to it.
type limitedBuffer struct {
	bytes.Buffer
	max int
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := b.max - b.Len(); room > 0 {
		b.Buffer.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// lineLogger logs what a hook writes, a line at a time.
type lineLogger struct {
	log    *slog.Logger
	prefix string
	buf    []byte
}

func (l *lineLogger) Write(p []byte) (int, error) {
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			break
		}
		l.log.Info(l.prefix + ": " + string(l.buf[:i]))
		l.buf = l.buf[i+1:]
	}
	if len(l.buf) > 4096 {
		l.flush()
	}
	return len(p), nil
}

func (l *lineLogger) flush() {
	if len(l.buf) > 0 {
		l.log.Info(l.prefix + ": " + string(l.buf))
		l.buf = nil
	}
}

// report is what the node tells its role about itself with GET config:
// the keys of <run dir>/report.json (public keys, peer ids), which the role
// image writes before the agent starts. Only public values belong there.
func (a *agent) report() string {
	b, err := os.ReadFile(a.cfg.hostPath(path.Join(a.cfg.RunDir, "report.json")))
	if err != nil {
		return ""
	}
	var m map[string]string
	if err := json.Unmarshal(b, &m); err != nil {
		a.log.Warn("report.json is not a JSON object of strings; sending no report", "err", err)
		return ""
	}
	q := url.Values{}
	for k, v := range m {
		q.Set(k, v)
	}
	return "?" + q.Encode()
}
