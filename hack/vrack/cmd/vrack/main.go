// Command vrack is a virtual rack for mdc: QEMU machines in a network
// namespace booting from `mdc serve`, some with BMCs (IPMI through
// OpenIPMI's ipmi_sim, or Redfish).
//
//	vrack up --dir DIR [--machines N] [--bmc none,ipmi,redfish,...] [--firmware bios,uefi,...]
//	         [--mdc BIN] [--agent BIN] [--mdc-flags "..."] [--api-addr 127.0.0.1:8080]
//	vrack chassis --state DIR get power|boot ... | set power 1|0|reset 1|shutdown 1|boot DEV
//
// `up` builds the rack, starts mdc in it with the test image as the
// commissioning image and the `test` role's image, powers on the machines
// without a BMC (plugged in), leaves the others off for their BMC, prints
// one JSON line per machine and one for mdc, and runs until SIGINT or
// SIGTERM. mdc listens inside the namespace; vrack relays --api-addr on the
// host to it (a TCP forwarder in this process), so the CLI on the host
// works with --server http://API-ADDR --data-dir DIR/data.
//
// `chassis` is the chassis-control program ipmi_sim runs to power a
// machine; vrack up configures it.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/microdc/mdc/hack/vrack"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	var u usageError
	switch {
	case errors.As(err, &u):
		fmt.Fprintln(os.Stderr, "vrack:", err)
		os.Exit(2)
	case err != nil:
		fmt.Fprintln(os.Stderr, "vrack:", err)
		os.Exit(1)
	}
}

type usageError struct{ error }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageError{errors.New("usage: vrack up --dir DIR ... | vrack chassis --state DIR get|set ...")}
	}
	switch args[0] {
	case "up":
		return up(ctx, args[1:], stdout, stderr)
	case "chassis":
		log := slog.New(slog.NewTextHandler(stderr, nil))
		return vrack.Chassis(ctx, args[1:], stdout, log)
	}
	return usageError{fmt.Errorf("unknown command %q (up, chassis)", args[0])}
}

// The role policy of the rack: every machine gets role test.
const policy = `default: test
roles:
  test:
    evidence: [kernel, hook]
    heartbeat: 5s
    files:
      - {path: /etc/mdc/motd, mode: "0644", content: "a vrack test node\n"}
`

type upConfig struct {
	dir, mdc, agent, mdcFlags, apiAddr, cache, name, subnet, logLevel string
	machines, memory, cpus, port                                      int
	bmcs, firmwares                                                   []string
}

func parseUp(args []string, stderr io.Writer) (upConfig, error) {
	var c upConfig
	fs := flag.NewFlagSet("vrack up", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.dir, "dir", "", "directory for the rack's files (mdc's data in DIR/data); required")
	fs.IntVar(&c.machines, "machines", 2, "number of machines")
	bmc := fs.String("bmc", "none", "BMC per machine, comma-separated: none (powered on at once), ipmi or redfish (powered off); the last repeats")
	fw := fs.String("firmware", "bios", "firmware per machine, comma-separated: bios (SeaBIOS + iPXE) or uefi (OVMF); the last repeats")
	fs.StringVar(&c.mdc, "mdc", "bin/mdc", "the mdc binary")
	fs.StringVar(&c.agent, "agent", "", "the mdc-agent binary for the test image (default: mdc-agent beside --mdc)")
	fs.StringVar(&c.mdcFlags, "mdc-flags", "", "more flags for mdc serve, space-separated")
	fs.StringVar(&c.apiAddr, "api-addr", "127.0.0.1:8080", "host address relayed to mdc's API in the namespace")
	fs.StringVar(&c.cache, "cache", vrack.DefaultCacheDir(), "where the Debian kernel download is kept")
	fs.StringVar(&c.name, "name", "", "network namespace name (default vrack<pid>)")
	fs.StringVar(&c.subnet, "subnet", "10.79.0", "rack network (first three octets); mdc is .1")
	fs.IntVar(&c.memory, "memory", 1024, "MiB of memory per machine")
	fs.IntVar(&c.cpus, "cpus", 1, "CPUs per machine")
	fs.IntVar(&c.port, "port", 8080, "mdc's HTTP port inside the namespace")
	fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return c, usageError{err}
	}
	if c.dir == "" {
		return c, usageError{errors.New("up: --dir is required")}
	}
	if c.machines < 0 || c.machines > 40 {
		return c, usageError{fmt.Errorf("up: --machines %d: want 0 to 40", c.machines)}
	}
	c.bmcs = perMachine(*bmc, c.machines)
	c.firmwares = perMachine(*fw, c.machines)
	for i := 0; i < c.machines; i++ {
		switch c.bmcs[i] {
		case "none", "ipmi", "redfish":
		default:
			return c, usageError{fmt.Errorf("up: --bmc %q: want none, ipmi or redfish", c.bmcs[i])}
		}
		switch vrack.Firmware(c.firmwares[i]) {
		case vrack.BIOS, vrack.UEFI:
		default:
			return c, usageError{fmt.Errorf("up: --firmware %q: want bios or uefi", c.firmwares[i])}
		}
	}
	if c.agent == "" {
		c.agent = filepath.Join(filepath.Dir(c.mdc), "mdc-agent")
	}
	var err error
	if c.dir, err = filepath.Abs(c.dir); err != nil {
		return c, err
	}
	if c.mdc, err = filepath.Abs(c.mdc); err != nil {
		return c, err
	}
	for _, bin := range []string{c.mdc, c.agent} {
		if st, err := os.Stat(bin); err != nil || st.IsDir() {
			return c, usageError{fmt.Errorf("up: no binary %s (make build)", bin)}
		}
	}
	return c, nil
}

