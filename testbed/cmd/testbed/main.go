// Command testbed is every real Kubernetes component the tests need, in one binary
// (one build, one link): `testbed up` starts a cluster of them on loopback, and
// `testbed etcd|kube-apiserver|kube-controller-manager|kube-scheduler` is that component.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"canaryd.dev/testbed/internal/kubelet"
	"canaryd.dev/testbed/internal/launch"

	"go.etcd.io/etcd/server/v3/etcdmain"
	"k8s.io/component-base/cli"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: testbed up|etcd|kube-apiserver|kube-controller-manager|kube-scheduler [flags]")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "up":
		flags := flag.NewFlagSet("up", flag.ExitOnError)
		var opts launch.Options
		flags.StringVar(&opts.Dir, "dir", "", "folder for the cluster's files (default: a new temporary folder, removed at exit)")
		flags.StringVar(&opts.Images, "images", "", "JSON image table: image name -> {command, env} the kubelet runs")
		flags.StringVar(&opts.PodNetwork, "pod-network", "10.244", "first two octets of the Pod /16 (its .0.1 is the node's bridge)")
		flags.Parse(os.Args[2:])
		if err := launch.Up(opts); err != nil {
			fmt.Fprintln(os.Stderr, "testbed:", err)
			os.Exit(1)
		}
	case "pause":
		// A pod sandbox's holder: keeps the pod's network namespace until killed.
		stop := make(chan os.Signal, 1)
		signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
		<-stop
	case "mount-exec":
		if err := kubelet.MountExec(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "testbed:", err)
			os.Exit(127)
		}
	case "etcd":
		etcdmain.Main(append([]string{"etcd"}, os.Args[2:]...))
	case "kube-apiserver":
		cmd := apiserver.NewAPIServerCommand()
		cmd.SetArgs(os.Args[2:])
		os.Exit(cli.Run(cmd))
	case "kube-controller-manager":
		cmd := controllermanager.NewControllerManagerCommand()
		cmd.SetArgs(os.Args[2:])
		os.Exit(cli.Run(cmd))
	case "kube-scheduler":
		cmd := scheduler.NewSchedulerCommand()
		cmd.SetArgs(os.Args[2:])
		os.Exit(cli.Run(cmd))
	default:
		fmt.Fprintf(os.Stderr, "unknown component %q\n", os.Args[1])
		os.Exit(2)
	}
}
