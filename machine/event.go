package machine

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"
)

// EventType names what happened to a machine.
type EventType string

// Lifecycle events: kept forever; the machine's state is their fold.
const (
	Discovered           EventType = "discovered"
	Enrolled             EventType = "enrolled"
	CommissioningStarted EventType = "commissioning_started"
	FactsReported        EventType = "facts_reported"
	RoleAssigned         EventType = "role_assigned"
	PowerRequested       EventType = "power_requested"
	PowerChanged         EventType = "power_changed"
	BootDeviceSet        EventType = "boot_device_set"
	ProvisioningStarted  EventType = "provisioning_started"
	Booted               EventType = "booted"
	Joined               EventType = "joined"
	Failed               EventType = "failed"
	Retired              EventType = "retired"
	Renamed              EventType = "renamed"
)

// Boot telemetry: kept for days, never part of the state.
const (
	DHCPOffered  EventType = "dhcp_offered"
	DHCPAcked    EventType = "dhcp_acked"
	TFTPServed   EventType = "tftp_served"
	ScriptServed EventType = "script_served"
	BlobServed   EventType = "blob_served"
	AgentSeen    EventType = "agent_seen"
)

// LifecycleEvents lists the lifecycle event types in lifecycle order.
func LifecycleEvents() []EventType {
	return []EventType{Discovered, Enrolled, CommissioningStarted, FactsReported, RoleAssigned,
		PowerRequested, PowerChanged, BootDeviceSet, ProvisioningStarted, Booted, Joined,
		Failed, Retired, Renamed}
}

// TelemetryEvents lists the boot telemetry event types.
func TelemetryEvents() []EventType {
	return []EventType{DHCPOffered, DHCPAcked, TFTPServed, ScriptServed, BlobServed, AgentSeen}
}

// Lifecycle reports whether t changes (or may change) a machine's state.
func (t EventType) Lifecycle() bool {
	switch t {
	case Discovered, Enrolled, CommissioningStarted, FactsReported, RoleAssigned, PowerRequested,
		PowerChanged, BootDeviceSet, ProvisioningStarted, Booted, Joined, Failed, Retired, Renamed:
		return true
	}
	return false
}

// Telemetry reports whether t is boot telemetry.
func (t EventType) Telemetry() bool {
	switch t {
	case DHCPOffered, DHCPAcked, TFTPServed, ScriptServed, BlobServed, AgentSeen:
		return true
	}
	return false
}

// Event is one thing that happened to one machine. It maps one to one onto a
// CloudEvents 1.0 envelope (see package events).
type Event struct {
	ID      string          `json:"id"`
	Type    EventType       `json:"type"`
	Machine ID              `json:"machine"`
	Time    time.Time       `json:"time"`
	Source  string          `json:"source"`
	Seq     uint64          `json:"seq,omitempty"` // stream sequence; set once stored
	Data    json.RawMessage `json:"data,omitempty"`
}

// NewEvent builds an event with a fresh random id and the current time.
// data is marshalled to JSON; nil means no data.
func NewEvent(id ID, t EventType, source string, data any) (Event, error) {
	e := Event{ID: NewEventID(), Type: t, Machine: id, Time: time.Now().UTC(), Source: source}
	if data != nil {
		b, err := json.Marshal(data)
		if err != nil {
			return Event{}, fmt.Errorf("encode %s data: %w", t, err)
		}
		e.Data = b
	}
	return e, nil
}

// NewEventID returns 128 random bits as 32 hex digits.
func NewEventID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux.
	return hex.EncodeToString(b[:])
}

// Data carried by lifecycle events. Secrets never go here: a BMC is referenced
// by the name of its credential file, not its password.

// DiscoveredData says how a machine was first seen.
type DiscoveredData struct {
	Via         string `json:"via"` // dhcp, http, api, netbox
	Arch        string `json:"arch,omitempty"`
	VendorClass string `json:"vendor_class,omitempty"`
	GUID        string `json:"guid,omitempty"`
	Relay       string `json:"relay,omitempty"`
	Interface   string `json:"interface,omitempty"`
	Name        string `json:"name,omitempty"`
}

