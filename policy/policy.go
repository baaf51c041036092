// Package policy gives machines roles from the facts they report, and says
// what each role's agent does to join its cluster (docs/agent.md).
//
// A policy is an ordered list of rules, a default and the roles'
// configurations, read from a YAML file (mdc serve --role-policy). The first
// rule whose conditions the facts meet gives the role; "first: N" rules take
// only the first N machines that reach them. Evaluation is pure; the Engine
// replays the event log to count who holds the places of "first" rules, so
// that every mdc instance reaches the same answer for the same machine.
package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/microdc/mdc/api/agentapi"
	"github.com/microdc/mdc/machine"
)

// Policy is a loaded, checked role policy.
type Policy struct {
	Rules []Rule
	// Default is the role of machines no rule takes; "" holds them in
	// ready for an operator (mdc machines assign).
	Default string
	// Held is what the agent of a held machine does: wait (ask again at
	// every heartbeat) or poweroff.
	Held  agentapi.Action
	Roles map[string]RoleSpec
}

// Rule gives Role to machines whose facts meet every condition set.
type Rule struct {
	Name string // unique; defaults to the role
	Role string
	// First, if not 0, limits the rule to the first First machines that
	// reach it, in the order of their facts in the event log.
	First int

	MinDisks    int    // disks (not removable, at least MinDiskSize) at least
	MinDiskSize uint64 // bytes
	MinCPUs     int
	MinMemory   uint64 // bytes
	Vendor      string // glob, case-insensitive (DMI sys_vendor)
	Product     string // glob, case-insensitive (DMI product_name)
	BootMode    string // uefi or bios
	Machines    []machine.ID

	Line int // in the policy file
}

// RoleSpec is the configuration agents of a role fetch.
type RoleSpec struct {
	Join        string // hook path; "" for no join step
	JoinTimeout time.Duration
	Evidence    []string
	Heartbeat   time.Duration
	Config      json.RawMessage // handed to the join hook
	Files       []agentapi.File
}

// Defaults of a role without an entry under roles:.
const (
	DefaultJoinHook    = "/etc/mdc/join"
	DefaultJoinTimeout = 10 * time.Minute
	DefaultHeartbeat   = 30 * time.Second
)

// FileRoots are where role files may go; the agent enforces its own list
// too (docs/agent.md).
var FileRoots = []string{"/etc", "/run", "/var/lib"}

// Hold is the policy of an mdc without --role-policy: every machine waits
// in ready for an operator.
func Hold() *Policy { return &Policy{Held: agentapi.ActionWait} }

// Spec returns role's configuration, or the defaults.
func (p *Policy) Spec(role string) RoleSpec {
	if s, ok := p.Roles[role]; ok {
		return s
	}
	return RoleSpec{Join: DefaultJoinHook, JoinTimeout: DefaultJoinTimeout, Heartbeat: DefaultHeartbeat}
}

// Decision is the policy's answer for one machine.
type Decision struct {
	Role   string // "" holds the machine in ready
	Rule   string // the rule that gave the role; "" for the default or a hold
	Slot   int    // of a "first" rule: this machine's place, from 1
	Reason string
}

// Evaluate runs the rules over one machine's facts. taken says how many
// places of a "first" rule other machines hold.
func (p *Policy) Evaluate(id machine.ID, f machine.Facts, taken func(rule string) int) Decision {
	var full []string
	for _, r := range p.Rules {
		why, ok := r.matches(id, f)
		if !ok {
			continue
		}
		if r.First > 0 {
			n := taken(r.Name)
			if n >= r.First {
				full = append(full, fmt.Sprintf("%s (first %d: all taken)", r.Name, r.First))
				continue
			}
			why = append(why, fmt.Sprintf("first %d: place %d", r.First, n+1))
			return Decision{Role: r.Role, Rule: r.Name, Slot: n + 1, Reason: reason(r.Name, why)}
		}
		return Decision{Role: r.Role, Rule: r.Name, Reason: reason(r.Name, why)}
	}
	msg := "no rule matched"
	if len(full) > 0 {
		msg += " (full: " + strings.Join(full, ", ") + ")"
	}
	if p.Default != "" {
		return Decision{Role: p.Default, Reason: msg + "; the default role is " + p.Default}
	}
	return Decision{Reason: msg + "; held in ready: assign a role with mdc machines assign " + string(id) + " ROLE"}
}

