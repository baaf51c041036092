package ipxe

import (
	"bytes"
	"embed"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"text/template"
	"time"

	"github.com/microdc/mdc/machine"
)

// Kind is what a boot script does.
type Kind string

// The kinds of script, one per row of DESIGN.md's state table.
const (
	KindCommissioning Kind = "commissioning" // boot the commissioning image
	KindRole          Kind = "role"          // boot the role's image
	KindWait          Kind = "wait"          // nothing to boot yet: ask again later
	KindFailed        Kind = "failed"        // print why the machine failed, ask again later
	KindLocal         Kind = "local"         // boot from the local disk
	KindBootstrap     Kind = "bootstrap"     // the request named no MAC: ask again with one
)

// ScriptData is what a template is executed with. It is the contract with
// operators' templates (--ipxe-templates): fields are only ever added.
// Every string is safe to put on an iPXE command line as it is.
type ScriptData struct {
	MAC       string   // aa:bb:cc:dd:ee:ff
	Machine   string   // the machine id, 12 hex digits
	Name      string   // the machine's name, if it has one
	State     string   // its lifecycle state
	Role      string   // its role, if it has one
	Mode      string   // "commissioning" or "role" in scripts that boot an image
	Image     string   // the image's name
	Kernel    string   // URL of the kernel blob
	Initrds   []Initrd // the initrds, in order
	Args      string   // the whole kernel command line: see KernelArgs
	Cmdline   string   // the image's own command line
	Token     string   // this boot's machine token (also in Args as mdc.token=)
	BaseURL   string   // where the machine reaches mdc, e.g. http://10.0.0.1:8080
	ScriptURL string   // this machine's boot script, to chain to when asking again
	Platform  string   // "efi", "pcbios", or "" when the request did not say
	Retry     int      // seconds to wait before asking again (or retrying a download)
	Reason    string   // why the script waits, or why the machine failed
	FailedIn  string   // the state a failed machine failed in
}

// Initrd is one initrd of an image.
type Initrd struct {
	Name string // the name iPXE gives it (initrd0, initrd1 …), which UEFI's initrd= refers to
	URL  string
}

// KernelArgs is the kernel command line of an image boot: the image's own
// command line, then mdc.url=, mdc.machine=, mdc.token=, mdc.mode=, and
// under UEFI (or when the platform is unknown) initrd=<name> for each initrd,
// because the EFI stub of Debian's iPXE era loads initrds only by name.
// initrd=<name> is harmless on BIOS: Linux reads initrd= there only as
// "<address>,<size>".
func KernelArgs(d ScriptData) string {
	var b strings.Builder
	if d.Cmdline != "" {
		b.WriteString(d.Cmdline)
		b.WriteByte(' ')
	}
	fmt.Fprintf(&b, "mdc.url=%s mdc.machine=%s mdc.token=%s mdc.mode=%s", d.BaseURL, d.Machine, d.Token, d.Mode)
	if d.Platform != "pcbios" {
		for _, i := range d.Initrds {
			b.WriteString(" initrd=" + i.Name)
		}
	}
	return b.String()
}

//go:embed templates/*.ipxe
var builtin embed.FS

// defaultFor names the built-in template of each kind.
var defaultFor = map[Kind]string{
	KindCommissioning: "boot.ipxe", KindRole: "boot.ipxe", KindWait: "wait.ipxe",
	KindFailed: "failed.ipxe", KindLocal: "local.ipxe", KindBootstrap: "bootstrap.ipxe",
}

// regularKind is the kind of script each state gets when nothing is missing.
// An operator's <state>.ipxe replaces only that script: a provisioning
// machine whose role has no image still gets the built-in wait script.
func regularKind(s machine.State) Kind {
	switch s {
	case machine.StDiscovered, machine.Commissioning:
		return KindCommissioning
	case machine.Ready:
		return KindWait
	case machine.Provisioning, machine.Running, machine.StJoined:
		return KindRole
	case machine.StFailed:
		return KindFailed
	case machine.StRetired:
		return KindLocal
	}
	return KindWait
}

// templates holds the built-in scripts and the operator's overrides.
type templates struct {
	builtin   map[Kind]*template.Template
	overrides map[string]*template.Template // file name → template
	dir       string
}

var (
	stateFile = regexp.MustCompile(`^(discovered|commissioning|ready|provisioning|running|joined|failed|retired)\.ipxe$`)
	roleFile  = regexp.MustCompile(`^role-[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.ipxe$`)
)

func newTemplate(name, text string) (*template.Template, error) {
	return template.New(name).Option("missingkey=error").Parse(text)
}

