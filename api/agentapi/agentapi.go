// Package agentapi is the wire format of mdc's agent API: what mdc-agent on a
// booted node and the api package exchange (docs/agent.md). It imports only
// the standard library and package machine, so that the static agent stays
// small.
//
// Every request names its machine in the Mdc-Machine header and carries the
// machine's current boot token as "Authorization: Bearer <mdc.token>".
package agentapi

import (
	"encoding/json"

	"github.com/microdc/mdc/machine"
)

// The agent API's paths.
const (
	PathFacts     = "/api/v1/agent/facts"
	PathBooted    = "/api/v1/agent/booted"
	PathConfig    = "/api/v1/agent/config"
	PathJoined    = "/api/v1/agent/joined"
	PathHeartbeat = "/api/v1/agent/heartbeat"
)

// HeaderMachine names the machine a request speaks for (its id, or any MAC
// spelling of it).
const HeaderMachine = "Mdc-Machine"

// Mode is what a boot is for: mdc.mode on the kernel command line.
type Mode string

// The modes.
const (
	ModeCommissioning Mode = "commissioning" // report facts, then do as told
	ModeRole          Mode = "role"          // booted, role config, join, heartbeat
)

// Action is what mdc tells an agent to do next.
type Action string

// The actions.
const (
	ActionNone     Action = "none"     // carry on
	ActionWait     Action = "wait"     // nothing to do yet: heartbeat and ask again
	ActionReboot   Action = "reboot"   // reboot: the next network boot gets the machine's role image
	ActionPoweroff Action = "poweroff" // power off and stay off until someone powers it on
)

// Answer is mdc's reply to facts and heartbeats.
type Answer struct {
	Action Action `json:"action"`
	// Role is the machine's role, once it has one.
	Role string `json:"role,omitempty"`
	// Reason says why, for the console.
	Reason string `json:"reason,omitempty"`
	// HeartbeatSeconds is how often to send a heartbeat (and so to ask
	// again while waiting).
	HeartbeatSeconds int `json:"heartbeat_seconds"`
	// Event is the lifecycle event the request recorded (facts_reported).
	Event *Event `json:"event,omitempty"`
}

// Event identifies a stored lifecycle event.
type Event struct {
	ID   string            `json:"id"`
	Seq  uint64            `json:"seq"`
	Type machine.EventType `json:"type"`
}

// Recorded answers booted and joined: the event and the state after it.
type Recorded struct {
	Event Event         `json:"event"`
	State machine.State `json:"state"`
}

// The request bodies: POST facts takes machine.Facts, POST booted takes
// machine.BootedData, POST joined takes machine.JoinedData.

// Heartbeat is the body of POST heartbeat.
type Heartbeat struct {
	// Phase is where the agent is: commissioning, waiting, configuring,
	// joining, joined.
	Phase string `json:"phase"`
	// Status is one line for people: what the agent is doing, or what
	// failed last (a join hook's error). Never a secret.
	Status        string `json:"status,omitempty"`
	UptimeSeconds int64  `json:"uptime_seconds,omitempty"`
}

// Phases of an agent, as heartbeats report them.
const (
	PhaseCommissioning = "commissioning"
	PhaseWaiting       = "waiting"
	PhaseConfiguring   = "configuring"
	PhaseJoining       = "joining"
	PhaseJoined        = "joined"
)

// RoleConfig is the answer to GET config: what a role image's agent does
// to join its cluster.
type RoleConfig struct {
	Machine machine.ID `json:"machine"`
	Name    string     `json:"name,omitempty"`
	Role    string     `json:"role"`
	Image   string     `json:"image,omitempty"`
	// Files are written before the join hook runs.
	Files []File `json:"files,omitempty"`
	Join  Join   `json:"join"`
	// Evidence names the keys the join hook's output must have; they are
	// posted with joined.
	Evidence []string `json:"evidence,omitempty"`
	// Config is the role's own configuration, handed to the join hook as
	// a JSON file (MDC_ROLE_CONFIG, and its first argument).
	Config           json.RawMessage `json:"config,omitempty"`
	HeartbeatSeconds int             `json:"heartbeat_seconds"`
}

// File is one file the agent writes.
type File struct {
	Path    string `json:"path"`    // absolute, under one of the agent's allowed roots
	Mode    string `json:"mode"`    // octal, e.g. "0644"
	Content string `json:"content"` // text
}

// Join is the role's join step.
type Join struct {
	// Hook is the program the role image provides (e.g. /etc/mdc/join);
	// empty: the role has no join step.
	Hook           string `json:"hook,omitempty"`
	TimeoutSeconds int    `json:"timeout_seconds,omitempty"`
}

// Error is the body of every error answer.
type Error struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// Error codes of the agent API beside the API's common ones (unauthorized,
// invalid_value …). Stable: never renamed.
const (
	// CodeNoBoot: the machine is unknown, or has no current boot (it never
	// booted an image, failed, or was retired): no token is valid for it.
	CodeNoBoot = "no_boot"
	// CodeStaleToken: the token of an earlier boot of this machine.
	CodeStaleToken = "stale_token"
	// CodeTokenRefused: not the token of this machine's current boot.
	CodeTokenRefused = "token_refused"
	// CodeWrongMode: the request is for the other kind of boot (facts from
	// a role image, booted from the commissioning image).
	CodeWrongMode = "wrong_mode"
)