func reason(rule string, why []string) string {
	if len(why) == 0 {
		return "rule " + rule + ": every machine"
	}
	return "rule " + rule + ": " + strings.Join(why, ", ")
}

// matches checks the conditions; why lists what held, for the event.
func (r Rule) matches(id machine.ID, f machine.Facts) (why []string, ok bool) {
	if len(r.Machines) > 0 {
		if !slices.Contains(r.Machines, id) {
			return nil, false
		}
		why = append(why, "machine "+string(id))
	}
	if r.MinDisks > 0 {
		n := 0
		for _, d := range f.Disks {
			if !d.Removable && d.SizeBytes >= r.MinDiskSize {
				n++
			}
		}
		if n < r.MinDisks {
			return nil, false
		}
		why = append(why, fmt.Sprintf("%d disks ≥ %d", n, r.MinDisks))
	}
	if r.MinCPUs > 0 {
		if f.CPUs < r.MinCPUs {
			return nil, false
		}
		why = append(why, fmt.Sprintf("%d CPUs ≥ %d", f.CPUs, r.MinCPUs))
	}
	if r.MinMemory > 0 {
		if f.MemoryBytes < r.MinMemory {
			return nil, false
		}
		why = append(why, fmt.Sprintf("memory %s ≥ %s", formatSize(f.MemoryBytes), formatSize(r.MinMemory)))
	}
	if r.Vendor != "" {
		if !glob(r.Vendor, f.Vendor) {
			return nil, false
		}
		why = append(why, fmt.Sprintf("vendor %q", f.Vendor))
	}
	if r.Product != "" {
		if !glob(r.Product, f.Product) {
			return nil, false
		}
		why = append(why, fmt.Sprintf("product %q", f.Product))
	}
	if r.BootMode != "" {
		if f.BootMode != r.BootMode {
			return nil, false
		}
		why = append(why, "boot mode "+f.BootMode)
	}
	return why, true
}

func glob(pattern, s string) bool {
	ok, _ := path.Match(strings.ToLower(pattern), strings.ToLower(s))
	return ok
}

// Load reads and checks a policy file.
func Load(file string) (*Policy, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("role policy: %w", err)
	}
	return Parse(b, file)
}

// The file's shape. Decoding is strict: a key not here is an error.
type fileDoc struct {
	Rules   []ruleDoc          `yaml:"rules"`
	Default string             `yaml:"default"`
	Held    string             `yaml:"held"`
	Roles   map[string]roleDoc `yaml:"roles"`
}

type ruleDoc struct {
	Name        string   `yaml:"name"`
	Role        string   `yaml:"role"`
	First       int      `yaml:"first"`
	MinDisks    int      `yaml:"min_disks"`
	MinDiskSize string   `yaml:"min_disk_size"`
	MinCPUs     int      `yaml:"min_cpus"`
	MinMemory   string   `yaml:"min_memory"`
	Vendor      string   `yaml:"vendor"`
	Product     string   `yaml:"product"`
	BootMode    string   `yaml:"boot_mode"`
	Machines    []string `yaml:"machines"`
}

type roleDoc struct {
	Join        *string   `yaml:"join"`
	JoinTimeout string    `yaml:"join_timeout"`
	Evidence    []string  `yaml:"evidence"`
	Heartbeat   string    `yaml:"heartbeat"`
	Config      yaml.Node `yaml:"config"`
	Files       []fileEnt `yaml:"files"`
}

