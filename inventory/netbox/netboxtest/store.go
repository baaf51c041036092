package netboxtest

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// kind is one NetBox object type the stand-in keeps.
type kind struct {
	path       string            // api/<app>/<model>
	schema     string            // response schema
	objectType string            // content type, for custom fields and assignments
	refs       map[string]string // foreign key fields → kind path
	unique     [][]string        // field sets NetBox keeps unique
	display    string            // field shown as display
	brief      []string          // fields of the brief form
}

var kinds = map[string]*kind{
	"dcim/devices": {schema: "DeviceWithConfigContext", objectType: "dcim.device", display: "name",
		refs:   map[string]string{"device_type": "dcim/device-types", "role": "dcim/device-roles", "site": "dcim/sites", "primary_ip4": "ipam/ip-addresses", "oob_ip": "ipam/ip-addresses"},
		unique: [][]string{{"site", "name"}}, brief: []string{"name", "description"}},
	"dcim/interfaces": {schema: "Interface", objectType: "dcim.interface", display: "name",
		refs:   map[string]string{"device": "dcim/devices", "primary_mac_address": "dcim/mac-addresses"},
		unique: [][]string{{"device", "name"}}, brief: []string{"device", "name", "description"}},
	"dcim/mac-addresses": {schema: "MACAddress", objectType: "dcim.macaddress", display: "mac_address",
		brief: []string{"mac_address", "description"}},
	"dcim/device-roles": {schema: "DeviceRole", objectType: "dcim.devicerole", display: "name",
		unique: [][]string{{"name"}, {"slug"}}, brief: []string{"name", "slug", "description"}},
	"dcim/device-types": {schema: "DeviceType", objectType: "dcim.devicetype", display: "model",
		refs:   map[string]string{"manufacturer": "dcim/manufacturers"},
		unique: [][]string{{"manufacturer", "model"}, {"manufacturer", "slug"}}, brief: []string{"manufacturer", "model", "slug", "description"}},
	"dcim/manufacturers": {schema: "Manufacturer", objectType: "dcim.manufacturer", display: "name",
		unique: [][]string{{"name"}, {"slug"}}, brief: []string{"name", "slug", "description"}},
	"dcim/sites": {schema: "Site", objectType: "dcim.site", display: "name",
		unique: [][]string{{"name"}, {"slug"}}, brief: []string{"name", "slug", "description"}},
	"ipam/ip-addresses": {schema: "IPAddress", objectType: "ipam.ipaddress", display: "address",
		brief: []string{"address", "description"}},
	"extras/tags": {schema: "Tag", objectType: "extras.tag", display: "name",
		unique: [][]string{{"name"}, {"slug"}}, brief: []string{"name", "slug", "color", "description"}},
	"extras/custom-fields": {schema: "CustomField", objectType: "extras.customfield", display: "name",
		unique: [][]string{{"name"}}, brief: []string{"name", "description"}},
}

func init() {
	for p, k := range kinds {
		k.path = p
	}
}

type object = map[string]any

// store is the stand-in's data: objects by kind and id, as written
// (foreign keys as ids, tags as ids).
type store struct {
	base   string
	nextID int64
	objs   map[string]map[int64]object
}

func newStore() *store {
	s := &store{base: "http://netbox.invalid", objs: map[string]map[int64]object{}}
	for p := range kinds {
		s.objs[p] = map[int64]object{}
	}
	return s
}

// fieldErrors is NetBox's 400 body: field → messages.
type fieldErrors map[string][]string

func (f fieldErrors) add(field, format string, args ...any) {
	f[field] = append(f[field], fmt.Sprintf(format, args...))
}

func now() string { return time.Now().UTC().Format(time.RFC3339Nano) }

