package bench

import (
	"fmt"
	"os"
	"runtime"
	"strings"
)

// Machine is what a latency figure depends on besides the code: the CPUs
// and how busy other processes kept them.
type Machine struct {
	CPUs       int
	GOMAXPROCS int
	// LoadAvg is the 1, 5 and 15 minute load average ("" where unknown).
	LoadAvg string
}

// ThisMachine describes the machine now.
func ThisMachine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), GOMAXPROCS: runtime.GOMAXPROCS(0)}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) >= 3 {
			m.LoadAvg = strings.Join(f[:3], " ")
		}
	}
	return m
}

func (m Machine) String() string {
	s := fmt.Sprintf("%d CPUs, GOMAXPROCS %d", m.CPUs, m.GOMAXPROCS)
	if m.LoadAvg != "" {
		s += ", load average " + m.LoadAvg + " at the start"
	}
	return s
}