type fileEnt struct {
	Path    string `yaml:"path"`
	Mode    string `yaml:"mode"`
	Content string `yaml:"content"`
}

// keysOf lists each block's keys for the unknown-key message.
var keysOf = map[string]string{
	"fileDoc": "rules, default, held, roles",
	"ruleDoc": "name, role, first, min_disks, min_disk_size, min_cpus, min_memory, vendor, product, boot_mode, machines",
	"roleDoc": "join, join_timeout, evidence, heartbeat, config, files",
	"fileEnt": "path, mode, content",
}

var (
	unknownKeyRE = regexp.MustCompile(`line (\d+): field (\S+) not found in type policy\.(\w+)`)
	roleRE       = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
)

// Parse reads a policy; name is the file's name for messages.
func Parse(b []byte, name string) (*Policy, error) {
	errf := func(line int, format string, args ...any) error {
		return fmt.Errorf("role policy %s: line %d: %s", name, line, fmt.Sprintf(format, args...))
	}
	var doc fileDoc
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("role policy %s: empty; to hold every machine for an operator write \"default: hold\"", name)
		}
		if m := unknownKeyRE.FindStringSubmatch(err.Error()); m != nil {
			return nil, fmt.Errorf("role policy %s: line %s: unknown key %q (here: %s)", name, m[1], m[2], keysOf[m[3]])
		}
		return nil, fmt.Errorf("role policy %s: %w", name, err)
	}
	var more yaml.Node
	if err := dec.Decode(&more); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("role policy %s: more than one YAML document", name)
	}
	// A second pass over the node tree finds the lines of what the checks
	// below refuse.
	var root yaml.Node
	_ = yaml.Unmarshal(b, &root)
	lines := nodeLines(&root)

	p := &Policy{Roles: map[string]RoleSpec{}}
	names := map[string]int{}
	for i, rd := range doc.Rules {
		line := lines.rule(i)
		r := Rule{Name: rd.Name, Role: rd.Role, First: rd.First, MinDisks: rd.MinDisks, MinCPUs: rd.MinCPUs,
			Vendor: rd.Vendor, Product: rd.Product, BootMode: rd.BootMode, Line: line}
		if !roleRE.MatchString(r.Role) {
			return nil, errf(line, "rule %d: role %q: use lowercase letters, digits and '-', up to 63", i+1, r.Role)
		}
		if r.Name == "" {
			r.Name = r.Role
		}
		if prev, dup := names[r.Name]; dup {
			return nil, errf(line, "a rule called %q is already on line %d: give one of them another name:", r.Name, prev)
		}
		names[r.Name] = line
		if r.First < 0 || r.MinDisks < 0 || r.MinCPUs < 0 {
			return nil, errf(line, "rule %s: first, min_disks and min_cpus are counts, not negative", r.Name)
		}
		var err error
		if r.MinDiskSize, err = ParseSize(rd.MinDiskSize); err != nil {
			return nil, errf(line, "rule %s: min_disk_size: %v", r.Name, err)
		}
		if r.MinMemory, err = ParseSize(rd.MinMemory); err != nil {
			return nil, errf(line, "rule %s: min_memory: %v", r.Name, err)
		}
		if r.MinDiskSize > 0 && r.MinDisks == 0 {
			r.MinDisks = 1
		}
		for _, g := range []string{r.Vendor, r.Product} {
			if _, err := path.Match(g, ""); err != nil {
				return nil, errf(line, "rule %s: pattern %q: %v", r.Name, g, err)
			}
		}
		if r.BootMode != "" && r.BootMode != "uefi" && r.BootMode != "bios" {
			return nil, errf(line, "rule %s: boot_mode %q: want uefi or bios", r.Name, r.BootMode)
		}
		for _, s := range rd.Machines {
			id, err := machine.ParseID(s)
			if err != nil {
				return nil, errf(line, "rule %s: machines: %v", r.Name, err)
			}
			r.Machines = append(r.Machines, id)
		}
		p.Rules = append(p.Rules, r)
	}

	switch doc.Default {
	case "", "hold":
	default:
		if !roleRE.MatchString(doc.Default) {
			return nil, errf(lines.top("default"), "default %q: a role name, or hold", doc.Default)
		}
		p.Default = doc.Default
	}
	switch doc.Held {
	case "", "wait":
		p.Held = agentapi.ActionWait
	case "poweroff":
		p.Held = agentapi.ActionPoweroff
	default:
		return nil, errf(lines.top("held"), "held %q: what the agent of a held machine does: wait or poweroff", doc.Held)
	}

	for role, rd := range doc.Roles {
		line := lines.role(role)
		if !roleRE.MatchString(role) {
			return nil, errf(line, "role %q: use lowercase letters, digits and '-', up to 63", role)
		}
		s := RoleSpec{Join: DefaultJoinHook, JoinTimeout: DefaultJoinTimeout, Heartbeat: DefaultHeartbeat, Evidence: rd.Evidence}
		if rd.Join != nil {
			switch j := *rd.Join; {
			case j == "none":
				s.Join = ""
			case path.IsAbs(j) && path.Clean(j) == j:
				s.Join = j
			default:
				return nil, errf(line, "role %s: join %q: an absolute path in the image, or none", role, j)
			}
		}
		var err error
		if rd.JoinTimeout != "" {
			if s.JoinTimeout, err = time.ParseDuration(rd.JoinTimeout); err != nil || s.JoinTimeout < time.Second {
				return nil, errf(line, "role %s: join_timeout %q: a duration of at least 1s, e.g. 10m", role, rd.JoinTimeout)
			}
		}
		if rd.Heartbeat != "" {
			if s.Heartbeat, err = time.ParseDuration(rd.Heartbeat); err != nil || s.Heartbeat < time.Second || s.Heartbeat > time.Hour {
				return nil, errf(line, "role %s: heartbeat %q: a duration from 1s to 1h, e.g. 30s", role, rd.Heartbeat)
			}
		}
		for _, k := range s.Evidence {
			if k == "" || len(k) > 64 {
				return nil, errf(line, "role %s: evidence keys are 1 to 64 characters", role)
			}
		}
		if rd.Config.Kind != 0 {
			var v any
			if err := rd.Config.Decode(&v); err != nil {
				return nil, errf(rd.Config.Line, "role %s: config: %v", role, err)
			}
			if _, isMap := v.(map[string]any); !isMap {
				return nil, errf(rd.Config.Line, "role %s: config must be a map (the hook reads it as a JSON object)", role)
			}
			if s.Config, err = json.Marshal(v); err != nil {
				return nil, errf(rd.Config.Line, "role %s: config: %v", role, err)
			}
		}
		seen := map[string]bool{}
		for i, f := range rd.Files {
			fl := lines.file(role, i)
			if err := checkFile(f); err != nil {
				return nil, errf(fl, "role %s: file %q: %v", role, f.Path, err)
			}
			if seen[f.Path] {
				return nil, errf(fl, "role %s: file %s is listed twice", role, f.Path)
			}
			seen[f.Path] = true
			s.Files = append(s.Files, agentapi.File{Path: f.Path, Mode: f.Mode, Content: f.Content})
		}
		p.Roles[role] = s
	}
	return p, nil
}

