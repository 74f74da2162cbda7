//go:build linux

package fault

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/cachebus/cachebus/e2e/harness"
)

// netLab is the hosts of TestNetworkPartition: network namespaces, each
// with two links.
//
//   - Its cluster link (eth0, 10.77.X.n/24) plugs into a bridge that lives
//     in a namespace of its own, the switch. NATS clients and routes use
//     it, and cutting a host off means setting its port on the switch
//     down. The switch has its own namespace rather than the root one
//     because a bridge in the root namespace passes its frames through the
//     root's iptables (bridge-nf-call-iptables), whose FORWARD policy a
//     Docker engine sets to DROP; a new namespace has no rules.
//   - Its management link (eth1, 10.78.X.4n+2/30) is a veth pair straight
//     to the root namespace, where the test runs: the HTTP APIs listen on
//     it, so that the test reaches every host, the cut-off one included,
//     as an operator's out-of-band network would. Hosts have no default
//     route and the links no bridge, so no host reaches another through
//     it.
//
// The test process reaches the cluster network through its own port on
// the switch (10.77.X.254). Every name starts with "cb<pid>" (the
// namespaces with "cachebus-<pid>-"), and X is a third octet no address of
// the root namespace uses, so that runs side by side do not meet.
type netLab struct {
	t      testing.TB
	ipPath string
	tag    string // cb<pid>: the prefix of the links made in the root namespace
	octet  int    // X
	sw     string // the switch's namespace
	hosts  []*labHost

	namespaces []string // made so far, to delete
	rootLinks  []string // made so far in the root namespace, to delete
}

// labHost is one host of a netLab.
type labHost struct {
	NS   string // its namespace
	Addr string // its cluster address: NATS listens there
	Mgmt string // its management address: the HTTP APIs listen there
	port string // its port on the switch, in the switch's namespace
}

// newNetLab makes n hosts and their switch, deleted when the test ends.
// An error says why namespaces cannot be made here: the caller skips.
func newNetLab(t testing.TB, n int) (*netLab, error) {
	t.Helper()
	ipPath, err := exec.LookPath("ip")
	if err != nil {
		return nil, fmt.Errorf("no ip command (iproute2): %w", err)
	}
	octet, err := freeOctet()
	if err != nil {
		return nil, err
	}
	pid := os.Getpid()
	l := &netLab{t: t, ipPath: ipPath, tag: fmt.Sprintf("cb%d", pid), octet: octet,
		sw: fmt.Sprintf("cachebus-%d-switch", pid)}
	// Registered before any process starts, so it runs after the harness
	// has killed them all (cleanups run last in, first out).
	t.Cleanup(l.remove)
	if err := l.addNamespace(l.sw); err != nil {
		return nil, err
	}
	steps := [][]string{
		{"-n", l.sw, "link", "set", "lo", "up"},
		{"-n", l.sw, "link", "add", "br0", "type", "bridge"},
		{"-n", l.sw, "link", "set", "br0", "up"},
	}
	for i := 1; i <= n; i++ {
		h := &labHost{
			NS:   fmt.Sprintf("cachebus-%d-h%d", pid, i),
			Addr: fmt.Sprintf("10.77.%d.%d", octet, i),
			Mgmt: fmt.Sprintf("10.78.%d.%d", octet, 4*i+2),
			port: fmt.Sprintf("h%d", i),
		}
		if err := l.addNamespace(h.NS); err != nil {
			return nil, err
		}
		mgmt := fmt.Sprintf("%sm%d", l.tag, i)
		l.rootLinks = append(l.rootLinks, mgmt)
		steps = append(steps,
			[]string{"-n", h.NS, "link", "set", "lo", "up"},
			[]string{"-n", l.sw, "link", "add", h.port, "type", "veth", "peer", "name", "eth0", "netns", h.NS},
			[]string{"-n", l.sw, "link", "set", h.port, "master", "br0", "up"},
			[]string{"-n", h.NS, "addr", "add", h.Addr + "/24", "dev", "eth0"},
			[]string{"-n", h.NS, "link", "set", "eth0", "up"},
			[]string{"link", "add", mgmt, "type", "veth", "peer", "name", "eth1", "netns", h.NS},
			[]string{"addr", "add", fmt.Sprintf("10.78.%d.%d/30", octet, 4*i+1), "dev", mgmt},
			[]string{"link", "set", mgmt, "up"},
			[]string{"-n", h.NS, "addr", "add", h.Mgmt + "/30", "dev", "eth1"},
			[]string{"-n", h.NS, "link", "set", "eth1", "up"},
		)
		l.hosts = append(l.hosts, h)
	}
	root := l.tag + "r"
	l.rootLinks = append(l.rootLinks, root)
	steps = append(steps,
		[]string{"link", "add", root, "type", "veth", "peer", "name", "root", "netns", l.sw},
		[]string{"-n", l.sw, "link", "set", "root", "master", "br0", "up"},
		[]string{"addr", "add", fmt.Sprintf("10.77.%d.254/24", octet), "dev", root},
		[]string{"link", "set", root, "up"},
	)
	for _, s := range steps {
		if err := l.ip(s...); err != nil {
			return nil, err
		}
	}
	return l, nil
}

// freeOctet picks X such that no address of the root namespace is in
// 10.77.X.0/24 or 10.78.X.0/24, starting from one the pid gives.
func freeOctet() (int, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return 0, fmt.Errorf("addresses of the root namespace: %w", err)
	}
	used := map[int]bool{}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok {
			if ip := ipn.IP.To4(); ip != nil && ip[0] == 10 && (ip[1] == 77 || ip[1] == 78) {
				used[int(ip[2])] = true
			}
		}
	}
	start := os.Getpid()
	for i := range 200 {
		if x := 20 + (start+i)%200; !used[x] {
			return x, nil
		}
	}
	return 0, errors.New("no free 10.77.X.0/24 and 10.78.X.0/24 for the hosts")
}

// addNamespace makes namespace ns and remembers to delete it.
func (l *netLab) addNamespace(ns string) error {
	if err := l.ip("netns", "add", ns); err != nil {
		return err
	}
	l.namespaces = append(l.namespaces, ns)
	return nil
}

// ip runs the ip command with args, bounded in time; the error carries its
// output.
func (l *netLab) ip(args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, l.ipPath, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// remove deletes the links of the root namespace and the namespaces (with
// the links in them, whose peers go too).
func (l *netLab) remove() {
	for _, link := range l.rootLinks {
		// Gone already when its peer's namespace was never made.
		if err := l.ip("link", "del", link); err != nil && !strings.Contains(err.Error(), "Cannot find device") {
			l.t.Logf("network lab: %v", err)
		}
	}
	for _, ns := range l.namespaces {
		if err := l.ip("netns", "del", ns); err != nil {
			l.t.Errorf("network lab: %v", err)
		}
	}
}

// setPort sets host h's port on the switch up or down: "down" cuts the
// host off the cluster network, as a pulled cable does; its management
// link stays.
func (l *netLab) setPort(h *labHost, state string) {
	l.t.Helper()
	if err := l.ip("-n", l.sw, "link", "set", h.port, state); err != nil {
		l.t.Fatal(err)
	}
}

// start runs cachebus with args inside host h's namespace. `ip netns
// exec` execs the program in place, so the process the harness holds, and
// signals, is cachebus itself.
func (l *netLab) start(t testing.TB, h *labHost, name string, env map[string]string, args ...string) *harness.Proc {
	t.Helper()
	return harness.StartBinary(t, l.ipPath, name, env,
		append([]string{"netns", "exec", h.NS, harn.Binaries().Cachebus}, args...)...)
}