// write creates (id 0) or updates an object from a request body already
// checked against the document. partial is PATCH.
func (s *store) write(k *kind, id int64, body object, partial bool) (object, fieldErrors) {
	errs := fieldErrors{}
	var cur object
	if id != 0 {
		cur = s.objs[k.path][id]
	}
	next := object{}
	if partial && cur != nil {
		for f, v := range cur {
			next[f] = v
		}
	} else if cur != nil {
		for _, f := range []string{"id", "created", "custom_fields"} {
			next[f] = cur[f]
		}
	}
	for f, v := range body {
		switch {
		case f == "tags":
			ids, err := s.tagIDs(v)
			if err != "" {
				errs.add(f, "%s", err)
			}
			next[f] = ids
		case f == "custom_fields":
			m, _ := v.(map[string]any)
			merged := map[string]any{}
			if old, ok := next["custom_fields"].(map[string]any); ok {
				for ck, cv := range old {
					merged[ck] = cv
				}
			}
			for ck, cv := range m {
				if msg := s.checkCustomField(k, ck, cv); msg != "" {
					errs.add("custom_fields", "%s", msg)
				}
				merged[ck] = cv
			}
			next[f] = merged
		case k.refs[f] != "":
			ref, msg := s.ref(k.refs[f], v)
			if msg != "" {
				errs.add(f, "%s", msg)
			}
			next[f] = ref
		default:
			next[f] = v
		}
	}
	s.normalize(k, next, errs)
	if len(errs) > 0 {
		return nil, errs
	}
	s.checkUnique(k, id, next, errs)
	s.checkRelations(k, id, next, errs)
	if len(errs) > 0 {
		return nil, errs
	}
	if id == 0 {
		s.nextID++
		id = s.nextID
		next["created"] = now()
	}
	next["id"] = id
	next["last_updated"] = now()
	s.objs[k.path][id] = next
	return next, nil
}

// ref resolves a foreign key given as an id or as a brief object.
func (s *store) ref(target string, v any) (any, string) {
	switch t := v.(type) {
	case nil:
		return nil, ""
	case json.Number:
		id, _ := t.Int64()
		if _, ok := s.objs[target][id]; !ok {
			return nil, fmt.Sprintf("Related object not found using the provided numeric ID: %d", id)
		}
		return id, ""
	case map[string]any:
		for oid, o := range s.objs[target] {
			match := true
			for f, want := range t {
				if fmt.Sprint(o[f]) != fmt.Sprint(want) {
					match = false
				}
			}
			if match {
				return oid, ""
			}
		}
		return nil, "Related object not found using the provided attributes"
	}
	return nil, fmt.Sprintf("unexpected %T", v)
}

func (s *store) tagIDs(v any) ([]int64, string) {
	list, _ := v.([]any)
	ids := []int64{}
	for _, t := range list {
		id, msg := s.ref("extras/tags", t)
		if msg != "" {
			return nil, msg
		}
		if !slices.Contains(ids, id.(int64)) {
			ids = append(ids, id.(int64))
		}
	}
	return ids, ""
}

// customFields lists the custom fields defined for an object type.
func (s *store) customFields(objectType string) map[string]object {
	out := map[string]object{}
	for _, cf := range s.objs["extras/custom-fields"] {
		types, _ := cf["object_types"].([]any)
		for _, t := range types {
			if t == objectType {
				out[cf["name"].(string)] = cf
			}
		}
	}
	return out
}

func (s *store) checkCustomField(k *kind, name string, v any) string {
	cf, ok := s.customFields(k.objectType)[name]
	if !ok {
		return fmt.Sprintf("Unknown field name '%s' in custom field data.", name)
	}
	if v == nil {
		return ""
	}
	switch cf["type"] {
	case "text", "longtext", "url", "select":
		if _, ok := v.(string); !ok {
			return fmt.Sprintf("Value for field '%s' must be a string.", name)
		}
	case "integer":
		n, ok := v.(json.Number)
		if _, err := strconv.ParseInt(n.String(), 10, 64); !ok || err != nil {
			return fmt.Sprintf("Value for field '%s' must be an integer.", name)
		}
	case "boolean":
		if _, ok := v.(bool); !ok {
			return fmt.Sprintf("Value for field '%s' must be a boolean.", name)
		}
	}
	return ""
}

// normalize does what NetBox's model cleaning does to values.
func (s *store) normalize(k *kind, o object, errs fieldErrors) {
	switch k.path {
	case "dcim/mac-addresses":
		raw, _ := o["mac_address"].(string)
		hw, err := net.ParseMAC(raw)
		if err != nil || len(hw) != 6 {
			errs.add("mac_address", "Invalid MAC address format: %s", raw)
			return
		}
		o["mac_address"] = strings.ToUpper(hw.String())
	case "ipam/ip-addresses":
		raw, _ := o["address"].(string)
		if _, err := netip.ParsePrefix(raw); err != nil {
			errs.add("address", "Invalid IP address format: %s", raw)
		}
	case "dcim/devices":
		if o["status"] == nil {
			o["status"] = "active"
		}
		if o["name"] == "" {
			o["name"] = nil
		}
	}
	if k.path == "ipam/ip-addresses" && o["status"] == nil {
		o["status"] = "active"
	}
	if k.path == "extras/custom-fields" && o["type"] == nil {
		o["type"] = "text"
	}
}

