package kubelet

import (
	"context"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// container is one running (or restarting) process of a pod.
type container struct {
	spec      corev1.Container
	image     Image
	cmd       *exec.Cmd
	exited    chan struct{}
	running   bool
	ready     bool
	startedAt metav1.Time
	restarts  int32
	lastExit  *int32
	waiting   string
}

// pod is the kubelet's side of one Pod: its address, folder, processes and status.
type pod struct {
	k       *Kubelet
	obj     *corev1.Pod
	ip      string
	dir     string
	start   metav1.Time
	sandbox *sandbox

	mu          sync.Mutex
	containers  []*container
	terminating bool
	stopped     bool
	env         []string
	dirty       chan struct{}
	stopProbes  context.CancelFunc
	done        chan struct{}
	terminateAt chan time.Duration
}

func newPod(k *Kubelet, obj *corev1.Pod, ip string) *pod {
	p := &pod{
		k: k, obj: obj, ip: ip, start: metav1.Now(),
		dir:         filepath.Join(k.cfg.Dir, obj.Namespace+"_"+obj.Name+"_"+string(obj.UID)[:8]),
		dirty:       make(chan struct{}, 1),
		done:        make(chan struct{}),
		terminateAt: make(chan time.Duration, 1),
	}
	for _, c := range obj.Spec.Containers {
		p.containers = append(p.containers, &container{spec: c, image: k.cfg.Images[c.Image]})
	}
	return p
}

func (p *pod) logf(format string, args ...any) {
	log.Printf("kubelet: pod %s/%s: %s", p.obj.Namespace, p.obj.Name, fmt.Sprintf(format, args...))
}

// failAll marks every container as waiting for `reason` and reports it.
func (p *pod) failAll(reason string) {
	p.mu.Lock()
	for _, c := range p.containers {
		c.waiting = reason
	}
	p.mu.Unlock()
	p.markDirty()
}

func (p *pod) markDirty() {
	select {
	case p.dirty <- struct{}{}:
	default:
	}
}

// run starts the containers and supervises the pod until it is terminated.
func (p *pod) run(ctx context.Context) {
	defer close(p.done)
	go p.writeStatus(ctx)
	if err := os.MkdirAll(p.dir, 0o755); err != nil {
		p.logf("folder: %v", err)
		return
	}
	sandbox, err := newSandbox(p.ip, Gateway(p.k.cfg.Network), "v"+strings.ReplaceAll(strings.SplitN(p.ip, ".", 3)[2], ".", "_"))
	if err != nil {
		p.logf("%v", err)
		p.failAll("CreatePodSandboxError")
		return
	}
	defer sandbox.close()
	p.sandbox = sandbox
	env, err := p.prepare(ctx)
	if err != nil {
		p.logf("%v", err)
		p.failAll("CreateContainerConfigError")
	}
	p.mu.Lock()
	p.env = env
	p.mu.Unlock()
	probeCtx, cancel := context.WithCancel(ctx)
	p.stopProbes = cancel
	if err == nil {
		for _, c := range p.containers {
			if _, known := p.k.cfg.Images[c.spec.Image]; !known {
				p.logf("container %s: no program for image %q in the image table", c.spec.Name, c.spec.Image)
				c.waiting = "ErrImageNeverPull"
				continue
			}
			go p.supervise(probeCtx, c)
			go p.probe(probeCtx, c)
		}
	}
	p.markDirty()
	var grace time.Duration
	select {
	case grace = <-p.terminateAt:
	case <-ctx.Done():
		cancel()
		return
	}
	p.terminate(grace)
	cancel()
	p.markDirty()
	p.k.finalDelete(ctx, p.obj.Namespace, p.obj.Name, p.obj.UID)
	os.RemoveAll(p.dir)
}

// beginTermination starts a graceful stop once; later calls do nothing.
func (p *pod) beginTermination(ctx context.Context, grace time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.terminating {
		return
	}
	p.terminating = true
	p.terminateAt <- grace
}

// terminate sends SIGTERM to every process, waits up to grace, then SIGKILLs the rest.
func (p *pod) terminate(grace time.Duration) {
	deadline := time.After(grace)
	for _, w := range p.signal(syscall.SIGTERM, false) {
		select {
		case <-w:
		case <-deadline:
			p.kill()
			return
		}
	}
}

// kill ends every process now.
func (p *pod) kill() {
	for _, w := range p.signal(syscall.SIGKILL, true) {
		<-w
	}
}

// signal sends sig to the process group of every running container (marking the pod
// stopped first when stop is set, so none is restarted) and returns their exit channels.
func (p *pod) signal(sig syscall.Signal, stop bool) []chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if stop {
		p.stopped = true
	}
	var waits []chan struct{}
	for _, c := range p.containers {
		if c.running {
			syscall.Kill(-c.cmd.Process.Pid, sig)
			waits = append(waits, c.exited)
		}
	}
	return waits
}