func checkFile(f fileEnt) error {
	if !path.IsAbs(f.Path) || path.Clean(f.Path) != f.Path {
		return errors.New("want a clean absolute path")
	}
	if !UnderRoots(f.Path, FileRoots) {
		return fmt.Errorf("files go under %s", strings.Join(FileRoots, ", "))
	}
	if _, err := ParseMode(f.Mode); err != nil {
		return err
	}
	if len(f.Content) > 1<<20 {
		return errors.New("content larger than 1 MiB")
	}
	return nil
}

// UnderRoots reports whether the clean absolute path p is strictly inside
// one of roots.
func UnderRoots(p string, roots []string) bool {
	for _, r := range roots {
		if strings.HasPrefix(p, strings.TrimRight(r, "/")+"/") {
			return true
		}
	}
	return false
}

// ParseMode reads a file mode as octal ("0644"); set-id and sticky bits are
// refused.
func ParseMode(s string) (os.FileMode, error) {
	if s == "" {
		return 0, errors.New(`mode is required, e.g. mode: "0644"`)
	}
	m, err := strconv.ParseUint(s, 8, 32)
	if err != nil || m > 0o777 {
		return 0, fmt.Errorf("mode %q: want octal permissions up to 0777, e.g. \"0644\"", s)
	}
	return os.FileMode(m), nil
}

