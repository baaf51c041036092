//go:build e2e

package e2e

// The netboot chain with real firmware: QEMU with OVMF (UEFI PXE → snponly.efi
// over TFTP → iPXE → /boot.ipxe) and with SeaBIOS + the NIC's iPXE ROM (iPXE
// DHCP → /boot.ipxe) reach `mdc serve`'s script and download the kernel and
// initrd of an imported image. The same two boots are then served by dnsmasq
// (DHCP + TFTP) and busybox httpd (static files), and the boot timelines are
// compared. Everything runs in a network namespace the test makes, with its
// own bridge and tap; no host interface is touched.
//
// Needs root, qemu-system-x86, ovmf, ipxe (hack/deps/vrack.txt); skips
// without them, and in -short mode. About a minute and a half under TCG.

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/microdc/mdc/api"
	"github.com/microdc/mdc/hack/vrack"
	"github.com/microdc/mdc/images/blob"
	"github.com/microdc/mdc/internal/testkit"
	"github.com/microdc/mdc/machine"
)

// testImage returns the kernel and initrd to boot: the Debian kernel (a
// bzImage with an EFI stub, so one image serves both firmwares), fetched
// once into the cache, and a 1 MiB initrd made here.
func testImage(t *testing.T) (kernel, initrd string) {
	t.Helper()
	kernel, err := vrack.TestKernel(vrack.DefaultCacheDir())
	if err != nil {
		t.Fatalf("no test kernel: %v (it runs apt-get download linux-image-…-amd64 once)", err)
	}
	initrd = filepath.Join(t.TempDir(), "initrd")
	b := make([]byte, 1<<20)
	for i := range b {
		b[i] = byte(i * 7)
	}
	if err := os.WriteFile(initrd, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return kernel, initrd
}

// timeline is when a boot passed each step, seen on the VM's tap.
type timeline struct {
	firmwareDHCP, offer, tftp, ipxeDHCP, script, kernel, initrd, done, kernelUp time.Duration
}

func secs(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f", d.Seconds())
}

func (tl timeline) String() string {
	return fmt.Sprintf("DHCP %s  offer %s  TFTP %s  iPXE DHCP %s  script %s  kernel %s  initrd %s  downloaded %s  (EFI stub has the initrd %s)",
		secs(tl.firmwareDHCP), secs(tl.offer), secs(tl.tftp), secs(tl.ipxeDHCP), secs(tl.script), secs(tl.kernel), secs(tl.initrd), secs(tl.done), secs(tl.kernelUp))
}

// sniffer watches every frame on the tap (AF_PACKET) and notes the first
// time of each step of a boot, and when the last new byte of the initrd's
// HTTP response went by (by TCP sequence number, so the server's
// retransmissions to a VM that has moved on to the kernel do not count).
type sniffer struct {
	fd         int
	t0         time.Time
	kernelPath string
	initrdPath string
	mu         sync.Mutex
	tl         timeline
	stopped    chan struct{}
	stopOnce   sync.Once
	readerGone chan struct{}

	initrdPort       uint16 // the VM's port that asked for the initrd
	respSeq, respEnd uint32 // sequence number where the response began; bytes needed
	respSeen         bool
}

func (l *testLab) sniff(tap, kernelPath, initrdPath string) *sniffer {
	tapI := l.tapIndex(tap)
	s := &sniffer{kernelPath: kernelPath, initrdPath: initrdPath, stopped: make(chan struct{}), readerGone: make(chan struct{})}
	l.inNS(func() error {
		proto := int(htons(unix.ETH_P_ALL))
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return err
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: tapI}); err != nil {
			unix.Close(fd)
			return err
		}
		// Room for a whole boot's frames: a reader that falls behind a
		// busy TCG guest must not lose the ones it times.
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 64<<20); err != nil {
			unix.Close(fd)
			return err
		}
		tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			unix.Close(fd)
			return err
		}
		s.fd = fd
		return nil
	})
	s.t0 = time.Now()
	go s.read()
	l.t.Cleanup(s.stop)
	return s
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (s *sniffer) stop() {
	s.stopOnce.Do(func() { close(s.stopped); <-s.readerGone; unix.Close(s.fd) })
}

