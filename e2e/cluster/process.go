package main

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// child is one control-plane component running as a re-exec of this binary.
type child struct {
	name string
	cmd  *exec.Cmd
	log  *os.File
	done chan struct{}
	err  error // valid once done is closed
}

// startChild runs `<self> <name> args...` with stdout and stderr appended to logPath.
func startChild(name string, args []string, logPath string) (*child, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(f, "\n==== %s starting %s %v\n", time.Now().Format(time.RFC3339), name, args)
	cmd := exec.Command(self, append([]string{name}, args...)...)
	cmd.Stdout = f
	cmd.Stderr = f
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// Own process group: a terminal's Ctrl-C reaches only the supervisor, which then stops the
		// components in dependency order.
		Setpgid: true,
		// If the supervisor dies without cleaning up (SIGKILL), the components die with it rather
		// than holding port 6443.
		Pdeathsig: syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, log: f, done: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		f.Close()
		close(c.done)
	}()
	return c, nil
}

// stop sends SIGTERM, waits up to grace for a clean exit, then SIGKILLs.
func (c *child) stop(grace time.Duration) {
	select {
	case <-c.done:
		return
	default:
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
		logf("%s stopped (%v)", c.name, c.err)
	case <-time.After(grace):
		logf("%s did not stop within %s; killing it", c.name, grace)
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

func logf(format string, args ...any) {
	fmt.Printf("%s k8s-e2e: %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}
