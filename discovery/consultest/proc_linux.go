package consultest

import (
	"os/exec"
	"syscall"
)

// setDeathSignal makes the kernel kill the agent if the test process dies first.
func setDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
