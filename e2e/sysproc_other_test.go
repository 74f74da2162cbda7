//go:build unix && !linux

package e2e

import "syscall"

func sysProcAttr() *syscall.SysProcAttr { return nil }
