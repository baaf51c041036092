package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/microdc/mdc/machine"
)

// collectFacts describes the hardware from sysfs, procfs and DMI under
// root. It needs no tool beyond the kernel, and a missing or unreadable
// file leaves its field empty: a partial description beats none.
func collectFacts(root string) machine.Facts {
	sys := filepath.Join(root, "sys")
	proc := filepath.Join(root, "proc")
	dmi := filepath.Join(sys, "class/dmi/id")
	f := machine.Facts{
		Vendor:   dmiString(filepath.Join(dmi, "sys_vendor")),
		Product:  dmiString(filepath.Join(dmi, "product_name")),
		Serial:   dmiString(filepath.Join(dmi, "product_serial")),
		UUID:     strings.ToLower(dmiString(filepath.Join(dmi, "product_uuid"))),
		BootMode: "bios",
	}
	if st, err := os.Stat(filepath.Join(sys, "firmware/efi")); err == nil && st.IsDir() {
		f.BootMode = "uefi"
	}
	f.CPUModel, f.CPUs = cpus(sys, proc)
	f.MemoryBytes = memory(sys, proc)
	f.Disks = disks(sys)
	f.NICs = nics(sys)
	return f
}

// read returns a sysfs attribute without surrounding space ("" if absent).
func read(p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// dmiString drops the placeholders firmware writes into empty DMI fields.
func dmiString(p string) string {
	s := read(p)
	switch strings.ToLower(s) {
	case "", "not specified", "not available", "to be filled by o.e.m.", "default string", "none", "system serial number",
		"system product name", "system manufacturer", "0123456789", "00000000-0000-0000-0000-000000000000",
		"03000200-0400-0500-0006-000700080009", "ffffffff-ffff-ffff-ffff-ffffffffffff":
		return ""
	}
	return s
}

// cpus returns the CPU model and the number of logical CPUs online.
func cpus(sys, proc string) (model string, n int) {
	if b, err := os.ReadFile(filepath.Join(proc, "cpuinfo")); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			k, v, ok := strings.Cut(sc.Text(), ":")
			k = strings.TrimSpace(k)
			switch {
			case !ok:
			case k == "processor":
				n++
			case model == "" && (k == "model name" || k == "Model" || k == "cpu model"):
				model = strings.Join(strings.Fields(v), " ")
			}
		}
	}
	if online := countList(read(filepath.Join(sys, "devices/system/cpu/online"))); online > 0 {
		n = online
	}
	return model, n
}

// countList counts the members of a kernel cpu list: "0-3,8,10-11".
func countList(s string) int {
	n := 0
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return 0
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return 0
			}
		}
		n += b - a + 1
	}
	return n
}

// memory is the installed memory: the DIMMs DMI lists (type 17), else the
// online memory blocks, else the kernel's MemTotal (which is less than
// what is installed by what the firmware and kernel reserve).
func memory(sys, proc string) uint64 {
	if n := dmiMemory(filepath.Join(sys, "firmware/dmi/entries")); n > 0 {
		return n
	}
	if n := blockMemory(filepath.Join(sys, "devices/system/memory")); n > 0 {
		return n
	}
	if b, err := os.ReadFile(filepath.Join(proc, "meminfo")); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
				f := strings.Fields(v)
				if len(f) >= 1 {
					kb, _ := strconv.ParseUint(f[0], 10, 64)
					return kb * 1024
				}
			}
		}
	}
	return 0
}

// dmiMemory sums the sizes of the memory devices (SMBIOS type 17) in
// /sys/firmware/dmi/entries/17-*/raw.
func dmiMemory(dir string) uint64 {
	entries, _ := filepath.Glob(filepath.Join(dir, "17-*", "raw"))
	var total uint64
	for _, e := range entries {
		b, err := os.ReadFile(e)
		if err != nil {
			continue
		}
		total += dimmSize(b)
	}
	return total
}

// dimmSize reads the size of one SMBIOS type 17 structure: the word at
// 0x0C in MiB (KiB when bit 15 is set; 0x7FFF: the extended size, a dword
// in MiB at 0x1C); 0 and 0xFFFF mean empty slot and unknown.
func dimmSize(b []byte) uint64 {
	if len(b) < 0x0E || b[0] != 17 || int(b[1]) < 0x0E || len(b) < int(b[1]) {
		return 0
	}
	size := binary.LittleEndian.Uint16(b[0x0C:])
	switch {
	case size == 0 || size == 0xFFFF:
		return 0
	case size == 0x7FFF:
		if b[1] < 0x20 {
			return 0
		}
		return uint64(binary.LittleEndian.Uint32(b[0x1C:])&0x7FFFFFFF) << 20
	case size&0x8000 != 0:
		return uint64(size&0x7FFF) << 10
	default:
		return uint64(size) << 20
	}
}

