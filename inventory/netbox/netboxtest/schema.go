package netboxtest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

type jsonNumber = json.Number

// schema returns a component schema by name.
func (s *Spec) schema(name string) map[string]any {
	m, _ := s.schemas[name].(map[string]any)
	return m
}

// resolve follows $ref to a component schema.
func (s *Spec) resolve(sch map[string]any) map[string]any {
	for i := 0; i < 16 && sch != nil; i++ {
		ref, ok := sch["$ref"].(string)
		if !ok {
			return sch
		}
		sch = s.schema(strings.TrimPrefix(ref, "#/components/schemas/"))
	}
	return sch
}

// mode says how strictly a value is checked.
type mode struct {
	request bool // a request body: no readOnly fields, no unknown properties
	open    bool // inside allOf: unknown properties are judged by the whole
}

// Validate checks v (decoded with UseNumber) against sch and returns one
// line per problem, each naming where it is.
func (s *Spec) Validate(sch map[string]any, v any, at string, request bool) []string {
	var errs []string
	s.validate(sch, v, at, mode{request: request}, &errs)
	return errs
}

func (s *Spec) validate(sch map[string]any, v any, at string, m mode, errs *[]string) {
	sch = s.resolve(sch)
	if sch == nil {
		return
	}
	if v == nil {
		if sch["nullable"] == true || len(sch) == 0 {
			return
		}
		// nullable is often on the allOf wrapper's only member's user.
		*errs = append(*errs, at+": null is not allowed")
		return
	}
	if all, ok := sch["allOf"].([]any); ok {
		sub := m
		sub.open = true
		for _, a := range all {
			as, _ := a.(map[string]any)
			s.validate(as, v, at, sub, errs)
		}
		if obj, ok := v.(map[string]any); ok && m.request && !m.open {
			props := s.properties(sch)
			for k := range obj {
				if _, ok := props[k]; !ok && props != nil {
					*errs = append(*errs, fmt.Sprintf("%s: unknown property %q", at, k))
				}
			}
		}
		return
	}
	for _, key := range []string{"oneOf", "anyOf"} {
		alts, ok := sch[key].([]any)
		if !ok {
			continue
		}
		matched := 0
		var first []string
		for _, a := range alts {
			as, _ := a.(map[string]any)
			var e []string
			s.validate(as, v, at, m, &e)
			if len(e) == 0 {
				matched++
			} else if first == nil {
				first = e
			}
		}
		if matched == 0 {
			*errs = append(*errs, fmt.Sprintf("%s: matches none of %s (%s)", at, key, strings.Join(first, "; ")))
		} else if key == "oneOf" && matched > 1 {
			*errs = append(*errs, fmt.Sprintf("%s: matches %d members of oneOf", at, matched))
		}
		return
	}
	if enum, ok := sch["enum"].([]any); ok {
		found := slices.ContainsFunc(enum, func(e any) bool { return fmt.Sprint(e) == fmt.Sprint(v) })
		if !found {
			*errs = append(*errs, fmt.Sprintf("%s: %v is not one of %v", at, v, enum))
		}
	}
	switch sch["type"] {
	case "object":
		obj, ok := v.(map[string]any)
		if !ok {
			*errs = append(*errs, fmt.Sprintf("%s: want an object, got %T", at, v))
			return
		}
		s.validateObject(sch, obj, at, m, errs)
	case "array":
		arr, ok := v.([]any)
		if !ok {
			*errs = append(*errs, fmt.Sprintf("%s: want an array, got %T", at, v))
			return
		}
		items, _ := sch["items"].(map[string]any)
		for i, it := range arr {
			s.validate(items, it, fmt.Sprintf("%s[%d]", at, i), mode{request: m.request}, errs)
		}
	case "string":
		str, ok := v.(string)
		if !ok {
			*errs = append(*errs, fmt.Sprintf("%s: want a string, got %T", at, v))
			return
		}
		n := utf8.RuneCountInString(str)
		if max, ok := num(sch["maxLength"]); ok && float64(n) > max {
			*errs = append(*errs, fmt.Sprintf("%s: longer than %v characters", at, max))
		}
		if min, ok := num(sch["minLength"]); ok && float64(n) < min {
			*errs = append(*errs, fmt.Sprintf("%s: shorter than %v characters", at, min))
		}
		if p, ok := sch["pattern"].(string); ok {
			if re := pattern(p); re != nil && !re.MatchString(str) {
				*errs = append(*errs, fmt.Sprintf("%s: %q does not match %s", at, str, p))
			}
		}
		if sch["format"] == "date-time" {
			if _, err := time.Parse(time.RFC3339Nano, str); err != nil {
				*errs = append(*errs, fmt.Sprintf("%s: %q is not a date-time", at, str))
			}
		}
	case "integer", "number":
		n, ok := v.(json.Number)
		if !ok {
			*errs = append(*errs, fmt.Sprintf("%s: want a %s, got %T", at, sch["type"], v))
			return
		}
		f, err := n.Float64()
		if err != nil {
			*errs = append(*errs, fmt.Sprintf("%s: %v", at, err))
			return
		}
		if sch["type"] == "integer" {
			if _, err := strconv.ParseInt(n.String(), 10, 64); err != nil {
				*errs = append(*errs, fmt.Sprintf("%s: %s is not an integer", at, n))
			}
		}
		if max, ok := num(sch["maximum"]); ok && f > max {
			*errs = append(*errs, fmt.Sprintf("%s: %s is above %v", at, n, max))
		}
		if min, ok := num(sch["minimum"]); ok && f < min {
			*errs = append(*errs, fmt.Sprintf("%s: %s is below %v", at, n, min))
		}
	case "boolean":
		if _, ok := v.(bool); !ok {
			*errs = append(*errs, fmt.Sprintf("%s: want a boolean, got %T", at, v))
		}
	case nil:
		if obj, ok := v.(map[string]any); ok && sch["properties"] != nil {
			s.validateObject(sch, obj, at, m, errs)
		}
	}
}