func (s *store) checkUnique(k *kind, id int64, o object, errs fieldErrors) {
	for _, set := range k.unique {
		if slices.ContainsFunc(set, func(f string) bool { return o[f] == nil }) {
			continue
		}
		for oid, other := range s.objs[k.path] {
			if oid == id {
				continue
			}
			same := true
			for _, f := range set {
				if !sameValue(other[f], o[f]) {
					same = false
					break
				}
			}
			if same {
				errs.add(set[len(set)-1], "%s with this %s already exists.", k.path, strings.Join(set, " and "))
				return
			}
		}
	}
}

// checkRelations enforces NetBox's rules about assignments.
func (s *store) checkRelations(k *kind, id int64, o object, errs fieldErrors) {
	switch k.path {
	case "dcim/interfaces":
		if mid, ok := o["primary_mac_address"].(int64); ok {
			mac := s.objs["dcim/mac-addresses"][mid]
			if mac["assigned_object_type"] != "dcim.interface" || asID(mac["assigned_object_id"]) != id || id == 0 {
				errs.add("primary_mac_address", "MAC address %s is not assigned to this interface.", mac["mac_address"])
			}
		}
	case "dcim/devices":
		for _, f := range []string{"primary_ip4", "oob_ip"} {
			if ipID, ok := o[f].(int64); ok {
				ip := s.objs["ipam/ip-addresses"][ipID]
				iface := s.objs["dcim/interfaces"][asID(ip["assigned_object_id"])]
				if ip["assigned_object_type"] != "dcim.interface" || iface == nil || asID(iface["device"]) != id {
					errs.add(f, "The specified IP address (%s) is not assigned to this device.", ip["address"])
				}
			}
		}
	case "dcim/mac-addresses", "ipam/ip-addresses":
		t, _ := o["assigned_object_type"].(string)
		if t == "" && o["assigned_object_id"] != nil {
			errs.add("assigned_object_type", "This field is required with assigned_object_id.")
			return
		}
		if t == "" {
			return
		}
		if t != "dcim.interface" {
			errs.add("assigned_object_type", "the stand-in assigns only to dcim.interface, not %q", t)
			return
		}
		if _, ok := s.objs["dcim/interfaces"][asID(o["assigned_object_id"])]; !ok {
			errs.add("assigned_object_id", "Related object not found.")
		}
		if k.path == "dcim/mac-addresses" && id != 0 {
			// NetBox refuses to move a MAC that is its interface's primary.
			cur := s.objs[k.path][id]
			if asID(cur["assigned_object_id"]) != asID(o["assigned_object_id"]) {
				for _, ifc := range s.objs["dcim/interfaces"] {
					if asID(ifc["primary_mac_address"]) == id {
						errs.add("assigned_object_id", "Cannot unassign MAC Address while it is designated as the primary MAC for an object")
					}
				}
			}
		}
	}
}

// sameValue compares scalars as NetBox's unique constraints do.
func sameValue(a, b any) bool {
	switch a.(type) {
	case string, int64, bool, nil:
		switch b.(type) {
		case string, int64, bool, nil:
			return a == b
		}
	}
	return fmt.Sprint(a) == fmt.Sprint(b)
}

func asID(v any) int64 {
	switch t := v.(type) {
	case int64:
		return t
	case json.Number:
		n, _ := t.Int64()
		return n
	case int:
		return int64(t)
	}
	return 0
}

func (s *store) url(k *kind, id int64) string {
	return fmt.Sprintf("%s/api/%s/%d/", s.base, k.path, id)
}

// brief renders the nested form of an object.
func (s *store) brief(path string, id int64) any {
	k := kinds[path]
	o, ok := s.objs[path][id]
	if !ok {
		return nil
	}
	b := object{"id": id, "url": s.url(k, id), "display": s.display(k, o)}
	for _, f := range k.brief {
		v := o[f]
		if t := k.refs[f]; t != "" {
			v = s.brief(t, asID(v))
		}
		if v != nil {
			b[f] = v
		}
	}
	if path == "ipam/ip-addresses" {
		b["family"] = s.family(o)
	}
	return b
}

func (s *store) display(k *kind, o object) string {
	if v, ok := o[k.display].(string); ok && v != "" {
		return v
	}
	return fmt.Sprintf("Unnamed %s (%d)", strings.TrimSuffix(k.path[strings.Index(k.path, "/")+1:], "s"), asID(o["id"]))
}

