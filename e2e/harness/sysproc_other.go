//go:build unix && !linux

package harness

import "syscall"

// sysProcAttr is nil where the kernel cannot kill a test's processes when
// the test binary dies.
func sysProcAttr() *syscall.SysProcAttr { return nil }