// BMC is how mdc reaches a machine's baseboard management controller.
type BMC struct {
	URL        string `json:"url"`
	User       string `json:"user"`
	Credential string `json:"credential"` // name of the 0600 file in the data directory
}

// EnrolledData records a machine entered by hand or from the inventory.
type EnrolledData struct {
	BMC    *BMC     `json:"bmc,omitempty"`
	MACs   []string `json:"macs,omitempty"`
	Serial string   `json:"serial,omitempty"`
	UUID   string   `json:"uuid,omitempty"`
	Name   string   `json:"name,omitempty"`
	Role   string   `json:"role,omitempty"`
	Via    string   `json:"via,omitempty"` // cli, netbox
}

// ImageData names the image a boot was given.
type ImageData struct {
	Image string `json:"image,omitempty"`
}

// RoleAssignedData records a role decision and who made it.
type RoleAssignedData struct {
	Role   string `json:"role"`
	By     string `json:"by,omitempty"` // policy, operator
	Reason string `json:"reason,omitempty"`
}

// ProvisioningStartedData records the role image served.
type ProvisioningStartedData struct {
	Role  string `json:"role"`
	Image string `json:"image,omitempty"`
}

// BootedData is the agent's report from a booted role image.
type BootedData struct {
	Image  string `json:"image,omitempty"`
	Kernel string `json:"kernel,omitempty"`
}

// JoinedData carries the evidence that the node is part of its cluster.
type JoinedData struct {
	Role     string            `json:"role,omitempty"`
	Evidence map[string]string `json:"evidence,omitempty"`
}

// FailedData says why a step failed. The fold records the state it failed in.
type FailedData struct {
	Reason string `json:"reason"`
}

// RetiredData says why a machine was decommissioned.
type RetiredData struct {
	Reason string `json:"reason,omitempty"`
}

// RenamedData carries a machine's new name.
type RenamedData struct {
	Name string `json:"name"`
}

// PowerData is a power action requested, or a power state observed.
type PowerData struct {
	Action string `json:"action,omitempty"` // on, off, cycle, soft
	State  string `json:"state,omitempty"`  // on, off
	Result string `json:"result,omitempty"`
}

// BootDeviceData is a next-boot override that was set and read back.
type BootDeviceData struct {
	Device     string `json:"device"`
	Persistent bool   `json:"persistent,omitempty"`
	EFI        bool   `json:"efi,omitempty"`
}

// Facts is what the commissioning agent reports about the hardware.
type Facts struct {
	Vendor      string `json:"vendor,omitempty"`
	Product     string `json:"product,omitempty"`
	Serial      string `json:"serial,omitempty"`
	UUID        string `json:"uuid,omitempty"`
	BootMode    string `json:"boot_mode,omitempty"` // uefi, bios
	CPUModel    string `json:"cpu_model,omitempty"`
	CPUs        int    `json:"cpus,omitempty"`
	MemoryBytes uint64 `json:"memory_bytes,omitempty"`
	Disks       []Disk `json:"disks,omitempty"`
	NICs        []NIC  `json:"nics,omitempty"`
}

// Disk is one block device.
type Disk struct {
	Name       string `json:"name"`
	Model      string `json:"model,omitempty"`
	Serial     string `json:"serial,omitempty"`
	SizeBytes  uint64 `json:"size_bytes"`
	Rotational bool   `json:"rotational,omitempty"`
	Removable  bool   `json:"removable,omitempty"`
}

// NIC is one network interface.
type NIC struct {
	Name      string `json:"name"`
	MAC       string `json:"mac"`
	Driver    string `json:"driver,omitempty"`
	SpeedMbps int    `json:"speed_mbps,omitempty"`
	Carrier   bool   `json:"carrier,omitempty"`
}