func (s *store) family(o object) object {
	p, _ := netip.ParsePrefix(fmt.Sprint(o["address"]))
	if p.Addr().Is6() {
		return object{"value": 6, "label": "IPv6"}
	}
	return object{"value": 4, "label": "IPv4"}
}

// render is the full answer for one object, before Complete.
func (s *store) render(spec *Spec, k *kind, o object) object {
	id := asID(o["id"])
	out := object{"id": id, "url": s.url(k, id), "display_url": s.url(k, id), "display": s.display(k, o)}
	for f, v := range o {
		switch {
		case f == "id":
		case f == "tags":
			tags := []any{}
			for _, tid := range v.([]int64) {
				tags = append(tags, s.brief("extras/tags", tid))
			}
			out[f] = tags
		case f == "custom_fields":
		case k.refs[f] != "":
			if v == nil {
				out[f] = nil
			} else {
				out[f] = s.brief(k.refs[f], asID(v))
			}
		default:
			out[f] = v
		}
	}
	cfs := map[string]any{}
	set, _ := o["custom_fields"].(map[string]any)
	for name := range s.customFields(k.objectType) {
		cfs[name] = set[name]
	}
	out["custom_fields"] = cfs
	if _, ok := out["tags"]; !ok {
		out["tags"] = []any{}
	}
	for _, f := range []string{"status", "type"} {
		if v, ok := o[f].(string); ok {
			out[f] = spec.choice(k.schema, f, v)
		}
	}
	switch k.path {
	case "dcim/devices":
		out["primary_ip"] = out["primary_ip4"]
		n := 0
		for _, ifc := range s.objs["dcim/interfaces"] {
			if asID(ifc["device"]) == id {
				n++
			}
		}
		out["interface_count"] = n
	case "dcim/interfaces":
		var mids []int64
		for mid, m := range s.objs["dcim/mac-addresses"] {
			if m["assigned_object_type"] == "dcim.interface" && asID(m["assigned_object_id"]) == id {
				mids = append(mids, mid)
			}
		}
		slices.Sort(mids)
		macs := []any{}
		for _, mid := range mids {
			macs = append(macs, s.brief("dcim/mac-addresses", mid))
		}
		out["mac_addresses"] = macs
		out["mac_address"] = nil
		if p, ok := o["primary_mac_address"].(int64); ok {
			out["mac_address"] = s.objs["dcim/mac-addresses"][p]["mac_address"]
		}
	case "dcim/mac-addresses", "ipam/ip-addresses":
		out["assigned_object"] = nil
		if o["assigned_object_type"] == "dcim.interface" {
			out["assigned_object"] = s.brief("dcim/interfaces", asID(o["assigned_object_id"]))
		}
		if k.path == "ipam/ip-addresses" {
			out["family"] = s.family(o)
		}
	case "extras/custom-fields":
		out["data_type"] = map[string]string{"text": "string", "longtext": "string", "integer": "integer", "boolean": "boolean", "json": "object"}[fmt.Sprint(o["type"])]
	}
	return out
}

