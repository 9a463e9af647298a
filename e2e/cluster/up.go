package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// runUp starts the control plane and supervises it until SIGTERM/SIGINT.
//
// Design: etcd is embedded in this supervisor process; kube-apiserver, kube-controller-manager and
// kube-scheduler each run as a re-exec of this same binary through their upstream cobra commands.
// Running them as goroutines of one process is possible (k3s does it) but they share process-wide
// state: the apiserver command installs the global signal handler when it is constructed (a second
// install panics), all of them register in the same legacy Prometheus registry (so the apiserver's
// /metrics would mix in controller metrics), share DefaultFeatureGate and klog's global flags and
// output. Separate processes keep upstream's exact flag handling and shutdown paths, give every
// component its own log file, and cost only memory; the binary on disk is shared.
func runUp(args []string) int {
	o, err := parseUpFlags(args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(os.Stderr, "k8s-e2e up: %v\n", err)
		return 2
	}
	if err := up(o); err != nil {
		logf("FAILED: %v", err)
		return 1
	}
	return 0
}

func parseUpFlags(args []string) (options, error) {
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	state := fs.String("state", "", "state directory (pki, etcd data, kubeconfig, logs); required")
	advertise := fs.String("advertise-address", "10.244.0.1", "address the apiserver advertises and the admin kubeconfig dials; must be on a local interface")
	bind := fs.String("bind-address", "0.0.0.0", "address the apiserver listens on")
	port := fs.Int("secure-port", 6443, "apiserver HTTPS port")
	svc := fs.String("service-cidr", "10.96.0.0/16", "Service ClusterIP range")
	keep := fs.Bool("keep-data", false, "keep the etcd data of a previous run instead of starting from an empty cluster")
	pid := fs.String("pid-file", "", "write this process's pid to the file while running")
	v := fs.Int("v", 1, "klog verbosity of the components")
	if err := fs.Parse(args); err != nil {
		return options{}, err
	}
	if fs.NArg() > 0 {
		return options{}, fmt.Errorf("unexpected arguments %v", fs.Args())
	}
	if *state == "" {
		return options{}, errors.New("--state is required")
	}
	abs, err := filepath.Abs(*state)
	if err != nil {
		return options{}, err
	}
	ip := net.ParseIP(*advertise)
	if ip == nil || ip.IsLoopback() || ip.IsUnspecified() {
		// The apiserver's endpoint reconciler rejects loopback addresses for the `kubernetes` Service.
		return options{}, fmt.Errorf("--advertise-address %q must be a non-loopback IP", *advertise)
	}
	_, cidr, err := net.ParseCIDR(*svc)
	if err != nil {
		return options{}, fmt.Errorf("--service-cidr: %w", err)
	}
	first := make(net.IP, len(cidr.IP))
	copy(first, cidr.IP)
	first[len(first)-1]++
	return options{
		state: abs, advertise: ip, bindAddress: *bind, securePort: *port, serviceCIDR: cidr,
		firstServiceIP: first, keepData: *keep, pidFile: *pid, verbosity: *v,
	}, nil
}