// perMachine splits a comma-separated list to n values, the last repeating.
func perMachine(s string, n int) []string {
	vals := strings.Split(s, ",")
	out := make([]string, n)
	for i := range out {
		out[i] = strings.TrimSpace(vals[min(i, len(vals)-1)])
	}
	return out
}

// machineLine is what up prints for each machine.
type machineLine struct {
	Machine     string  `json:"machine"`
	MAC         string  `json:"mac"`
	Firmware    string  `json:"firmware"`
	Power       string  `json:"power"`
	BMC         string  `json:"bmc,omitempty"`
	BMCUser     string  `json:"bmc_user,omitempty"`
	BMCPassword string  `json:"bmc_password_file,omitempty"`
	SerialLog   string  `json:"serial_log"`
	MemoryMiB   int     `json:"memory_mib"`
	CPUs        int     `json:"cpus"`
	DiskBytes   []int64 `json:"disk_bytes"`
}

type mdcLine struct {
	MDC        string `json:"mdc"`      // inside the namespace
	API        string `json:"api"`      // on the host, relayed
	DataDir    string `json:"data_dir"` // --data-dir for the CLI (admin.token)
	NetNS      string `json:"netns"`    // ip netns exec NETNS …
	Log        string `json:"log"`
	CLIExample string `json:"cli"`
}

func up(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, err := parseUp(args, stderr)
	if err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.logLevel)); err != nil {
		return usageError{fmt.Errorf("up: --log-level: %v", err)}
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	if why := vrack.Missing(); why != "" {
		return errors.New(why)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	// Each up starts from an empty rack and an empty mdc.
	for _, d := range []string{"rack", "data"} {
		if err := os.RemoveAll(filepath.Join(c.dir, d)); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(filepath.Join(c.dir, "rack"), 0o755); err != nil {
		return err
	}
	rack, err := vrack.New(vrack.Config{Name: c.name, Dir: filepath.Join(c.dir, "rack"), Subnet: c.subnet, Logger: log})
	if err != nil {
		return err
	}
	defer func() {
		log.Info("stopping the rack")
		rack.Close()
	}()

	log.Info("building the test image", "cache", c.cache)
	img, err := vrack.BuildTestImage(c.cache, c.agent, c.dir)
	if err != nil {
		return fmt.Errorf("test image: %w", err)
	}
	pol := filepath.Join(c.dir, "policy.yaml")
	if err := os.WriteFile(pol, []byte(policy), 0o644); err != nil {
		return err
	}
	flags := []string{"--interface", "br0", "--dhcp-mode", "full", "--dhcp-range", c.subnet + ".100-" + c.subnet + ".200",
		"--role-policy", pol, "--agent-heartbeat", "5s"}
	flags = append(flags, strings.Fields(c.mdcFlags)...)
	mdc, err := rack.StartMDC(c.mdc, filepath.Join(c.dir, "data"), c.port, flags...)
	if err != nil {
		return err
	}
	for _, im := range [][2]string{{"commissioning", "commissioning"}, {"test-1", "test"}} {
		if err := rack.ImportImage(mdc, img.Kernel, img.Initrd, "console=ttyS0 quiet panic=-1", im[0], im[1]); err != nil {
			return err
		}
	}
	api, err := rack.Forward(c.apiAddr, fmt.Sprintf("127.0.0.1:%d", c.port))
	if err != nil {
		return fmt.Errorf("relay mdc's API to %s: %w", c.apiAddr, err)
	}

	enc := json.NewEncoder(stdout)
	procs := map[string]*vrack.Proc{}
	for i := 0; i < c.machines; i++ {
		name := fmt.Sprintf("m%d", i+1)
		mac := fmt.Sprintf("52:54:00:7a:%02x:%02x", i/256, i%256+1)
		m, err := rack.NewMachine(name, mac, vrack.Firmware(c.firmwares[i]), c.memory, c.cpus, []int64{3 << 30, 1 << 30})
		if err != nil {
			return err
		}
		line := machineLine{Machine: name, MAC: mac, Firmware: c.firmwares[i], SerialLog: m.SerialLog(),
			MemoryMiB: c.memory, CPUs: c.cpus, DiskBytes: m.Disks, Power: "off"}
		var bmc *vrack.BMC
		switch c.bmcs[i] {
		case "none":
			p, err := rack.StartMachine(m, nil)
			if err != nil {
				return err
			}
			procs[name] = p
			line.Power = "on"
		case "ipmi", "redfish":
			addr, err := rack.AddAddress()
			if err != nil {
				return err
			}
			if c.bmcs[i] == "ipmi" {
				bmc, err = rack.StartIPMI(m, addr, 9000+i, []string{self, "chassis"})
			} else {
				bmc, err = rack.StartRedfish(m, addr)
			}
			if err != nil {
				return err
			}
			if err := m.Save(); err != nil {
				return err
			}
			rack.PowerOffAtClose(m)
			line.BMC, line.BMCUser, line.BMCPassword = bmc.URL, bmc.User, bmc.PasswordFile
		}
		if err := enc.Encode(line); err != nil {
			return err
		}
	}
	if err := enc.Encode(mdcLine{MDC: mdc.URL, API: "http://" + api, DataDir: mdc.DataDir, NetNS: rack.NS, Log: mdc.Proc.Log,
		CLIExample: fmt.Sprintf("%s --server http://%s --data-dir %s machines list", c.mdc, api, mdc.DataDir)}); err != nil {
		return err
	}
	log.Info("rack up; Ctrl-C stops it", "machines", c.machines, "api", "http://"+api)
	select {
	case <-ctx.Done():
		return nil
	case <-mdc.Proc.Done:
		return fmt.Errorf("mdc serve exited: %s", mdc.Proc.Tail(2000))
	}
}