func (s *sniffer) read() {
	defer close(s.readerGone)
	buf := make([]byte, 65536)
	for {
		select {
		case <-s.stopped:
			return
		default:
		}
		n, _, err := unix.Recvfrom(s.fd, buf, 0)
		if err != nil {
			continue // timeout: look at stopped again
		}
		s.frame(time.Since(s.t0), buf[:n])
	}
}

func (s *sniffer) frame(at time.Duration, b []byte) {
	if len(b) < 14+20 || binary.BigEndian.Uint16(b[12:14]) != 0x0800 {
		return
	}
	ip := b[14:]
	ihl := int(ip[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(ip[2:4]))
	if ihl < 20 || total > len(ip) || total < ihl+8 {
		return
	}
	p := ip[ihl:total]
	sport, dport := binary.BigEndian.Uint16(p[0:2]), binary.BigEndian.Uint16(p[2:4])
	first := func(d *time.Duration) {
		if *d == 0 {
			*d = at
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch ip[9] {
	case 17: // UDP
		data := p[8:]
		switch {
		case dport == 67 && bytes.Contains(data, []byte("\x4d\x04iPXE")):
			first(&s.tl.ipxeDHCP)
			first(&s.tl.firmwareDHCP)
		case dport == 67:
			first(&s.tl.firmwareDHCP)
		case sport == 67 && dport == 68:
			first(&s.tl.offer)
		case dport == 69 && len(data) > 2 && data[0] == 0 && data[1] == 1:
			first(&s.tl.tftp)
		}
	case 6: // TCP
		if len(p) < 20 {
			return
		}
		data := p[int(p[12]>>4)*4:]
		switch {
		case dport == nbPort && bytes.HasPrefix(data, []byte("GET /boot.ipxe")):
			first(&s.tl.script)
		case dport == nbPort && bytes.HasPrefix(data, []byte("GET "+s.kernelPath+" ")):
			first(&s.tl.kernel)
		case dport == nbPort && bytes.HasPrefix(data, []byte("GET "+s.initrdPath+" ")):
			first(&s.tl.initrd)
			s.initrdPort = sport
		case sport == nbPort && dport == s.initrdPort && s.initrdPort != 0 && len(data) > 0 && s.tl.done == 0:
			seq := binary.BigEndian.Uint32(p[4:8])
			if !s.respSeen {
				hdr, _, ok := bytes.Cut(data, []byte("\r\n\r\n"))
				if !ok || !bytes.HasPrefix(hdr, []byte("HTTP/1.")) {
					return
				}
				var cl uint32
				for _, line := range strings.Split(string(hdr), "\r\n") {
					if v, ok := strings.CutPrefix(strings.ToLower(line), "content-length:"); ok {
						_, _ = fmt.Sscan(strings.TrimSpace(v), &cl)
					}
				}
				s.respSeen, s.respSeq, s.respEnd = true, seq, uint32(len(hdr)+4)+cl
			}
			if seq-s.respSeq+uint32(len(data)) >= s.respEnd {
				s.tl.done = at
			}
		}
	}
}

func (s *sniffer) timeline() timeline {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tl
}

// firmware is one way of booting.
type firmware struct {
	name   string
	uefi   bool
	booted string // serial output once the kernel runs with its initrd (UEFI)
}

var (
	bios = firmware{"BIOS (SeaBIOS + iPXE ROM)", false, ""}
	uefi = firmware{"UEFI (OVMF PXE → snponly.efi)", true, "EFI stub: Loaded initrd from command line option"}
)

// bootVM boots one VM from the network and returns its timeline once the
// initrd is downloaded, or fails after limit.
func (l *testLab) bootVM(fw firmware, mac, kernelPath, initrdPath string, limit time.Duration) timeline {
	t := l.t
	t.Helper()
	m := l.machine(fw, mac, 512, 0, nil)
	m.Extra = []string{"-no-reboot"}
	sn := l.sniff(m.Tap, kernelPath, initrdPath)
	serial := &testkit.Buffer{}
	vm := l.startMachine(m, serial)
	defer func() {
		vm.Stop()
		sn.stop()
	}()
	// Done when the initrd is downloaded; under UEFI also when the EFI stub
	// says it found the initrd by the name the script gave it.
	deadline := time.Now().Add(limit)
	for sn.timeline().done == 0 || fw.uefi && !strings.Contains(serial.String(), fw.booted) {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not finish in %s; it got %s\nserial:\n%s", fw.name, limit, sn.timeline(), tail(serial.String(), 4000))
		}
		select {
		case <-vm.Done:
			t.Fatalf("%s: QEMU exited; serial:\n%s", fw.name, tail(serial.String(), 4000))
		case <-time.After(50 * time.Millisecond):
		}
	}
	tl := sn.timeline()
	if fw.uefi {
		tl.kernelUp = time.Since(sn.t0)
	}
	for what, d := range map[string]time.Duration{"DHCP": tl.firmwareDHCP, "iPXE DHCP": tl.ipxeDHCP, "script": tl.script,
		"kernel": tl.kernel, "initrd": tl.initrd, "download end": tl.done} {
		if d == 0 {
			t.Errorf("%s: no %s seen on the tap (timeline %s)", fw.name, what, tl)
		}
	}
	if fw.uefi && tl.tftp == 0 {
		t.Errorf("%s: no TFTP request seen", fw.name)
	}
	return tl
}

func TestNetbootQEMU(t *testing.T) {
	needNetbootLab(t)
	kernel, initrd := testImage(t)
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	lab := newLab(t)
	kd, id := digestOf(t, kernel), digestOf(t, initrd)
	wantBytes := fileSize(t, kernel) + fileSize(t, initrd)
	results := map[string]timeline{}
	var order []string

	// bootMDC boots each firmware from a running mdc and checks what mdc
	// recorded about it.
	bootMDC := func(t *testing.T, l *testLab, label string, full bool, data, server string, fws []firmware, macs []string) {
		c := l.r.HTTPClient()
		for i, fw := range fws {
			limit := 60 * time.Second
			if fw.uefi {
				limit = 90 * time.Second
			}
			before := scrape(t, c, server)
			results[label+", "+fw.name] = l.bootVM(fw, macs[i], kd.Path(), id.Path(), limit)
			order = append(order, label+", "+fw.name)
			checkMDCSide(t, c, server, data, fw, full, machine.MustParseID(macs[i]), wantBytes, before, scrape(t, c, server))
		}
	}

	// mdc in full mode, the image imported with the CLI as the
	// commissioning image.
	t.Run("mdc-full", func(t *testing.T) {
		l := lab.sub(t)
		data := filepath.Join(l.dir, "mdc-full")
		m := l.startMDC(bin, data, "--interface", "br0", "--dhcp-mode", "full", "--dhcp-range", nbSubnet+".100-"+nbSubnet+".200")
		l.importAs(m, kernel, initrd, "console=ttyS0", "commissioning", "commissioning")
		server := m.URL
		bootMDC(t, l, "mdc full", true, data, server, []firmware{bios, uefi}, []string{"52:54:00:6d:00:01", "52:54:00:6d:00:02"})
	})

	// `mdc serve --interface br0` and nothing else (proxy mode) beside an
	// existing DHCP server (dnsmasq, addresses only, in its own namespace
	// on the same bridge): the address comes from one, the boot from mdc.
	t.Run("mdc-proxy", func(t *testing.T) {
		if _, err := exec.LookPath("dnsmasq"); err != nil {
			t.Skip("no dnsmasq to be the existing DHCP server (hack/deps/vrack.txt)")
		}
		l := lab.sub(t)
		other := l.peerNS("dhcp", nbSubnet+".2/24")
		l.startIn(other, "existing-dhcp", nil, "dnsmasq", "--keep-in-foreground", "--user=root", "--conf-file=/dev/null", "--port=0",
			"--pid-file=", "--interface=veth0", "--bind-interfaces", "--log-dhcp", "--log-facility=-",
			"--dhcp-range="+nbSubnet+".100,"+nbSubnet+".200,255.255.255.0,1h", "--dhcp-leasefile="+filepath.Join(l.dir, "existing.leases"))
		data := filepath.Join(l.dir, "mdc-proxy")
		m := l.startMDC(bin, data, "--interface", "br0")
		l.importAs(m, kernel, initrd, "console=ttyS0", "commissioning", "commissioning")
		server := m.URL
		bootMDC(t, l, "mdc proxy + dnsmasq DHCP", false, data, server, []firmware{bios, uefi}, []string{"52:54:00:6d:00:05", "52:54:00:6d:00:06"})
	})

	// The same chain from dnsmasq (DHCP + TFTP) and busybox httpd serving the
	// files and a static boot.ipxe, as an operator would set them up.
	t.Run("dnsmasq", func(t *testing.T) {
		for _, bin := range []string{"dnsmasq", "busybox"} {
			if _, err := exec.LookPath(bin); err != nil {
				t.Skipf("no %s for the comparison (hack/deps/vrack.txt)", bin)
			}
		}
		l := lab.sub(t)
		www := filepath.Join(l.dir, "www")
		if err := os.MkdirAll(filepath.Join(www, "blobs", "sha256"), 0o755); err != nil {
			t.Fatal(err)
		}
		for src, d := range map[string]blob.Digest{kernel: kd, initrd: id} {
			b, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(www, d.Path()), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		base := fmt.Sprintf("http://%s:%d", nbServer, nbPort)
		script := fmt.Sprintf("#!ipxe\nkernel %s%s console=ttyS0 initrd=initrd0\ninitrd --name initrd0 %s%s\nboot\n", base, kd.Path(), base, id.Path())
		if err := os.WriteFile(filepath.Join(www, "boot.ipxe"), []byte(script), 0o644); err != nil {
			t.Fatal(err)
		}
		l.start("busybox-httpd", nil, "busybox", "httpd", "-f", "-p", fmt.Sprintf("%s:%d", nbServer, nbPort), "-h", www)
		l.start("dnsmasq", nil, "dnsmasq", "--keep-in-foreground", "--user=root", "--conf-file=/dev/null", "--port=0", "--pid-file=",
			"--interface=br0", "--bind-interfaces", "--log-dhcp", "--log-facility=-",
			"--dhcp-range="+nbSubnet+".100,"+nbSubnet+".200,255.255.255.0,1h", "--dhcp-leasefile="+filepath.Join(l.dir, "dnsmasq.leases"),
			"--enable-tftp", "--tftp-root="+ipxeDir,
			"--dhcp-userclass=set:ipxe,iPXE", "--dhcp-match=set:efi,option:client-arch,7",
			"--dhcp-boot=tag:ipxe,"+base+"/boot.ipxe", "--dhcp-boot=tag:!ipxe,tag:efi,snponly.efi", "--dhcp-boot=tag:!ipxe,tag:!efi,undionly.kpxe")
		time.Sleep(500 * time.Millisecond) // dnsmasq and httpd have no readiness signal
		for i, fw := range []firmware{bios, uefi} {
			limit := 60 * time.Second
			if fw.uefi {
				limit = 90 * time.Second
			}
			label := "dnsmasq + busybox httpd, " + fw.name
			results[label] = l.bootVM(fw, fmt.Sprintf("52:54:00:6d:00:%02x", 3+i), kd.Path(), id.Path(), limit)
			order = append(order, label)
		}
	})

	t.Logf("seconds from QEMU start (accel %s); DHCP = the firmware's first DHCP packet:", vrack.Accel())
	for _, label := range order {
		t.Logf("  %-62s %s", label+":", results[label])
	}
	// The bar: a boot served by mdc is no slower than the same boot
	// served by dnsmasq and static files. Compared from the firmware's first
	// DHCP packet, which leaves out the firmware's own start-up; 0.5 s of
	// slack for TCG's jitter.
	for _, fw := range []firmware{bios, uefi} {
		m, mok := results["mdc full, "+fw.name]
		d, dok := results["dnsmasq + busybox httpd, "+fw.name]
		if mok && dok && m.done-m.firmwareDHCP > d.done-d.firmwareDHCP+500*time.Millisecond {
			t.Errorf("%s: mdc took %.1f s from DHCP to the end of the downloads, dnsmasq + httpd %.1f s",
				fw.name, (m.done - m.firmwareDHCP).Seconds(), (d.done - d.firmwareDHCP).Seconds())
		}
	}
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

func digestOf(t *testing.T, path string) blob.Digest {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return blob.Sum(b)
}

// scrape reads mdc's /metrics into "name{labels}" → value.
func scrape(t *testing.T, c *http.Client, server string) map[string]float64 {
	t.Helper()
	resp, err := c.Get(server + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		var v float64
		if _, err := fmt.Sscan(line[i+1:], &v); err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

// checkMDCSide asserts what mdc itself recorded about one boot.
func checkMDCSide(t *testing.T, c *http.Client, server, data string, fw firmware, full bool, id machine.ID, wantBytes int64, before, after map[string]float64) {
	t.Helper()
	delta := func(key string) float64 { return after[key] - before[key] }
	if n := delta(`mdc_http_requests_total{code="200",route="GET /boot.ipxe"}`); n < 1 {
		t.Errorf("%s: %v boot script requests served, want ≥ 1", fw.name, n)
	}
	if n := delta(`mdc_blob_http_requests_total{code="200"}`); n < 2 {
		t.Errorf("%s: %v blob downloads served, want ≥ 2 (kernel and initrd)", fw.name, n)
	}
	if n := delta(`mdc_blob_served_bytes_total`); n < float64(wantBytes) {
		t.Errorf("%s: %v blob bytes served, want ≥ %d (kernel and initrd)", fw.name, n, wantBytes)
	}
	if fw.uefi {
		if n := delta(`mdc_tftp_files_served_total`); n < 1 {
			t.Errorf("%s: TFTP served %v files, want ≥ 1", fw.name, n)
		}
	}
	tok, err := os.ReadFile(filepath.Join(data, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("GET", server+"/api/v1/machines/"+string(id)+"/events?telemetry=true", nil)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var list api.EventList
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		t.Fatal(err)
	}
	count := map[machine.EventType]int{}
	var discovered machine.DiscoveredData
	for _, e := range list.Events {
		count[e.Type]++
		if e.Type == machine.Discovered {
			_ = json.Unmarshal(e.Data, &discovered)
		}
	}
	want := map[machine.EventType]int{machine.Discovered: 1, machine.CommissioningStarted: 1}
	for typ, n := range want {
		if count[typ] != n {
			t.Errorf("%s: %d %s events, want %d (events: %v)", fw.name, count[typ], typ, n, count)
		}
	}
	// In proxy mode iPXE takes mdc's offer as it is and asks for no ACK.
	for _, typ := range []machine.EventType{machine.DHCPOffered, machine.DHCPAcked, machine.ScriptServed} {
		if count[typ] == 0 && (full || typ != machine.DHCPAcked) {
			t.Errorf("%s: no %s telemetry (events: %v)\n%s", fw.name, typ, count, dumpEvents(list.Events))
		}
	}
	if count[machine.BlobServed] < 2 {
		t.Errorf("%s: %d blob_served telemetry events, want the kernel and the initrd (events: %v)", fw.name, count[machine.BlobServed], count)
	}
	if fw.uefi && count[machine.TFTPServed] == 0 {
		t.Errorf("%s: no tftp_served telemetry (events: %v)", fw.name, count)
	}
	wantArch := "x86-bios"
	if fw.uefi {
		wantArch = "x86_64-efi"
	}
	if discovered.Via != "dhcp" || discovered.Arch != wantArch {
		t.Errorf("%s: discovered %+v, want via dhcp, arch %s", fw.name, discovered, wantArch)
	}
}

func dumpEvents(evs []machine.Event) string {
	var b strings.Builder
	for _, e := range evs {
		fmt.Fprintf(&b, "  %s %s %s %s\n", e.Time.Format("15:04:05.000"), e.Source, e.Type, e.Data)
	}
	return b.String()
}