func (s *Spec) validateObject(sch map[string]any, obj map[string]any, at string, m mode, errs *[]string) {
	req, _ := sch["required"].([]any)
	for _, r := range req {
		if _, ok := obj[r.(string)]; !ok {
			*errs = append(*errs, fmt.Sprintf("%s: required property %q missing", at, r))
		}
	}
	props, _ := sch["properties"].(map[string]any)
	addl, hasAddl := sch["additionalProperties"]
	for k, val := range obj {
		ps, ok := props[k].(map[string]any)
		if !ok {
			switch {
			case hasAddl && addl == false:
				*errs = append(*errs, fmt.Sprintf("%s: unknown property %q", at, k))
			case hasAddl:
				if as, ok := addl.(map[string]any); ok {
					s.validate(as, val, at+"."+k, mode{request: m.request}, errs)
				}
			case m.request && !m.open && props != nil:
				// NetBox would ignore it silently: a client bug either way.
				*errs = append(*errs, fmt.Sprintf("%s: unknown property %q", at, k))
			}
			continue
		}
		if m.request && s.resolve(ps)["readOnly"] == true {
			*errs = append(*errs, fmt.Sprintf("%s: %q is read-only", at, k))
			continue
		}
		s.validate(ps, val, at+"."+k, mode{request: m.request}, errs)
	}
}

// properties merges the properties of a schema and its allOf members.
func (s *Spec) properties(sch map[string]any) map[string]any {
	sch = s.resolve(sch)
	out := map[string]any{}
	if p, ok := sch["properties"].(map[string]any); ok {
		for k, v := range p {
			out[k] = v
		}
	}
	if all, ok := sch["allOf"].([]any); ok {
		for _, a := range all {
			as, _ := a.(map[string]any)
			for k, v := range s.properties(as) {
				out[k] = v
			}
		}
	}
	return out
}

func num(v any) (float64, bool) {
	switch n := v.(type) {
	case int:
		return float64(n), true
	case int64:
		return float64(n), true
	case float64:
		return n, true
	case uint64:
		return float64(n), true
	}
	return 0, false
}

var patterns sync.Map // string → *regexp.Regexp (nil when RE2 cannot compile it)

func pattern(p string) *regexp.Regexp {
	if re, ok := patterns.Load(p); ok {
		return re.(*regexp.Regexp)
	}
	re, _ := regexp.Compile(p)
	patterns.Store(p, re)
	return re
}

// Complete fills every required property missing from v (recursively) with
// a value of the right type, so that answers decode in go-netbox, whose
// models refuse a body without a required property.
func (s *Spec) Complete(sch map[string]any, v any) any {
	sch = s.resolve(sch)
	if sch == nil || v == nil {
		return v
	}
	if all, ok := sch["allOf"].([]any); ok {
		for _, a := range all {
			as, _ := a.(map[string]any)
			v = s.Complete(as, v)
		}
		return v
	}
	switch t := v.(type) {
	case map[string]any:
		props := s.properties(sch)
		req, _ := sch["required"].([]any)
		for _, r := range req {
			k := r.(string)
			if _, ok := t[k]; !ok {
				ps, _ := props[k].(map[string]any)
				t[k] = s.zero(ps, 0)
			}
		}
		for k, val := range t {
			if ps, ok := props[k].(map[string]any); ok {
				t[k] = s.Complete(ps, val)
			}
		}
	case []any:
		items, _ := sch["items"].(map[string]any)
		for i := range t {
			t[i] = s.Complete(items, t[i])
		}
	}
	return v
}

func (s *Spec) zero(sch map[string]any, depth int) any {
	sch = s.resolve(sch)
	if sch == nil || sch["nullable"] == true || depth > 8 {
		return nil
	}
	if all, ok := sch["allOf"].([]any); ok && len(all) > 0 {
		as, _ := all[0].(map[string]any)
		return s.zero(as, depth+1)
	}
	if alts, ok := sch["oneOf"].([]any); ok && len(alts) > 0 {
		as, _ := alts[0].(map[string]any)
		return s.zero(as, depth+1)
	}
	if enum, ok := sch["enum"].([]any); ok && len(enum) > 0 {
		return enum[0]
	}
	switch sch["type"] {
	case "string":
		switch sch["format"] {
		case "date-time":
			return time.Now().UTC().Format(time.RFC3339)
		case "uri":
			return "http://netbox.invalid/"
		}
		return ""
	case "integer", "number":
		return 0
	case "boolean":
		return false
	case "array":
		return []any{}
	case "object":
		obj := map[string]any{}
		props := s.properties(sch)
		req, _ := sch["required"].([]any)
		for _, r := range req {
			ps, _ := props[r.(string)].(map[string]any)
			obj[r.(string)] = s.zero(ps, depth+1)
		}
		return obj
	}
	return nil
}

// decodeJSON reads JSON with numbers kept as json.Number.
func decodeJSON(b []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, fmt.Errorf("trailing data after the JSON value")
	}
	return v, nil
}