// loadTemplates parses the built-in scripts and every *.ipxe file in dir
// ("" for none), and renders each once with sample data so that a mistake
// in an operator's template stops mdc at start, not a machine at boot.
func loadTemplates(dir string) (*templates, error) {
	t := &templates{builtin: map[Kind]*template.Template{}, overrides: map[string]*template.Template{}, dir: dir}
	for kind, file := range defaultFor {
		b, err := builtin.ReadFile("templates/" + file)
		if err != nil {
			return nil, err
		}
		if t.builtin[kind], err = newTemplate(file, string(b)); err != nil {
			return nil, fmt.Errorf("built-in %s: %w", file, err)
		}
	}
	if dir == "" {
		return t, nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("iPXE templates: %w", err)
	}
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, ".ipxe") {
			continue // a README or an editor's backup
		}
		var kind Kind
		switch {
		case stateFile.MatchString(name):
			kind = regularKind(machine.State(strings.TrimSuffix(name, ".ipxe")))
		case roleFile.MatchString(name):
			kind = KindRole
		default:
			return nil, fmt.Errorf("iPXE template %s: unknown name; use <state>.ipxe (discovered, commissioning, ready, provisioning, running, joined, failed, retired) or role-<role>.ipxe", filepath.Join(dir, name))
		}
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("iPXE template: %w", err)
		}
		tpl, err := newTemplate(name, string(b))
		if err != nil {
			return nil, fmt.Errorf("iPXE template %s: %w", filepath.Join(dir, name), err)
		}
		if _, err := render(tpl, sampleData(kind)); err != nil {
			return nil, fmt.Errorf("iPXE template %s: %w", filepath.Join(dir, name), err)
		}
		t.overrides[name] = tpl
	}
	return t, nil
}

// CheckTemplates loads the operator's templates in dir ("" for none) as
// New would, so a mistake is found before anything starts.
func CheckTemplates(dir string) error {
	_, err := loadTemplates(dir)
	return err
}

// pick returns the template for a script of kind for machine m, and the
// operator's file name when one is used. Most specific first:
// role-<role>.ipxe, then <state>.ipxe, then the built-in script.
func (t *templates) pick(kind Kind, m machine.Machine) (*template.Template, string) {
	if kind == regularKind(m.State) && kind != KindBootstrap {
		if kind == KindRole && m.Role != "" {
			if tpl, ok := t.overrides["role-"+m.Role+".ipxe"]; ok {
				return tpl, filepath.Join(t.dir, "role-"+m.Role+".ipxe")
			}
		}
		name := string(m.State) + ".ipxe"
		if tpl, ok := t.overrides[name]; ok {
			return tpl, filepath.Join(t.dir, name)
		}
	}
	return t.builtin[kind], ""
}

// render executes tpl and checks that the result is an iPXE script.
func render(tpl *template.Template, d ScriptData) ([]byte, error) {
	var b bytes.Buffer
	if err := tpl.Execute(&b, d); err != nil {
		return nil, err
	}
	out := b.Bytes()
	if !bytes.HasPrefix(out, []byte("#!ipxe")) {
		return nil, fmt.Errorf("the script does not start with #!ipxe, so iPXE would not run it")
	}
	return out, nil
}

// sampleData fills every field, to try an operator's template at start.
func sampleData(kind Kind) ScriptData {
	d := ScriptData{
		MAC: "52:54:00:00:00:01", Machine: "525400000001", Name: "example", State: "provisioning",
		Role: "example", Image: "example", Kernel: "http://192.0.2.1:8080/blobs/sha256/" + strings.Repeat("0", 64),
		Initrds: []Initrd{{Name: "initrd0", URL: "http://192.0.2.1:8080/blobs/sha256/" + strings.Repeat("1", 64)}},
		Cmdline: "console=ttyS0", Token: strings.Repeat("f", 64), BaseURL: "http://192.0.2.1:8080",
		ScriptURL: "http://192.0.2.1:8080/boot.ipxe?mac=52:54:00:00:00:01", Platform: "efi", Retry: 30,
		Reason: "example", FailedIn: "commissioning",
	}
	if kind == KindCommissioning || kind == KindRole {
		d.Mode = string(kind)
	}
	d.Args = KernelArgs(d)
	return d
}

// safeText makes text from the event log or the catalog safe to print with
// iPXE's echo: no newline (a new command), no ${ (an expansion), no || or
// && (an operator), no quote or backslash; at most 200 characters.
func safeText(s string) string {
	var b strings.Builder
	for _, r := range s {
		if b.Len() >= 200 {
			b.WriteString("...")
			break
		}
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
			b.WriteRune(r)
		case strings.ContainsRune(" .,:/()_=+@%!?-[]<>*~^", r):
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	return b.String()
}

// safeArgs keeps an image's command line on one line and out of iPXE's
// expansions and operators.
func safeArgs(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r < ' ' || r == 0x7f:
			b.WriteByte(' ')
		case r == '$' || r == '|' || r == '&':
			b.WriteByte('_')
		default:
			b.WriteRune(r)
		}
	}
	return strings.Join(strings.Fields(b.String()), " ")
}

func seconds(d time.Duration) int { return max(1, int(d.Round(time.Second)/time.Second)) }
