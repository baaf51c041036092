package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/microdc/mdc/api/agentapi"
	"github.com/microdc/mdc/machine"
)

// The trees under testdata are QEMU VMs' /sys and /proc (make-trees.sh
// says which); the facts are what those VMs' command lines say.
func TestCollectFacts(t *testing.T) {
	tests := map[string]machine.Facts{
		"qemu-uefi": {
			Vendor: "QEMU", Product: "Standard PC (Q35 + ICH9, 2009)", UUID: "c0ffee00-0000-4000-8000-00000000a601",
			BootMode: "uefi", CPUModel: "QEMU Virtual CPU version 2.5+", CPUs: 2, MemoryBytes: 1 << 30,
			Disks: []machine.Disk{
				{Name: "vda", Serial: "disk-a", SizeBytes: 4 << 30, Rotational: true},
				{Name: "vdb", Serial: "disk-b", SizeBytes: 2 << 30, Rotational: true},
			},
			NICs: []machine.NIC{
				{Name: "eth0", MAC: "52:54:00:a6:00:01", Driver: "virtio_net", Carrier: true},
				{Name: "eth1", MAC: "52:54:00:a6:00:02", Driver: "e1000e"},
			},
		},
		"qemu-bios": {
			Vendor: "QEMU", Product: "Standard PC (i440FX + PIIX, 1996)", UUID: "8d2c5e66-7a11-4c1e-9f3b-2a6c2d1e0b02",
			BootMode: "bios", CPUModel: "Intel Xeon Processor (Cascadelake)", CPUs: 4, MemoryBytes: 2 << 30,
			Disks: []machine.Disk{
				{Name: "nvme0n1", Model: "QEMU NVMe Ctrl", Serial: "nvme-serial-1", SizeBytes: 100 << 30},
				{Name: "sda", Model: "QEMU HARDDISK", Serial: "QM00001", SizeBytes: 10 << 30, Rotational: true},
			},
			NICs: []machine.NIC{{Name: "eth0", MAC: "52:54:00:b1:05:01", Driver: "virtio_net", Carrier: true}},
		},
	}
	for tree, want := range tests {
		t.Run(tree, func(t *testing.T) {
			got := collectFacts(filepath.Join("testdata", tree))
			if d := cmp.Diff(want, got); d != "" {
				t.Errorf("facts (-want +got):\n%s", d)
			}
		})
	}
}

func TestMemorySources(t *testing.T) {
	// Without DMI entries and memory blocks, MemTotal is what is left.
	root := t.TempDir()
	mustWrite(t, filepath.Join(root, "proc/meminfo"), "MemTotal:        985124 kB\nMemFree: 1 kB\n")
	if got := memory(filepath.Join(root, "sys"), filepath.Join(root, "proc")); got != 985124*1024 {
		t.Fatalf("MemTotal fallback: %d", got)
	}
	for name, tc := range map[string]struct {
		raw  []byte
		want uint64
	}{
		"1024 MiB":     {dimm(0x0400, 0), 1 << 30},
		"512 KiB unit": {dimm(0x8000|512, 0), 512 << 10},
		"extended":     {dimm(0x7FFF, 64<<10), 64 << 30},
		"empty slot":   {dimm(0, 0), 0},
		"unknown":      {dimm(0xFFFF, 0), 0},
		"not type 17":  {append([]byte{16}, dimm(0x0400, 0)[1:]...), 0},
		"truncated":    {dimm(0x0400, 0)[:10], 0},
	} {
		if got := dimmSize(tc.raw); got != tc.want {
			t.Errorf("%s: %d, want %d", name, got, tc.want)
		}
	}
}

// dimm builds an SMBIOS 3.x type 17 structure of the given size fields.
func dimm(size uint16, extMiB uint32) []byte {
	b := make([]byte, 0x28)
	b[0], b[1] = 17, 0x28
	b[0x0C], b[0x0D] = byte(size), byte(size>>8)
	b[0x1C], b[0x1D], b[0x1E], b[0x1F] = byte(extMiB), byte(extMiB>>8), byte(extMiB>>16), byte(extMiB>>24)
	return append(b, "DIMM 0\x00\x00"...)
}

func TestCountList(t *testing.T) {
	for in, want := range map[string]int{"0": 1, "0-3": 4, "0-3,8,10-11": 7, "": 0, "3-1": 0, "a": 0} {
		if got := countList(in); got != want {
			t.Errorf("countList(%q) = %d, want %d", in, got, want)
		}
	}
}

