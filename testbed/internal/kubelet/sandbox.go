package kubelet

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
)

// The node's network, as a CNI bridge plugin makes it: a bridge holding the gateway
// address of the Pod /16, and for every pod a network namespace of its own (held open by
// a pause process, as a container runtime's sandbox) joined to the bridge by a veth pair.
// Pods bind whatever address and port they like (two replicas both on 0.0.0.0:8080),
// reach each other and the host through the bridge, and the API server through a
// forwarder on the gateway address.

const bridge = "cbr0"

// Gateway is the node's address on the Pod network.
func Gateway(network string) string { return network + ".0.1" }

func run(argv ...string) error {
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// setupNode makes the bridge and starts forwarding the gateway's API server port to the
// API server on loopback, until ctx ends.
func (k *Kubelet) setupNode(ctx context.Context) error {
	gw := Gateway(k.cfg.Network)
	for _, step := range [][]string{
		{"ip", "link", "add", bridge, "type", "bridge"},
		{"ip", "addr", "add", gw + "/16", "dev", bridge},
		{"ip", "link", "set", bridge, "up"},
	} {
		if err := run(step...); err != nil {
			return fmt.Errorf("node network (run the test bed in a network namespace of its own, as root): %w", err)
		}
	}
	server, err := url.Parse(k.cfg.Server)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(gw, server.Port()))
	if err != nil {
		return fmt.Errorf("API server forwarder: %w", err)
	}
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go forward(c, server.Host)
		}
	}()
	return nil
}

func forward(c net.Conn, to string) {
	defer c.Close()
	up, err := net.Dial("tcp", to)
	if err != nil {
		return
	}
	defer up.Close()
	done := make(chan struct{}, 2)
	go func() { io.Copy(up, c); up.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
	go func() { io.Copy(c, up); c.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
	<-done
	<-done
}

// podServer is the API server's URL as pods reach it: on the gateway.
func (k *Kubelet) podServer() string {
	server, err := url.Parse(k.cfg.Server)
	if err != nil {
		return k.cfg.Server
	}
	server.Host = net.JoinHostPort(Gateway(k.cfg.Network), server.Port())
	return server.String()
}

// sandbox is one pod's network namespace with the pod's address on eth0.
type sandbox struct {
	pause *exec.Cmd
	netns string
}

func newSandbox(ip, gateway, veth string) (*sandbox, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	pause := exec.Command(self, "pause")
	pause.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	if err := pause.Start(); err != nil {
		return nil, fmt.Errorf("pause process: %w", err)
	}
	s := &sandbox{pause: pause, netns: "/proc/" + strconv.Itoa(pause.Process.Pid) + "/ns/net"}
	in := func(argv ...string) []string { return append([]string{"nsenter", "--net=" + s.netns, "--"}, argv...) }
	for _, step := range [][]string{
		{"ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", strconv.Itoa(pause.Process.Pid)},
		{"ip", "link", "set", veth, "master", bridge, "up"},
		in("ip", "link", "set", "lo", "up"),
		in("ip", "addr", "add", ip+"/16", "dev", "eth0"),
		in("ip", "link", "set", "eth0", "up"),
		in("ip", "route", "add", "default", "via", gateway),
	} {
		if err := run(step...); err != nil {
			s.close()
			return nil, fmt.Errorf("pod network: %w", err)
		}
	}
	return s, nil
}

// close ends the pause process: the namespace goes, and its veth pair with it.
func (s *sandbox) close() {
	s.pause.Process.Kill()
	s.pause.Wait()
}

// command runs argv inside the sandbox's network namespace and a mount namespace of its
// own in which each bind (volume folder → mount path) is mounted, as a runtime mounts a
// container's volumes: the program finds its files where the Pod spec says.
func (s *sandbox) command(binds [][2]string, argv []string) (*exec.Cmd, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	args := []string{"--net=" + s.netns, "--", self, "mount-exec"}
	for _, b := range binds {
		args = append(args, "--bind="+b[0]+":"+b[1])
	}
	args = append(append(args, "--"), argv...)
	cmd := exec.Command("nsenter", args...)
	// A private mount namespace (Go also makes / private in it): the binds stay there.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Unshareflags: syscall.CLONE_NEWNS}
	return cmd, nil
}

// MountExec is `testbed mount-exec --bind=SRC:DST... -- PROGRAM ARGS...`: bind-mounts
// each SRC on DST (creating DST) in the current mount namespace, then runs PROGRAM in
// this process.
func MountExec(args []string) error {
	for len(args) > 0 && args[0] != "--" {
		bind, ok := strings.CutPrefix(args[0], "--bind=")
		src, dst, found := strings.Cut(bind, ":")
		if !ok || !found {
			return fmt.Errorf("mount-exec: bad argument %q", args[0])
		}
		info, err := os.Stat(src)
		if err != nil {
			return err
		}
		if info.IsDir() {
			err = os.MkdirAll(dst, 0o755)
		} else if err = os.MkdirAll(dst[:strings.LastIndex(dst, "/")+1], 0o755); err == nil {
			var f *os.File
			if f, err = os.OpenFile(dst, os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
				f.Close()
			}
		}
		if err != nil {
			return fmt.Errorf("mount point %s: %w", dst, err)
		}
		if err := syscall.Mount(src, dst, "", syscall.MS_BIND|syscall.MS_REC, ""); err != nil {
			return fmt.Errorf("bind %s on %s: %w", src, dst, err)
		}
		args = args[1:]
	}
	if len(args) < 2 {
		return fmt.Errorf("mount-exec: no program")
	}
	program, err := exec.LookPath(args[1])
	if err != nil {
		return err
	}
	return syscall.Exec(program, args[1:], os.Environ())
}
