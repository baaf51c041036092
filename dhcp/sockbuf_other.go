//go:build !linux

package dhcp

import "net"

// growBuffers: see sockbuf_linux.go.
func growBuffers(c *net.UDPConn, n int) {
	_ = c.SetReadBuffer(n)
	_ = c.SetWriteBuffer(n)
}