func TestDMIPlaceholders(t *testing.T) {
	dir := t.TempDir()
	for _, s := range []string{"To Be Filled By O.E.M.", "Not Specified", "Default string", "03000200-0400-0500-0006-000700080009"} {
		mustWrite(t, filepath.Join(dir, "f"), s+"\n")
		if got := dmiString(filepath.Join(dir, "f")); got != "" {
			t.Errorf("%q kept as %q", s, got)
		}
	}
	mustWrite(t, filepath.Join(dir, "f"), "  S1234XYZ \n")
	if got := dmiString(filepath.Join(dir, "f")); got != "S1234XYZ" {
		t.Errorf("serial %q", got)
	}
}

func TestConfigSources(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "mdc-agent.conf")
	mustWrite(t, conf, "# Nix image settings\nurl = http://mdc.example:8080\nimage=\"ceph-osd-25.05\"\nfile_roots=/etc, /var/lib/ceph\nconsole=off\n")
	c := defaultConfig()
	c.fromEnv(func(k string) string {
		return map[string]string{"MDC_JOIN_HOOK": "/etc/mdc/join", "MDC_RUN_DIR": "/run/x"}[k]
	})
	if err := c.fromFile(conf, true); err != nil {
		t.Fatal(err)
	}
	if err := c.fromCmdline(`quiet mdc.url=http://10.0.0.1:8080/ mdc.machine=52-54-00-00-00-01 mdc.token=abc mdc.mode=role foo="a b" -- init args`); err != nil {
		t.Fatal(err)
	}
	if err := c.validate(); err != nil {
		t.Fatal(err)
	}
	want := config{URL: "http://10.0.0.1:8080", Machine: "525400000001", Token: "abc", Mode: agentapi.ModeRole, Image: "ceph-osd-25.05",
		JoinHook: "/etc/mdc/join", RunDir: "/run/x", FileRoots: []string{"/etc", "/var/lib/ceph"}, Root: "/"}
	if d := cmp.Diff(want, c, cmp.AllowUnexported(config{})); d != "" {
		t.Errorf("config (-want +got):\n%s", d)
	}

	for name, tc := range map[string]struct{ file, cmdline, want string }{
		"nothing":        {"", "quiet", "mdc.url, mdc.machine, mdc.token missing"},
		"bad mode":       {"", "mdc.url=http://x mdc.machine=525400000001 mdc.token=t mdc.mode=rescue", `mdc.mode "rescue"`},
		"no mode":        {"", "mdc.url=http://x mdc.machine=525400000001 mdc.token=t", "mdc.mode missing"},
		"bad url":        {"", "mdc.url=ftp://x mdc.machine=525400000001 mdc.token=t mdc.mode=role", `mdc.url "ftp://x"`},
		"bad machine":    {"", "mdc.machine=zz", "machine: bad MAC address"},
		"unknown key":    {"colour=red\n", "", `:1: unknown setting "colour"`},
		"not key=value":  {"\nurl\n", "", ":2: want key=value"},
		"unknown mdc.x":  {"", "mdc.colour=red", `unknown setting "mdc.colour"`},
		"bad file roots": {"file_roots=relative\n", "mdc.url=http://x mdc.machine=525400000001 mdc.token=t mdc.mode=role", `"relative" is not an absolute directory`},
	} {
		t.Run(name, func(t *testing.T) {
			c := defaultConfig()
			var err error
			if tc.file != "" {
				mustWrite(t, conf, tc.file)
				err = c.fromFile(conf, true)
			}
			if err == nil {
				err = c.fromCmdline(tc.cmdline)
			}
			if err == nil {
				err = c.validate()
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}

func TestSplitCmdline(t *testing.T) {
	got := splitCmdline("  a=1 b=\"x y\"  \"c=d e\" f\n")
	if d := cmp.Diff([]string{"a=1", "b=x y", "c=d e", "f"}, got); d != "" {
		t.Error(d)
	}
}

// The kernel command line comes from a boot script served over the
// network: no input may crash the agent.
func FuzzCmdline(f *testing.F) {
	b, _ := os.ReadFile("testdata/qemu-uefi/proc/cmdline")
	f.Add(string(b))
	f.Add(`mdc.url="http://a b" mdc.machine=525400000001 "mdc.mode=role`)
	f.Fuzz(func(t *testing.T, s string) {
		c := defaultConfig()
		if c.fromCmdline(s) == nil {
			_ = c.validate()
		}
	})
}

func mustWrite(t *testing.T, p, s string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}
