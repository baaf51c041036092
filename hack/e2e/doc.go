// Package e2e holds mdc's end-to-end tests with real firmware: QEMU
// machines in a virtual rack (hack/vrack) network-booting from `mdc serve`.
// They need root and take minutes; they sit behind the e2e build tag:
//
//	go test -tags e2e -count=1 -v ./hack/e2e
package e2e
