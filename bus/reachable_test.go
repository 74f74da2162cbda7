package bus

import (
	"net"
	"os"
	"testing"
)

// TestReachable: a listener on every interface is announced by the host
// name, any other by its own address.
func TestReachable(t *testing.T) {
	host, err := os.Hostname()
	if err != nil {
		t.Skipf("no host name: %v", err)
	}
	tests := []struct {
		addr net.Addr
		want string
	}{
		{&net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 3000}, "127.0.0.1:3000"},
		{&net.TCPAddr{IP: net.ParseIP("10.1.2.3"), Port: 80}, "10.1.2.3:80"},
		{&net.TCPAddr{IP: net.ParseIP("::1"), Port: 8080}, "[::1]:8080"},
		{&net.TCPAddr{IP: net.IPv4zero, Port: 8080}, net.JoinHostPort(host, "8080")},
		{&net.TCPAddr{IP: net.IPv6unspecified, Port: 8080}, net.JoinHostPort(host, "8080")},
		{&net.UnixAddr{Name: "/run/app.sock", Net: "unix"}, "/run/app.sock"},
	}
	for _, tc := range tests {
		if got := Reachable(tc.addr); got != tc.want {
			t.Errorf("Reachable(%s) = %q, want %q", tc.addr, got, tc.want)
		}
	}
}
