// Command k8s-e2e is a single binary holding a local Kubernetes control plane for DataStream's
// end-to-end tests and demo: the official kube-apiserver, kube-controller-manager, kube-scheduler
// and kubectl, plus embedded etcd, all built from the upstream Go modules.
//
// Usage:
//
//	k8s-e2e up --state DIR [--advertise-address 10.244.0.1]   start the whole control plane
//	k8s-e2e kubectl ...                                       upstream kubectl
//	k8s-e2e kube-apiserver|kube-controller-manager|kube-scheduler ...
//	                                                          upstream component commands (used by `up`)
//	k8s-e2e version                                           print the stamped Kubernetes version
//
// Invoked through a link named kubectl (or kube-apiserver, ...), the binary behaves as that command.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	"k8s.io/component-base/version"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserverapp "k8s.io/kubernetes/cmd/kube-apiserver/app"
	kcmapp "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	schedulerapp "k8s.io/kubernetes/cmd/kube-scheduler/app"

	// Client auth plugins, as in upstream kubectl's main package.
	_ "k8s.io/client-go/plugin/pkg/client/auth"
)

const usage = `k8s-e2e: local Kubernetes control plane for DataStream e2e tests

Subcommands:
  up --state DIR [flags]     run etcd, kube-apiserver, kube-controller-manager, kube-scheduler
                             (see 'k8s-e2e up --help')
  kubectl ...                kubectl (also when invoked through a link named 'kubectl')
  kube-apiserver ...         upstream kube-apiserver command
  kube-controller-manager ...upstream kube-controller-manager command
  kube-scheduler ...         upstream kube-scheduler command
  version                    print the Kubernetes version this binary was stamped with
`

func main() {
	name := strings.TrimSuffix(filepath.Base(os.Args[0]), ".exe")
	if name == "k8s-e2e" || !isSubcommand(name) {
		if len(os.Args) < 2 {
			fmt.Fprint(os.Stderr, usage)
			os.Exit(2)
		}
		name = os.Args[1]
		// Every upstream command reads os.Args (cobra, kubectl's plugin lookup), so present the
		// subcommand as if it were the program itself.
		os.Args = append([]string{name}, os.Args[2:]...)
	}
	os.Exit(run(name))
}

func isSubcommand(name string) bool {
	switch name {
	case "up", "kubectl", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "version":
		return true
	}
	return false
}

func run(name string) int {
	switch name {
	case "up":
		return runUp(os.Args[1:])
	case "kubectl":
		return runKubectl()
	case "kube-apiserver":
		// The command installs the process-wide signal handler when constructed, which is one
		// reason each component runs in its own process (see up.go).
		return cli.Run(apiserverapp.NewAPIServerCommand())
	case "kube-controller-manager":
		return cli.Run(kcmapp.NewControllerManagerCommand())
	case "kube-scheduler":
		return cli.Run(schedulerapp.NewSchedulerCommand())
	case "version":
		fmt.Println(version.Get().GitVersion)
		return 0
	case "-h", "--help", "help":
		fmt.Print(usage)
		return 0
	default:
		fmt.Fprintf(os.Stderr, "k8s-e2e: unknown subcommand %q\n\n%s", name, usage)
		return 2
	}
}

// runKubectl mirrors upstream cmd/kubectl/kubectl.go.
func runKubectl() int {
	// Verbosity must be known before the command is built (kuberc and plugin handling log).
	_, _ = logs.GlogSetter(kubectlcmd.GetLogVerbosity(os.Args))
	command := kubectlcmd.NewDefaultKubectlCommand()
	if err := cli.RunNoErrOutput(command); err != nil {
		kubectlutil.CheckErr(err)
		return 1
	}
	return 0
}
