package vrack

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// Proc is a process the rack started in a namespace; Stop ends it by PID.
type Proc struct {
	Name string
	Cmd  *exec.Cmd
	Log  string        // stdout and stderr
	Done chan struct{} // closed when the process has exited
}

// Start runs args in the rack's namespace with stdout and stderr in
// Dir/name.log (and copied to stdout when it is not nil). The process is
// killed if the rack's program dies, and stopped by PID at Close.
func (r *Rack) Start(name string, stdout io.Writer, args ...string) (*Proc, error) {
	return r.StartIn(r.NS, name, stdout, args...)
}

// StartIn is Start in another namespace (one from PeerNS).
func (r *Rack) StartIn(ns, name string, stdout io.Writer, args ...string) (*Proc, error) {
	// A name started again (a subtest's mdc) gets a log of its own.
	log := r.Dir + "/" + name + ".log"
	for i := 2; ; i++ {
		if _, err := os.Stat(log); err != nil {
			break
		}
		log = fmt.Sprintf("%s/%s-%d.log", r.Dir, name, i)
	}
	return r.startLog(ns, name, log, stdout, args...)
}

func (r *Rack) startLog(ns, name, log string, stdout io.Writer, args ...string) (*Proc, error) {
	p := &Proc{Name: name, Log: log, Done: make(chan struct{})}
	f, err := os.OpenFile(p.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	p.Cmd = exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...)
	p.Cmd.Stderr = f
	p.Cmd.Stdout = f
	if stdout != nil {
		p.Cmd.Stdout = io.MultiWriter(f, stdout)
	}
	p.Cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	// Pdeathsig fires when the starting thread exits, and InNS ends the
	// threads it locks: start from a thread of our own that lives as long
	// as the process.
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := p.Cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		_ = p.Cmd.Wait()
		f.Close()
		close(p.Done)
	}()
	if err := <-started; err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s (%s): %w", name, strings.Join(args, " "), err)
	}
	r.log.Debug("started", "name", name, "pid", p.Cmd.Process.Pid, "log", p.Log)
	r.onClose(p.Stop)
	return p, nil
}

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.Done:
		return true
	default:
		return false
	}
}

// Stop ends the process with SIGTERM, then SIGKILL after 5 s.
func (p *Proc) Stop() {
	if p.Exited() {
		return
	}
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.Done:
	case <-time.After(5 * time.Second):
		_ = p.Cmd.Process.Kill()
		<-p.Done
	}
}

// Tail is the last n bytes of the process's log.
func (p *Proc) Tail(n int) string { return tailFile(p.Log, n) }

func tailFile(path string, n int) string {
	b, _ := os.ReadFile(path)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

func lookPath(name string) (string, error) { return exec.LookPath(name) }