// supervise runs one container's process, restarting it as the restart policy says.
func (p *pod) supervise(ctx context.Context, c *container) {
	backoff := time.Second
	for {
		exited, err := p.startProcess(c)
		if err != nil {
			p.logf("container %s: %v", c.spec.Name, err)
			p.mu.Lock()
			c.waiting = "RunContainerError"
			p.mu.Unlock()
		} else {
			p.markDirty()
			<-exited
		}
		p.markDirty()
		p.mu.Lock()
		over := p.terminating || p.stopped
		code := int32(-1)
		if c.lastExit != nil {
			code = *c.lastExit
		}
		p.mu.Unlock()
		policy := p.obj.Spec.RestartPolicy
		if over || ctx.Err() != nil || policy == corev1.RestartPolicyNever || (policy == corev1.RestartPolicyOnFailure && code == 0) {
			return
		}
		p.mu.Lock()
		c.waiting = "CrashLoopBackOff"
		p.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
		p.mu.Lock()
		c.restarts++
		p.mu.Unlock()
	}
}

func (p *pod) startProcess(c *container) (chan struct{}, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.terminating || p.stopped {
		return nil, fmt.Errorf("pod is stopping")
	}
	env := append(append([]string{}, p.env...), p.containerEnv(c)...)
	argv := p.argv(c, env)
	if len(argv) == 0 {
		return nil, fmt.Errorf("no command for image %q", c.spec.Image)
	}
	out, err := os.OpenFile(filepath.Join(p.dir, c.spec.Name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	var binds [][2]string
	for _, m := range c.spec.VolumeMounts {
		binds = append(binds, [2]string{filepath.Join(p.volumeDir(m.Name), m.SubPath), m.MountPath})
	}
	cmd, err := p.sandbox.command(binds, argv)
	if err != nil {
		out.Close()
		return nil, err
	}
	cmd.Env, cmd.Dir, cmd.Stdout, cmd.Stderr = env, p.dir, out, out
	if err := cmd.Start(); err != nil {
		out.Close()
		return nil, err
	}
	c.cmd, c.running, c.ready, c.waiting = cmd, true, false, ""
	c.startedAt = metav1.Now()
	exited := make(chan struct{})
	c.exited = exited
	go func() {
		cmd.Wait()
		out.Close()
		code := int32(cmd.ProcessState.ExitCode())
		if status, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && status.Signaled() {
			code = 128 + int32(status.Signal())
		}
		p.mu.Lock()
		c.running, c.ready, c.lastExit = false, false, &code
		p.mu.Unlock()
		close(exited)
	}()
	return exited, nil
}

// substitute fills the image table's placeholders.
func (p *pod) substitute(s string) string {
	return strings.NewReplacer("{{podIP}}", p.ip, "{{podName}}", p.obj.Name,
		"{{podNamespace}}", p.obj.Namespace, "{{podDir}}", p.dir).Replace(s)
}

// containerEnv is the image's environment then the container's, later entries winning.
func (p *pod) containerEnv(c *container) []string {
	var env []string
	keys := make([]string, 0, len(c.image.Env))
	for k := range c.image.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		env = append(env, k+"="+p.substitute(c.image.Env[k]))
	}
	for _, e := range c.spec.Env {
		value := e.Value
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			value = p.field(e.ValueFrom.FieldRef.FieldPath)
		}
		env = append(env, e.Name+"="+expand(value, env))
	}
	return env
}

// field answers the downward API's fieldRef paths a pod may ask for.
func (p *pod) field(path string) string {
	switch path {
	case "metadata.name":
		return p.obj.Name
	case "metadata.namespace":
		return p.obj.Namespace
	case "metadata.uid":
		return string(p.obj.UID)
	case "status.podIP":
		return p.ip
	case "status.hostIP":
		return Gateway(p.k.cfg.Network)
	case "spec.nodeName":
		return p.obj.Spec.NodeName
	case "spec.serviceAccountName":
		return p.obj.Spec.ServiceAccountName
	}
	return ""
}

// expand replaces $(NAME) with NAME's value from env, as the kubelet does in env,
// command and args; $$ escapes a dollar.
func expand(s string, env []string) string {
	values := map[string]string{}
	for _, e := range env {
		if k, v, ok := strings.Cut(e, "="); ok {
			values[k] = v
		}
	}
	var out strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '$' && i+1 < len(s) {
			if s[i+1] == '$' {
				out.WriteByte('$')
				i++
				continue
			}
			if s[i+1] == '(' {
				if end := strings.IndexByte(s[i:], ')'); end > 0 {
					if v, ok := values[s[i+2:i+end]]; ok {
						out.WriteString(v)
						i += end
						continue
					}
				}
			}
		}
		out.WriteByte(s[i])
	}
	return out.String()
}

// argv is the container's command (else the image's) then its args, with $(VAR)
// expanded.
func (p *pod) argv(c *container, env []string) []string {
	argv := append([]string{}, c.image.Command...)
	if len(c.spec.Command) > 0 {
		argv = append([]string{}, c.spec.Command...)
		// The image's program stands for a command of the same name.
		if len(c.image.Command) > 0 && filepath.Base(argv[0]) == filepath.Base(c.image.Command[0]) {
			argv[0] = c.image.Command[0]
		}
	}
	argv = append(argv, c.spec.Args...)
	for i := range argv {
		argv[i] = expand(p.substitute(argv[i]), env)
	}
	return argv
}