// ParseSize reads a byte count: 512, 100G (10^9), 64GiB (2^30), 1.5T.
// Empty is 0.
func ParseSize(s string) (uint64, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, nil
	}
	i := strings.IndexFunc(s, func(r rune) bool { return !(r >= '0' && r <= '9' || r == '.') })
	num, unit := s, ""
	if i >= 0 {
		num, unit = s[:i], strings.TrimSpace(s[i:])
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f < 0 {
		return 0, fmt.Errorf("%q: want a size like 100G, 64GiB or 512000000", s)
	}
	mult := map[string]float64{
		"": 1, "B": 1,
		"K": 1e3, "KB": 1e3, "M": 1e6, "MB": 1e6, "G": 1e9, "GB": 1e9, "T": 1e12, "TB": 1e12, "P": 1e15, "PB": 1e15,
		"KI": 1 << 10, "KIB": 1 << 10, "MI": 1 << 20, "MIB": 1 << 20, "GI": 1 << 30, "GIB": 1 << 30,
		"TI": 1 << 40, "TIB": 1 << 40, "PI": 1 << 50, "PIB": 1 << 50,
	}[strings.ToUpper(unit)]
	if mult == 0 {
		return 0, fmt.Errorf("%q: unknown unit %q (K, M, G, T are powers of 1000; KiB, MiB, GiB, TiB of 1024)", s, unit)
	}
	return uint64(f * mult), nil
}

func formatSize(b uint64) string {
	const gib = 1 << 30
	if b >= gib && b%(gib/4) == 0 {
		return strconv.FormatFloat(float64(b)/gib, 'f', -1, 64) + "GiB"
	}
	return strconv.FormatUint(b, 10) + "B"
}

// lineIndex finds the lines of a policy's parts in its node tree.
type lineIndex struct{ root *yaml.Node }

func nodeLines(doc *yaml.Node) lineIndex {
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		return lineIndex{doc.Content[0]}
	}
	return lineIndex{doc}
}

// value returns the value node of key in mapping m, and the key's line.
func value(m *yaml.Node, key string) (*yaml.Node, int) {
	if m == nil || m.Kind != yaml.MappingNode {
		return nil, 0
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1], m.Content[i].Line
		}
	}
	return nil, 0
}

func (l lineIndex) top(key string) int {
	_, line := value(l.root, key)
	return max(line, 1)
}

func (l lineIndex) rule(i int) int {
	rules, _ := value(l.root, "rules")
	if rules == nil || i >= len(rules.Content) {
		return 1
	}
	return rules.Content[i].Line
}

func (l lineIndex) role(name string) int {
	roles, _ := value(l.root, "roles")
	_, line := value(roles, name)
	return max(line, 1)
}

func (l lineIndex) file(role string, i int) int {
	roles, _ := value(l.root, "roles")
	r, line := value(roles, role)
	files, _ := value(r, "files")
	if files == nil || i >= len(files.Content) {
		return max(line, 1)
	}
	return files.Content[i].Line
}
