// Package netboxtest is a NetBox stand-in for tests: an http.Handler that
// keeps dcim, ipam and extras objects in memory and holds every request to
// NetBox's own OpenAPI document (shared/netbox/openapi.yaml, the one
// go-netbox v4.3.0 is generated from). A request the document does not
// allow is answered 400 and recorded as a violation; answers are completed
// and checked against the response schemas so the real go-netbox client
// decodes them.
package netboxtest

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"gopkg.in/yaml.v3"
)

// Spec is the parsed OpenAPI document.
type Spec struct {
	schemas  map[string]any
	paths    []pathTemplate
	LoadTime time.Duration // reading and parsing the document
	Path     string
	Cached   bool // read from the JSON cache rather than parsed as YAML
}

type pathTemplate struct {
	template string
	segs     []string // "{id}" for a parameter
	ops      map[string]map[string]any
}

var (
	specOnce sync.Once
	spec     *Spec
	specErr  error
)

// SpecPath finds shared/netbox/openapi.yaml beside an ancestor of the
// working directory (the checkout sits beside /work/shared), or takes
// MDC_NETBOX_OPENAPI.
func SpecPath() (string, error) {
	if p := os.Getenv("MDC_NETBOX_OPENAPI"); p != "" {
		return p, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		p := filepath.Join(dir, "shared", "netbox", "openapi.yaml")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("shared/netbox/openapi.yaml not found beside any parent of the working directory (set MDC_NETBOX_OPENAPI)")
		}
		dir = parent
	}
}

// LoadSpec parses the document once per test binary: it is 4 MB of YAML.
func LoadSpec() (*Spec, error) {
	specOnce.Do(func() {
		p, err := SpecPath()
		if err != nil {
			specErr = err
			return
		}
		spec, specErr = parseSpec(p)
	})
	return spec, specErr
}

func parseSpec(path string) (*Spec, error) {
	start := time.Now()
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	doc, cached, err := decodeDoc(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	s := &Spec{Path: path, Cached: cached}
	comps, _ := doc["components"].(map[string]any)
	s.schemas, _ = comps["schemas"].(map[string]any)
	paths, _ := doc["paths"].(map[string]any)
	if len(paths) == 0 || len(s.schemas) == 0 {
		return nil, fmt.Errorf("%s: no paths or schemas", path)
	}
	for tmpl, v := range paths {
		item, _ := v.(map[string]any)
		pt := pathTemplate{template: tmpl, segs: strings.Split(strings.Trim(tmpl, "/"), "/"), ops: map[string]map[string]any{}}
		for m, op := range item {
			if o, ok := op.(map[string]any); ok && m != "parameters" {
				pt.ops[strings.ToUpper(m)] = o
			}
		}
		s.paths = append(s.paths, pt)
	}
	s.LoadTime = time.Since(start)
	return s, nil
}

// decodeDoc parses the YAML document, or reads the JSON copy a previous
// test binary left in the temporary directory (keyed by the document's
// hash): YAML parsing of 4 MB takes seconds on a loaded machine, JSON a
// tenth of that.
func decodeDoc(b []byte) (map[string]any, bool, error) {
	sum := sha256.Sum256(b)
	cache := filepath.Join(os.TempDir(), "mdc-netbox-openapi-"+hex.EncodeToString(sum[:8])+".json")
	var doc map[string]any
	if jb, err := os.ReadFile(cache); err == nil && json.Unmarshal(jb, &doc) == nil && doc["paths"] != nil {
		return doc, true, nil
	}
	doc = nil
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, false, err
	}
	if jb, err := json.Marshal(doc); err == nil {
		tmp := cache + fmt.Sprintf(".%d", os.Getpid())
		if os.WriteFile(tmp, jb, 0o600) == nil {
			_ = os.Rename(tmp, cache)
		}
	}
	return doc, false, nil
}

// match finds the path template of a request path and its parameters.
func (s *Spec) match(path string) (*pathTemplate, map[string]string) {
	segs := strings.Split(strings.Trim(path, "/"), "/")
	if !strings.HasSuffix(path, "/") { // NetBox's paths all end in '/'
		return nil, nil
	}
	var best *pathTemplate
	var bestParams map[string]string
	bestVars := len(segs) + 1
outer:
	for i := range s.paths {
		pt := &s.paths[i]
		if len(pt.segs) != len(segs) {
			continue
		}
		params := map[string]string{}
		for j, seg := range pt.segs {
			if strings.HasPrefix(seg, "{") {
				params[strings.Trim(seg, "{}")] = segs[j]
				continue
			}
			if seg != segs[j] {
				continue outer
			}
		}
		// A literal segment wins over a parameter.
		if len(params) < bestVars {
			best, bestParams, bestVars = pt, params, len(params)
		}
	}
	return best, bestParams
}

// parameters of an operation by location and name.
func opParams(op map[string]any, in string) map[string]map[string]any {
	out := map[string]map[string]any{}
	list, _ := op["parameters"].([]any)
	for _, p := range list {
		pm, _ := p.(map[string]any)
		if pm["in"] == in {
			name, _ := pm["name"].(string)
			sch, _ := pm["schema"].(map[string]any)
			out[name] = sch
		}
	}
	return out
}

// scalar converts a query or path value to the JSON value its schema wants.
func scalar(sch map[string]any, raw string) (any, error) {
	switch sch["type"] {
	case "integer":
		if _, err := strconv.ParseInt(raw, 10, 64); err != nil {
			return nil, fmt.Errorf("%q is not an integer", raw)
		}
		return jsonNumber(raw), nil
	case "number":
		if _, err := strconv.ParseFloat(raw, 64); err != nil {
			return nil, fmt.Errorf("%q is not a number", raw)
		}
		return jsonNumber(raw), nil
	case "boolean":
		switch raw {
		case "true", "True":
			return true, nil
		case "false", "False":
			return false, nil
		}
		return nil, fmt.Errorf("%q is not a boolean", raw)
	}
	return raw, nil
}