func up(o options) error {
	started := time.Now()
	l := layout{state: o.state}
	for _, d := range []string{o.state, l.logs(), filepath.Dir(l.config("x"))} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	unlock, err := lockState(l)
	if err != nil {
		return err
	}
	defer unlock()
	_ = os.Remove(l.readyFile())
	if o.pidFile != "" {
		if err := os.WriteFile(o.pidFile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
			return err
		}
		defer removeIfOurs(o.pidFile)
	}
	if err := checkLocalAddress(o.advertise); err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	if err := writeConfigs(o, l); err != nil {
		return err
	}
	if !o.keepData {
		if err := os.RemoveAll(l.etcdData()); err != nil {
			return err
		}
	}
	// Deferred before the components' stop, so it runs after they exited.
	if err := prepareVolumes(l, o.keepData); err != nil {
		return fmt.Errorf("volumes: %w", err)
	}
	defer unlinkProvisionerDir(hostPathProvisionerDir, l.volumes())
	etcd, etcdURL, err := startEtcd(l.etcdData(), l.log("etcd"))
	if err != nil {
		return err
	}
	defer func() {
		etcd.Close()
		logf("etcd stopped")
	}()
	logf("etcd ready at %s (%s)", etcdURL, since(started))

	// Every component that exits before shutdown is reported here; the supervisor then stops the
	// rest and fails, rather than leaving a half-working cluster that tests would misread.
	failed := make(chan *child, 4)
	var children []*child
	defer func() {
		_ = os.Remove(l.readyFile())
		// Reverse start order: clients of the apiserver first, the apiserver last.
		for i := len(children) - 1; i >= 0; i-- {
			grace := 15 * time.Second
			if children[i].name == "kube-apiserver" {
				grace = 30 * time.Second
			}
			children[i].stop(grace)
		}
	}()
	start := func(name string, args []string) error {
		c, err := startChild(name, args, l.log(name))
		if err != nil {
			return err
		}
		children = append(children, c)
		go func() {
			<-c.done
			if ctx.Err() == nil {
				failed <- c
			}
		}()
		logf("%s started (pid %d, log %s)", name, c.cmd.Process.Pid, l.log(name))
		return nil
	}

	if err := start("kube-apiserver", apiserverArgs(o, l, etcdURL)); err != nil {
		return err
	}
	cs, err := adminClient(l.adminKubeconfig())
	if err != nil {
		return err
	}
	waitCtx, cancel := context.WithTimeout(ctx, 120*time.Second)
	defer cancel()
	if err := waitFor(waitCtx, "kube-apiserver /readyz", failed, apiserverReady(cs)); err != nil {
		return shutdownOr(ctx, err)
	}
	logf("kube-apiserver ready at %s (%s)", o.advertisedServer(), since(started))
	if err := waitFor(waitCtx, "storage classes", failed, ensureStorageClasses(cs)); err != nil {
		return shutdownOr(ctx, err)
	}
	logf("storage classes %s (default) and %s applied; volumes in %s (linked from %s)",
		defaultStorageClass, expandableStorageClass, l.volumes(), hostPathProvisionerDir)

	if err := start("kube-controller-manager", controllerManagerArgs(o, l)); err != nil {
		return err
	}
	if err := start("kube-scheduler", schedulerArgs(o, l)); err != nil {
		return err
	}
	if err := waitFor(waitCtx, "default ServiceAccount and kube-root-ca.crt", failed, workloadsReady(cs)); err != nil {
		return shutdownOr(ctx, err)
	}
	msg := fmt.Sprintf("ready %s pid=%d server=%s kubeconfig=%s\n",
		time.Now().UTC().Format(time.RFC3339), os.Getpid(), o.advertisedServer(), l.adminKubeconfig())
	if err := writeFileAtomic(l.readyFile(), []byte(msg), 0o644); err != nil {
		return err
	}
	logf("control plane ready (%s); kubeconfig %s", since(started), l.adminKubeconfig())

	select {
	case <-ctx.Done():
		logf("signal received; stopping")
		return nil
	case c := <-failed:
		return fmt.Errorf("%s exited unexpectedly: %v (see %s)", c.name, c.err, l.log(c.name))
	}
}

// shutdownOr turns a wait aborted by a signal into a clean stop.
func shutdownOr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		logf("signal received during start-up; stopping")
		return nil
	}
	return err
}

func since(t time.Time) string { return time.Since(t).Round(10 * time.Millisecond).String() }

// checkLocalAddress fails early when the advertise address is not assigned here: the apiserver
// would start, but nothing could reach it through the written kubeconfig.
func checkLocalAddress(ip net.IP) error {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return err
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.Equal(ip) {
			return nil
		}
	}
	return fmt.Errorf("advertise address %s is not assigned to any interface in this network namespace "+
		"(run inside the dse2e netns: e2e/scripts/cluster-up.sh)", ip)
}

// lockState holds an exclusive lock on the state directory so two supervisors never share etcd
// data or overwrite each other's certificates.
func lockState(l layout) (func(), error) {
	path := l.config("lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("another k8s-e2e up is using %s (%v)", l.state, err)
	}
	return func() { f.Close() }, nil
}

func removeIfOurs(path string) {
	data, err := os.ReadFile(path)
	if err == nil && strings.TrimSpace(string(data)) == strconv.Itoa(os.Getpid()) {
		_ = os.Remove(path)
	}
}
