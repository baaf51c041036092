package ipxe

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/microdc/mdc/machine"
)

func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// An operator's role-<role>.ipxe replaces the role boot of that role only;
// <state>.ipxe replaces the script of that state; everything else stays
// built in.
func TestTemplateOverride(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"role-ceph-osd.ipxe": "#!ipxe\n# ceph {{.Machine}}\nkernel {{.Kernel}} {{.Args}} osd.extra=1\n{{range .Initrds}}initrd --name {{.Name}} {{.URL}}\n{{end}}boot\n",
		"provisioning.ipxe":  "#!ipxe\n# any role {{.Role}}\nkernel {{.Kernel}} {{.Args}}\nboot\n",
		"ready.ipxe":         "#!ipxe\necho parked {{.MAC}}\nsleep 5\nchain {{.ScriptURL}}\n",
		"README":             "not a template",
	})
	f := newFixture(t, Config{TemplateDir: dir, Images: catalog{
		"commission": testCatalog["commission"], "role:ceph-osd": testCatalog["role:ceph-osd"], "role:nats": testCatalog["commission"],
	}})
	osd, nats, ready, fresh := machine.ID("525400000401"), machine.ID("525400000402"), machine.ID("525400000403"), machine.ID("525400000404")
	f.apply(t, osd, ev{machine.Discovered, machine.DiscoveredData{}}, ev{machine.RoleAssigned, machine.RoleAssignedData{Role: "ceph-osd"}})
	f.apply(t, nats, ev{machine.Discovered, machine.DiscoveredData{}}, ev{machine.RoleAssigned, machine.RoleAssignedData{Role: "nats"}})
	f.apply(t, ready, ev{machine.Discovered, machine.DiscoveredData{}}, ev{machine.CommissioningStarted, machine.ImageData{}}, ev{machine.FactsReported, machine.Facts{}})

	s := f.script(t, "mac="+string(osd))
	if !strings.HasPrefix(s, "#!ipxe\n# ceph 525400000401\n") || !strings.Contains(s, " osd.extra=1\n") || tokenOf(s) == "" {
		t.Errorf("ceph-osd machine did not get role-ceph-osd.ipxe with a token:\n%s", s)
	}
	if s := f.script(t, "mac="+string(nats)); !strings.HasPrefix(s, "#!ipxe\n# any role nats\n") {
		t.Errorf("nats machine did not get provisioning.ipxe:\n%s", s)
	}
	if s := f.script(t, "mac="+string(ready)); s != "#!ipxe\necho parked 52:54:00:00:04:03\nsleep 5\nchain "+testBase+"/boot.ipxe?mac=52:54:00:00:04:03\n" {
		t.Errorf("ready machine did not get ready.ipxe:\n%s", s)
	}
	if s := f.script(t, "mac="+string(fresh)); !strings.Contains(s, "booting the commissioning image commission") {
		t.Errorf("a new machine did not get the built-in commissioning script:\n%s", s)
	}
	var files []string
	for _, e := range f.tel.all() {
		var d ScriptServedData
		if err := json.Unmarshal(e.Data, &d); err != nil {
			t.Fatal(err)
		}
		if d.Template == "" {
			d.Template = "built-in"
		}
		files = append(files, filepath.Base(d.Template))
	}
	if strings.Join(files, ",") != "role-ceph-osd.ipxe,provisioning.ipxe,ready.ipxe,built-in" {
		t.Errorf("templates recorded in telemetry: %v", files)
	}
}

// Mistakes in an operator's templates stop mdc at start, with the file named.
func TestTemplateErrors(t *testing.T) {
	for name, tc := range map[string]struct {
		files map[string]string
		want  string
	}{
		"unknown name":       {map[string]string{"comissioning.ipxe": "#!ipxe\n"}, "comissioning.ipxe: unknown name"},
		"bad role name":      {map[string]string{"role-Ceph.ipxe": "#!ipxe\n"}, "role-Ceph.ipxe: unknown name"},
		"syntax":             {map[string]string{"ready.ipxe": "#!ipxe\n{{.MAC\n"}, "ready.ipxe"},
		"unknown field":      {map[string]string{"joined.ipxe": "#!ipxe\n{{.Kernal}}\n"}, "can't evaluate field Kernal"},
		"not an iPXE script": {map[string]string{"failed.ipxe": "echo hello\n"}, "does not start with #!ipxe"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := New(Config{Machines: newStoreless(), TemplateDir: writeFiles(t, tc.files)})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New: %v, want an error containing %q", err, tc.want)
			}
		})
	}
	if _, err := New(Config{Machines: newStoreless(), TemplateDir: "/nonexistent/templates"}); err == nil {
		t.Error("a missing template directory was accepted")
	}
}
