package apiserver

import (
	"os/exec"
	"syscall"
)

// setDeathSignal makes the kernel kill the peer if the test process dies first.
func setDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