// blockMemory sums the online memory blocks (memory hotplug sysfs).
func blockMemory(dir string) uint64 {
	bs, err := strconv.ParseUint(read(filepath.Join(dir, "block_size_bytes")), 16, 64)
	if err != nil || bs == 0 {
		return 0
	}
	blocks, _ := filepath.Glob(filepath.Join(dir, "memory[0-9]*"))
	var n uint64
	for _, b := range blocks {
		if read(filepath.Join(b, "state")) == "online" {
			n++
		}
	}
	return n * bs
}

// disks lists the block devices backed by hardware: those with a device
// behind them, so loop, ram, zram, dm-, md and nbd devices drop out, and
// drives without a medium (an empty CD drive, size 0).
func disks(sys string) []machine.Disk {
	entries, _ := os.ReadDir(filepath.Join(sys, "block"))
	var out []machine.Disk
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, "loop") || strings.HasPrefix(name, "ram") || strings.HasPrefix(name, "zram") {
			continue
		}
		dir := filepath.Join(sys, "block", name)
		if _, err := os.Stat(filepath.Join(dir, "device")); err != nil {
			continue
		}
		sectors, _ := strconv.ParseUint(read(filepath.Join(dir, "size")), 10, 64)
		if sectors == 0 {
			continue
		}
		d := machine.Disk{
			Name:       name,
			SizeBytes:  sectors * 512, // sysfs counts 512-byte sectors whatever the device's block size
			Model:      strings.Join(strings.Fields(read(filepath.Join(dir, "device/model"))), " "),
			Serial:     diskSerial(dir),
			Rotational: read(filepath.Join(dir, "queue/rotational")) == "1",
			Removable:  read(filepath.Join(dir, "removable")) == "1",
		}
		out = append(out, d)
	}
	slices.SortFunc(out, func(a, b machine.Disk) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// diskSerial tries virtio-blk's and NVMe's serial attributes, then SCSI's
// unit serial number page (VPD 0x80: 4 header bytes, then the serial).
func diskSerial(dir string) string {
	for _, p := range []string{"serial", "device/serial"} {
		if s := read(filepath.Join(dir, p)); s != "" {
			return s
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, "device/vpd_pg80")); err == nil && len(b) > 4 && b[1] == 0x80 {
		n := int(binary.BigEndian.Uint16(b[2:4]))
		if 4+n <= len(b) {
			return strings.TrimSpace(strings.Trim(string(b[4:4+n]), "\x00"))
		}
	}
	return ""
}

// nics lists the network interfaces backed by hardware (with a device;
// not lo, bridges, bonds, veths or taps) of type Ethernet.
func nics(sys string) []machine.NIC {
	entries, _ := os.ReadDir(filepath.Join(sys, "class/net"))
	var out []machine.NIC
	for _, e := range entries {
		dir := filepath.Join(sys, "class/net", e.Name())
		if _, err := os.Stat(filepath.Join(dir, "device")); err != nil {
			continue
		}
		if t := read(filepath.Join(dir, "type")); t != "1" && t != "" {
			continue // 1: ARPHRD_ETHER; InfiniBand and others are not PXE NICs
		}
		n := machine.NIC{Name: e.Name(), MAC: read(filepath.Join(dir, "address"))}
		if drv, err := os.Readlink(filepath.Join(dir, "device/driver")); err == nil {
			n.Driver = filepath.Base(drv)
		}
		// speed and carrier read as errors while the link is down.
		if s, err := strconv.Atoi(read(filepath.Join(dir, "speed"))); err == nil && s > 0 {
			n.SpeedMbps = s
		}
		n.Carrier = read(filepath.Join(dir, "carrier")) == "1"
		if _, err := machine.ParseID(n.MAC); err != nil {
			continue
		}
		out = append(out, n)
	}
	slices.SortFunc(out, func(a, b machine.NIC) int { return strings.Compare(a.Name, b.Name) })
	return out
}
