package main

import (
	"bytes"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pin/tftp/v3"

	"github.com/microdc/mdc/machine"
)

// fakeIPXEDir is an --ipxe-dir with the files the defaults name.
func fakeIPXEDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []string{"snponly.efi", "undionly.kpxe"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("binary "+f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// The netboot flags: defaults, what each mistake says, and the one
// flag > env > file order.
func TestNetbootFlags(t *testing.T) {
	ipxeDir := fakeIPXEDir(t)
	tplDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(tplDir, "ready.ipxe"), []byte("#!ipxe\n{{.Nope}}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfgFile := filepath.Join(t.TempDir(), "mdc.yaml")
	if err := os.WriteFile(cfgFile, []byte("interface: lo\ndhcp-mode: full\ndhcp-range: 127.0.0.100-127.0.0.200/8\ndhcp-dns: [127.0.0.53, 127.0.0.54]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := []string{"--ipxe-dir", ipxeDir}

	t.Run("defaults", func(t *testing.T) {
		c, err := parseServe(base, io.Discard, env(nil))
		if err != nil {
			t.Fatal(err)
		}
		nb := c.netboot
		if nb.enabled || nb.dhcpMode != "proxy" || nb.commissioningImage != "commissioning" || !nb.ra {
			t.Errorf("defaults: %+v (want netboot off without --interface, proxy mode, image commissioning, RA on)", nb)
		}
	})
	t.Run("interface lo is all it takes", func(t *testing.T) {
		c, err := parseServe(append(base, "--interface", "lo"), io.Discard, env(nil))
		if err != nil {
			t.Fatal(err)
		}
		nb := c.netboot
		if !nb.enabled || nb.advertise != netip.MustParseAddr("127.0.0.1") || nb.dhcpMode != "proxy" || nb.tftpAddr != ":69" || nb.dhcpPort != 67 {
			t.Errorf("--interface lo: %+v", nb)
		}
	})
	t.Run("file, env, flag", func(t *testing.T) {
		c, err := parseServe(append(base, "--config", cfgFile, "--dhcp-lease-time", "2h"), io.Discard,
			env(map[string]string{"MDC_DHCP_ROUTER": "127.0.0.1", "MDC_DHCP_LEASE_TIME": "3h", "MDC_ADVERTISE_ADDR": "127.0.0.2"}))
		if err != nil {
			t.Fatal(err)
		}
		nb := c.netboot
		if nb.dhcpMode != "full" || nb.advertise != netip.MustParseAddr("127.0.0.2") || len(nb.subnets) != 1 {
			t.Fatalf("%+v", nb)
		}
		sn := nb.subnets[0]
		if sn.Router != netip.MustParseAddr("127.0.0.1") || sn.LeaseTime != 2*time.Hour || len(sn.DNS) != 2 || sn.Prefix.Bits() != 8 {
			t.Errorf("subnet %+v: want router from env, lease time from the flag, DNS and /8 from the file", sn)
		}
	})
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"full without interface", []string{"--dhcp-mode", "full", "--dhcp-range", "10.0.0.10-10.0.0.20"}, "--dhcp-mode full needs --interface"},
		{"unknown mode", []string{"--interface", "lo", "--dhcp-mode", "both"}, `--dhcp-mode "both": want proxy, full or off`},
		{"no such interface", []string{"--interface", "nosuch9"}, "--interface nosuch9"},
		{"advertise not IPv4", []string{"--advertise-addr", "fd00::1"}, "--advertise-addr"},
		{"full without range", []string{"--interface", "lo", "--dhcp-mode", "full"}, "needs --dhcp-range"},
		{"bad range", []string{"--interface", "lo", "--dhcp-mode", "full", "--dhcp-range", "127.0.0.9"}, "--dhcp-range"},
		{"router outside", []string{"--interface", "lo", "--dhcp-mode", "full", "--dhcp-range", "127.0.0.10-127.0.0.20", "--dhcp-router", "10.0.0.1"}, "router 10.0.0.1 is not in it"},
		{"range in proxy mode", []string{"--interface", "lo", "--dhcp-range", "127.0.0.10-127.0.0.20"}, "are for --dhcp-mode full"},
		{"short lease", []string{"--interface", "lo", "--dhcp-mode", "full", "--dhcp-range", "127.0.0.10-127.0.0.20", "--dhcp-lease-time", "1s"}, "lease time"},
		{"bad tftp addr", []string{"--interface", "lo", "--tftp-addr", "69"}, "--tftp-addr"},
		{"no ipxe dir", []string{"--interface", "lo", "--ipxe-dir", "/nonexistent/ipxe"}, "--ipxe-dir /nonexistent/ipxe"},
		{"no uefi bootfile", []string{"--interface", "lo", "--uefi-bootfile", "ipxe.efi"}, "--uefi-bootfile ipxe.efi"},
		{"bad template", []string{"--ipxe-templates", tplDir}, "can't evaluate field Nope"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseServe(append(append([]string{}, base...), tc.args...), io.Discard, env(nil))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
			if _, ok := err.(*usageError); err != nil && !ok {
				t.Errorf("%T is not a usage error (exit 2)", err)
			}
		})
	}
}

// `mdc serve` with network boot on loopback (no DHCP, so no root): the boot
// script and the iPXE binaries are on the HTTP server, TFTP serves the
// same directory.
func TestServeNetbootLoopback(t *testing.T) {
	ipxeDir := fakeIPXEDir(t)
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tftpAddr := pc.LocalAddr().String()
	pc.Close()
	p := startServe(t, t.TempDir(), "--advertise-addr", "127.0.0.1", "--dhcp-mode", "off", "--tftp-addr", tftpAddr, "--ipxe-dir", ipxeDir)

	resp, err := testClient.Get(p.url + "/boot.ipxe?mac=52-54-00-12-34-56&platform=efi")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	// No image is imported: the new machine waits for one, and is recorded.
	if resp.StatusCode != 200 || !bytes.Contains(body, []byte("the commissioning image commissioning is not in the image catalog")) ||
		!bytes.Contains(body, []byte("chain --replace --autofree "+p.url+"/boot.ipxe?mac=52:54:00:12:34:56&platform=efi\n")) {
		t.Errorf("boot script: %d\n%s", resp.StatusCode, body)
	}
	resp, err = testClient.Get(p.url + "/api/v1/machines/525400123456")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Contains(b, []byte(`"state": "discovered"`)) {
		t.Errorf("machine after its first boot script: %d %s", resp.StatusCode, b)
	}

	resp, err = testClient.Get(p.url + "/ipxe/snponly.efi")
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "binary snponly.efi" {
		t.Errorf("GET /ipxe/snponly.efi: %d %q", resp.StatusCode, b)
	}

	c, err := tftp.NewClient(tftpAddr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetTimeout(2 * time.Second)
	wt, err := c.Receive("undionly.kpxe", "octet")
	if err != nil {
		t.Fatalf("TFTP: %v", err)
	}
	var got bytes.Buffer
	if _, err := wt.WriteTo(&got); err != nil || got.String() != "binary undionly.kpxe" {
		t.Errorf("TFTP undionly.kpxe: %q, %v", got.String(), err)
	}
}

func TestNeighbourMAC(t *testing.T) {
	table := []byte(`IP address       HW type     Flags       HW address            Mask     Device
10.0.0.7         0x1         0x2         52:54:00:12:34:56     *        br0
10.0.0.8         0x1         0x0         00:00:00:00:00:00     *        br0
10.0.0.9         0x1         0x2         52:54:00:ab:cd:ef     *        br0
`)
	for addr, want := range map[string]machine.ID{"10.0.0.7": "525400123456", "10.0.0.9": "525400abcdef", "10.0.0.8": "", "10.0.0.1": ""} {
		got, ok := neighbourMAC(table, netip.MustParseAddr(addr))
		if got != want || ok != (want != "") {
			t.Errorf("%s: %q %v, want %q", addr, got, ok, want)
		}
	}
}
