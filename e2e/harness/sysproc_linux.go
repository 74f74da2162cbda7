package harness

import "syscall"

// sysProcAttr makes the kernel kill a test's processes if the test binary
// dies without cleaning up (a timeout panic, a SIGKILL).
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
