// Package redfish is the Redfish service of mdc's virtual rack: the BMC that
// the rack puts in front of each QEMU machine, so that mdc's bmc package,
// bmclib (gofish) and DMTF's redfishtool drive a virtual machine exactly as
// they drive a server's BMC.
//
// A Service presents one or more Systems (the rack backs each with a QEMU
// process over QMP; tests use Memory) in the shape of DMTF's
// public-rackmount1 mockup: the service root, SessionService with sessions
// (X-Auth-Token and Location; Basic auth works too), Systems with PowerState,
// Boot override and its allowable values, the ComputerSystem.Reset action,
// EthernetInterfaces carrying the machine's real MACs, and one Manager and
// one Chassis per system, all sharing the system's id. Every GET carries an
// ETag; PATCH honours If-Match. Errors are what a real BMC answers (401, 404,
// 405, 412, 400) with a Redfish error body citing the mockup's Base.1.5.0
// message registry.
//
// The service is held to the mockup by contract_test.go: for every resource
// served that has a counterpart in
// ../shared/redfish/mockups/public-rackmount1, the properties a client needs
// must be present, every property shared with the mockup must carry the
// mockup's JSON type, and @odata.type must name the mockup's schema version.
// Real clients (redfishtool, bmclib's gofish provider) are run against it in
// the tests too.
package redfish
