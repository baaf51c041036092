package dhcp

import (
	"net"
	"syscall"
)

// growBuffers gives the DHCP socket room for n bytes of queued packets each
// way. A burst of requests (a rack powering on, perfdhcp) overflows the
// default ~200 KiB receive buffer long before the server is busy: every
// overflow is a lost exchange and a client retry seconds later.
// SO_RCVBUFFORCE passes net.core.rmem_max when we have CAP_NET_ADMIN;
// otherwise the kernel's limit applies.
func growBuffers(c *net.UDPConn, n int) {
	if rc, err := c.SyscallConn(); err == nil {
		var rerr, werr error
		_ = rc.Control(func(fd uintptr) {
			rerr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUFFORCE, n)
			werr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUFFORCE, n)
		})
		if rerr == nil && werr == nil {
			return
		}
	}
	_ = c.SetReadBuffer(n)
	_ = c.SetWriteBuffer(n)
}
