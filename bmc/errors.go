package bmc

import (
	"errors"
	"strings"
)

// Kind classifies a BMC failure by what the operator should check.
type Kind int

// Kinds of failure.
const (
	Failed      Kind = iota // the BMC answered but refused or failed the request
	Unreachable             // nothing answers at the BMC's address
	AuthFailed              // the BMC rejected the user or password
	Unsupported             // the BMC or protocol cannot do this
	BootNotHeld             // the BMC accepted a boot override but did not keep it
	Timeout                 // the BMC did not answer within Options.Timeout
)

func (k Kind) String() string {
	switch k {
	case Unreachable:
		return "unreachable"
	case AuthFailed:
		return "authentication failed"
	case Unsupported:
		return "unsupported"
	case BootNotHeld:
		return "boot override not held"
	case Timeout:
		return "timeout"
	default:
		return "failed"
	}
}

// hint says what to check for a kind of failure.
func (k Kind) hint() string {
	switch k {
	case Unreachable:
		return "check the BMC address and port, and that this host can reach the BMC network"
	case AuthFailed:
		return "check the BMC user and the password file"
	case Timeout:
		return "the BMC did not answer in time; check it is up and not overloaded"
	case BootNotHeld:
		return "the BMC answered but dropped the PXE boot override; check its firmware or set PXE first in the boot order"
	}
	return ""
}

// Sentinels for errors.Is: errors.Is(err, ErrAuthFailed) holds for any
// *Error of Kind AuthFailed.
var (
	ErrFailed      = &Error{Kind: Failed}
	ErrUnreachable = &Error{Kind: Unreachable}
	ErrAuthFailed  = &Error{Kind: AuthFailed}
	ErrUnsupported = &Error{Kind: Unsupported}
	ErrBootNotHeld = &Error{Kind: BootNotHeld}
	ErrTimeout     = &Error{Kind: Timeout}
)

// Error is a failed BMC operation.
type Error struct {
	BMC  string // the endpoint URL; never credentials
	Op   string // "power status", "power on", "set next boot pxe", ...
	Kind Kind
	Err  error

	secret string // redacted from Error(), in case a library echoed it
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("bmc")
	if e.BMC != "" {
		b.WriteString(" " + e.BMC)
	}
	if e.Op != "" {
		b.WriteString(": " + e.Op)
	}
	b.WriteString(": " + e.Kind.String())
	if e.Err != nil {
		b.WriteString(": " + e.Err.Error())
	}
	if h := e.Kind.hint(); h != "" {
		b.WriteString(" (" + h + ")")
	}
	s := b.String()
	if len(e.secret) >= 4 {
		s = strings.ReplaceAll(s, e.secret, "[redacted]")
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// Is matches the sentinels by Kind.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	if !ok {
		return false
	}
	return t.BMC == "" && t.Op == "" && t.Err == nil && t.Kind == e.Kind
}

// KindOf returns the Kind of err, or Failed if err is not an *Error.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return Failed
}