func (s *store) ids(path string) []int64 {
	ids := make([]int64, 0, len(s.objs[path]))
	for id := range s.objs[path] {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// choice renders a choice field as {value, label}, the label taken from
// the response schema's parallel enums.
func (sp *Spec) choice(schema, field, value string) object {
	props := sp.properties(sp.schema(schema))
	f := sp.resolve(asMap(props[field]))
	fp, _ := f["properties"].(map[string]any)
	values, _ := sp.resolve(asMap(fp["value"]))["enum"].([]any)
	labels, _ := sp.resolve(asMap(fp["label"]))["enum"].([]any)
	label := value
	for i, v := range values {
		if v == value && i < len(labels) {
			label = fmt.Sprint(labels[i])
		}
	}
	return object{"value": value, "label": label}
}

func asMap(v any) map[string]any {
	m, _ := v.(map[string]any)
	return m
}

// filter is one implemented list filter: prepared once per request for
// its values, then asked about each object.
type filter func(s *store, values []string) func(o object) bool

func eqField(f string) filter {
	return func(s *store, values []string) func(object) bool {
		return func(o object) bool { return slices.Contains(values, fmt.Sprint(o[f])) }
	}
}

func refField(f string) filter {
	return func(s *store, values []string) func(object) bool {
		return func(o object) bool { return slices.Contains(values, strconv.FormatInt(asID(o[f]), 10)) }
	}
}

func refSlug(f, target string) filter {
	return func(s *store, values []string) func(object) bool {
		return func(o object) bool {
			t := s.objs[target][asID(o[f])]
			return t != nil && slices.Contains(values, fmt.Sprint(t["slug"]))
		}
	}
}

// byMAC prepares the set of interfaces that hold one of the MACs.
func byMAC(s *store, values []string) map[int64]bool {
	ifaces := map[int64]bool{}
	for _, m := range s.objs["dcim/mac-addresses"] {
		if m["assigned_object_type"] == "dcim.interface" && macIn(m["mac_address"], values) {
			ifaces[asID(m["assigned_object_id"])] = true
		}
	}
	return ifaces
}

func macIn(mac any, values []string) bool {
	return slices.ContainsFunc(values, func(v string) bool { return strings.EqualFold(v, fmt.Sprint(mac)) })
}

// assignedTo matches MACs and IPs assigned to one of the interfaces.
func assignedTo(o object, ifaces func(int64) bool) bool {
	return o["assigned_object_type"] == "dcim.interface" && ifaces(asID(o["assigned_object_id"]))
}

var filters = map[string]map[string]filter{
	"dcim/devices": {
		"id": eqField("id"), "name": eqField("name"), "role": refSlug("role", "dcim/device-roles"),
		"site": refSlug("site", "dcim/sites"), "status": eqField("status"), "serial": eqField("serial"),
		// NetBox ANDs repeated tag filters.
		"tag": func(s *store, values []string) func(object) bool {
			return func(o object) bool {
				ids, _ := o["tags"].([]int64)
				for _, v := range values {
					if !slices.ContainsFunc(ids, func(id int64) bool { return s.objs["extras/tags"][id]["slug"] == v }) {
						return false
					}
				}
				return true
			}
		},
		"mac_address": func(s *store, values []string) func(object) bool {
			devs := map[int64]bool{}
			for iid := range byMAC(s, values) {
				devs[asID(s.objs["dcim/interfaces"][iid]["device"])] = true
			}
			return func(o object) bool { return devs[asID(o["id"])] }
		},
	},
	"dcim/interfaces": {
		"id": eqField("id"), "device_id": refField("device"), "name": eqField("name"),
		"mac_address": func(s *store, values []string) func(object) bool {
			ifaces := byMAC(s, values)
			return func(o object) bool { return ifaces[asID(o["id"])] }
		},
	},
	"dcim/mac-addresses": {
		"id": eqField("id"), "assigned_object_id": eqField("assigned_object_id"),
		"mac_address": func(s *store, values []string) func(object) bool {
			return func(o object) bool { return macIn(o["mac_address"], values) }
		},
		"interface_id": func(s *store, values []string) func(object) bool {
			return func(o object) bool {
				return assignedTo(o, func(id int64) bool { return slices.Contains(values, strconv.FormatInt(id, 10)) })
			}
		},
		"device_id": deviceOfAssigned,
	},
	"ipam/ip-addresses": {
		"id": eqField("id"), "address": eqField("address"),
		"interface_id": func(s *store, values []string) func(object) bool {
			return func(o object) bool {
				return assignedTo(o, func(id int64) bool { return slices.Contains(values, strconv.FormatInt(id, 10)) })
			}
		},
		"device_id": deviceOfAssigned,
	},
	"dcim/device-roles":    {"id": eqField("id"), "slug": eqField("slug"), "name": eqField("name")},
	"dcim/sites":           {"id": eqField("id"), "slug": eqField("slug"), "name": eqField("name")},
	"dcim/manufacturers":   {"id": eqField("id"), "slug": eqField("slug"), "name": eqField("name")},
	"dcim/device-types":    {"id": eqField("id"), "slug": eqField("slug"), "model": eqField("model"), "manufacturer_id": refField("manufacturer")},
	"extras/tags":          {"id": eqField("id"), "slug": eqField("slug"), "name": eqField("name")},
	"extras/custom-fields": {"id": eqField("id"), "name": eqField("name")},
}

// deviceOfAssigned matches objects assigned to an interface of the devices.
func deviceOfAssigned(s *store, values []string) func(object) bool {
	return func(o object) bool {
		return assignedTo(o, func(id int64) bool {
			ifc := s.objs["dcim/interfaces"][id]
			return ifc != nil && slices.Contains(values, fmt.Sprint(ifc["device"]))
		})
	}
}
