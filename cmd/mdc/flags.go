package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// envName is the environment variable of a flag: --dhcp-mode → MDC_DHCP_MODE.
func envName(flagName string) string {
	return "MDC_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseArgs parses flags anywhere among the arguments (mdc machines show ID
// -o json) and returns the positional arguments.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	// The flag package prints usage on every parse error; mdc prints it only
	// for -h (flagError), so that a mistake stays one line.
	usage := fs.Usage
	fs.Usage = func() {}
	defer func() { fs.Usage = usage }()
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// settle fills every flag not given on the command line from the
// environment (MDC_<FLAG>), then from the YAML file named by the "config"
// flag if there is one. Flags win over the environment, the environment over
// the file. Each value goes through the flag's own parser, so a bad value
// is reported the same way wherever it came from.
func settle(fs *flag.FlagSet, getenv func(string) string) error {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if err != nil || set[f.Name] {
			return
		}
		if v := getenv(envName(f.Name)); v != "" {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("%s=%q: %v", envName(f.Name), v, e)
			}
			set[f.Name] = true
		}
	})
	if err != nil {
		return err
	}
	cf := fs.Lookup("config")
	if cf == nil || cf.Value.String() == "" {
		return nil
	}
	values, err := readConfig(cf.Value.String())
	if err != nil {
		return err
	}
	keys := make([]string, 0, len(values))
	for k := range values {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		f := fs.Lookup(k)
		if f == nil || k == "config" {
			return fmt.Errorf("%s: unknown setting %q (settings are the flag names, e.g. http-addr)", cf.Value, k)
		}
		if set[k] {
			continue
		}
		if e := fs.Set(k, values[k]); e != nil {
			return fmt.Errorf("%s: %s: %q: %v", cf.Value, k, values[k], e)
		}
	}
	return nil
}

// readConfig reads a flat YAML map of flag names to scalars; a list becomes
// a comma-joined value (dhcp-dns: [10.0.0.1, 10.0.0.2]).
func readConfig(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	var raw map[string]any
	dec := yaml.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&raw); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("config file %s: %w", path, err)
	}
	out := map[string]string{}
	for k, v := range raw {
		switch v := v.(type) {
		case nil:
		case map[string]any:
			return nil, fmt.Errorf("config file %s: %s: want a value, not a map", path, k)
		case []any:
			parts := make([]string, len(v))
			for i, p := range v {
				parts[i] = fmt.Sprint(p)
			}
			out[k] = strings.Join(parts, ",")
		default:
			out[k] = fmt.Sprint(v)
		}
	}
	return out, nil
}

// newFlagSet returns a FlagSet whose errors come back to the caller and whose
// help (fs.Usage) goes to w.
func newFlagSet(name string, w io.Writer, help string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {
		fmt.Fprint(w, help)
		fs.SetOutput(w)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
	return fs
}

// flagError turns a flag parsing error into a usage error (exit 2); -h is
// not an error.
func flagError(fs *flag.FlagSet, err error) error {
	if errors.Is(err, flag.ErrHelp) {
		fs.Usage()
		return errHelp
	}
	return usagef("%s: %v", fs.Name(), err)
}

// errHelp ends a command after printing its help.
var errHelp = errors.New("help shown")
