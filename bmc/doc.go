// Package bmc drives machines' baseboard management controllers: power
// status and control, next boot device PXE with a read-back, and the
// inventory a BMC can tell (MACs, serial, UUID). It speaks Redfish and IPMI
// through bmclib, one provider per BMC chosen from its URL, never by probing.
//
// Every call to a BMC has a timeout; calls to one BMC are serialized and
// spaced by a minimum interval, because BMCs freeze under bursts. Errors are
// *Error values whose Kind says what to check (errors.Is(err, ErrAuthFailed)).
// Passwords never reach a log line, an error string or a command line.
package bmc
