// Package launch starts a small real cluster on loopback: etcd, kube-apiserver,
// kube-controller-manager and kube-scheduler as child processes of this one, and the
// process kubelet in it, the way controller-runtime's envtest does (plus controllers
// and a node). It is driven over stdin: one command per line, EOF shuts everything down.
package launch

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"canaryd.dev/testbed/internal/kubelet"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// Info is what the tests read of a running test bed (written as testbed.json).
type Info struct {
	Dir             string `json:"dir"`
	Server          string `json:"server"`
	CAFile          string `json:"caFile"`
	AdminKubeconfig string `json:"adminKubeconfig"`
	Etcd            string `json:"etcd"`
	Node            string `json:"node"`
	PodNetwork      string `json:"podNetwork"`
	Logs            string `json:"logs"`
	// AuditLog holds the API server's audit events (JSON lines) for the requests of
	// ServiceAccounts outside kube-system: every call canaryd makes, with the authorizer's
	// decision.
	AuditLog string `json:"auditLog"`
}

// auditPolicy records the requests of ServiceAccounts outside kube-system (canaryd, as
// deploy/rbac.yaml's or the Helm chart's account) at the Metadata level and nothing else,
// so the log stays small beside the controllers (kube-system accounts) and the kubelet.
const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: None
    userGroups: ["system:serviceaccounts:kube-system"]
  - level: Metadata
    userGroups: ["system:serviceaccounts"]
  - level: None
`

// Options of `testbed up`.
type Options struct {
	Dir    string
	Images string
	// PodNetwork is the first two octets of the Pod addresses ("10.244").
	PodNetwork string
}

type component struct {
	name string
	args []string
	log  string
	cmd  *exec.Cmd
	done chan struct{}
}

type bed struct {
	self       string
	info       Info
	pki        *pki
	etcd       *component
	apiserver  *component
	controller *component
	scheduler  *component
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func (b *bed) start(c *component) error {
	c.log = filepath.Join(b.info.Logs, c.name+".log")
	log, err := os.OpenFile(c.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(b.self, append([]string{c.name}, c.args...)...)
	cmd.Stdout, cmd.Stderr = log, log
	// Killed with us even if we die without cleaning up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Close()
		return fmt.Errorf("start %s: %w", c.name, err)
	}
	c.cmd, c.done = cmd, make(chan struct{})
	go func() {
		cmd.Wait()
		log.Close()
		close(c.done)
	}()
	return nil
}

// logTail is the last n lines of the component's log, for errors (the folder is removed at exit).
func (c *component) logTail(n int) string {
	text, _ := os.ReadFile(c.log)
	lines := strings.Split(strings.TrimRight(string(text), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// stop sends SIGTERM, then SIGKILL after the grace period.
func stop(c *component, grace time.Duration) {
	if c == nil || c.cmd == nil {
		return
	}
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(grace):
		syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
		<-c.done
	}
}

func (b *bed) tlsClient() *http.Client {
	pool := x509.NewCertPool()
	ca, _ := os.ReadFile(b.pki.CAFile)
	pool.AppendCertsFromPEM(ca)
	cert, _ := tls.LoadX509KeyPair(b.pki.AdminCert, b.pki.AdminKey)
	return &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}}}
}

// waitHealthy polls url until it answers 200, the component exits or the deadline passes.
func waitHealthy(client *http.Client, c *component, url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		resp, err := client.Get(url)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
			err = fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
		}
		select {
		case <-c.done:
			return fmt.Errorf("%s exited; the end of its log:\n%s", c.name, c.logTail(30))
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not healthy after %s: %v", c.name, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (b *bed) startAPIServer() error {
	if err := b.start(b.apiserver); err != nil {
		return err
	}
	return waitHealthy(b.tlsClient(), b.apiserver, b.info.Server+"/readyz", 90*time.Second)
}

func writeKubeconfig(path, server string, p *pki) error {
	text := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: testbed
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: admin
  user:
    client-certificate: %s
    client-key: %s
contexts:
- name: testbed
  context: {cluster: testbed, user: admin, namespace: default}
current-context: testbed
`, server, p.CAFile, p.AdminCert, p.AdminKey)
	return os.WriteFile(path, []byte(text), 0o600)
}

// Up runs the test bed until stdin closes.
func Up(opts Options) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	dir := opts.Dir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "canaryd-testbed-"); err != nil {
			return err
		}
	}
	defer os.RemoveAll(dir)
	for _, d := range []string{"pki", "logs", "etcd", "pods"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	// Pods live on a /16 of their own behind a bridge (the API server refuses loopback
	// addresses in EndpointSlices); they reach the API server on the bridge's address, so
	// its certificate names that too. Run the bed in a network namespace of its own.
	network := opts.PodNetwork
	p, err := newPKI(filepath.Join(dir, "pki"), net.ParseIP(kubelet.Gateway(network)))
	if err != nil {
		return err
	}
	etcdPort, peerPort, apiPort := freePort(), freePort(), freePort()
	b := &bed{self: self, pki: p, info: Info{
		Dir:             dir,
		Server:          fmt.Sprintf("https://127.0.0.1:%d", apiPort),
		CAFile:          p.CAFile,
		AdminKubeconfig: filepath.Join(dir, "admin.kubeconfig"),
		Etcd:            fmt.Sprintf("http://127.0.0.1:%d", etcdPort),
		Node:            "node-1",
		PodNetwork:      network,
		Logs:            filepath.Join(dir, "logs"),
		AuditLog:        filepath.Join(dir, "logs", "audit.log"),
	}}
	policy := filepath.Join(dir, "audit-policy.yaml")
	if err := os.WriteFile(policy, []byte(auditPolicy), 0o644); err != nil {
		return err
	}
	if err := writeKubeconfig(b.info.AdminKubeconfig, b.info.Server, p); err != nil {
		return err
	}
	peer := fmt.Sprintf("http://127.0.0.1:%d", peerPort)
	b.etcd = &component{name: "etcd", args: []string{
		"--name=testbed", "--data-dir=" + filepath.Join(dir, "etcd"),
		"--listen-client-urls=" + b.info.Etcd, "--advertise-client-urls=" + b.info.Etcd,
		"--listen-peer-urls=" + peer, "--initial-advertise-peer-urls=" + peer,
		"--initial-cluster=testbed=" + peer,
		// A test cluster's data is thrown away: durability buys nothing here.
		"--unsafe-no-fsync", "--log-level=warn",
	}}
	b.apiserver = &component{name: "kube-apiserver", args: []string{
		"--etcd-servers=" + b.info.Etcd,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--secure-port=" + strconv.Itoa(apiPort),
		"--tls-cert-file=" + p.ServingCert, "--tls-private-key-file=" + p.ServingKey,
		"--client-ca-file=" + p.CAFile,
		"--service-account-key-file=" + p.SAPub, "--service-account-signing-key-file=" + p.SAKey,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--authorization-mode=Node,RBAC",
		// The reconciler refuses a loopback advertise address; nothing here uses the
		// default/kubernetes Service's endpoints (clients come by kubeconfig).
		"--endpoint-reconciler-type=none",
		"--service-cluster-ip-range=10.0.0.0/16",
		"--allow-privileged=true",
		"--cert-dir=" + filepath.Join(dir, "pki"),
		"--audit-policy-file=" + policy, "--audit-log-path=" + b.info.AuditLog,
		"--audit-log-format=json", "--audit-log-mode=blocking",
		"--profiling=false", "-v=1",
	}}
	kubeconfig := b.info.AdminKubeconfig
	b.controller = &component{name: "kube-controller-manager", args: []string{
		"--kubeconfig=" + kubeconfig, "--authentication-kubeconfig=" + kubeconfig, "--authorization-kubeconfig=" + kubeconfig,
		"--bind-address=127.0.0.1", "--secure-port=" + strconv.Itoa(freePort()),
		"--leader-elect=false",
		"--use-service-account-credentials=true",
		"--service-account-private-key-file=" + p.SAKey, "--root-ca-file=" + p.CAFile,
		"--cluster-name=testbed", "-v=1",
	}}
	b.scheduler = &component{name: "kube-scheduler", args: []string{
		"--kubeconfig=" + kubeconfig, "--authentication-kubeconfig=" + kubeconfig, "--authorization-kubeconfig=" + kubeconfig,
		"--bind-address=127.0.0.1", "--secure-port=" + strconv.Itoa(freePort()),
		"--leader-elect=false", "-v=1",
	}}
	defer func() {
		stop(b.scheduler, 5*time.Second)
		stop(b.controller, 5*time.Second)
		stop(b.apiserver, 10*time.Second)
		stop(b.etcd, 5*time.Second)
	}()

	started := time.Now()
	if err := b.start(b.etcd); err != nil {
		return err
	}
	if err := waitHealthy(&http.Client{Timeout: 2 * time.Second}, b.etcd, b.info.Etcd+"/health", 30*time.Second); err != nil {
		return err
	}
	if err := b.startAPIServer(); err != nil {
		return err
	}
	if err := b.start(b.controller); err != nil {
		return err
	}
	if err := b.start(b.scheduler); err != nil {
		return err
	}
	config, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	config.QPS, config.Burst = 200, 400
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		return err
	}
	images, err := kubelet.LoadImages(opts.Images)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	k := kubelet.New(client, kubelet.Config{
		Node:    b.info.Node,
		Network: network,
		Dir:     filepath.Join(dir, "pods"),
		Images:  images,
		Server:  b.info.Server,
		CAFile:  p.CAFile,
	})
	if err := k.Register(ctx); err != nil {
		return fmt.Errorf("register node: %w", err)
	}
	kubeletDone := make(chan struct{})
	go func() {
		k.Run(ctx)
		close(kubeletDone)
	}()
	defer func() {
		cancel()
		<-kubeletDone
	}()
	if err := waitDefaultServiceAccount(ctx, client); err != nil {
		return err
	}
	info, _ := json.Marshal(b.info)
	if err := os.WriteFile(filepath.Join(dir, "testbed.json"), info, 0o644); err != nil {
		return err
	}
	fmt.Printf("ready %s %.1fs\n", string(info), time.Since(started).Seconds())
	return b.serve(os.Stdin)
}

// waitDefaultServiceAccount waits for the controllers to have made namespace default's
// ServiceAccount, without which no Pod is admitted.
func waitDefaultServiceAccount(ctx context.Context, client kubernetes.Interface) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		_, err := client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no default ServiceAccount after 60s: %w", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// serve reads commands from in until EOF: faults the tests inject into real components.
func (b *bed) serve(in io.Reader) error {
	lines := bufio.NewScanner(in)
	for lines.Scan() {
		var err error
		switch cmd := strings.TrimSpace(lines.Text()); cmd {
		case "stop-apiserver":
			stop(b.apiserver, 10*time.Second)
		case "start-apiserver":
			err = b.startAPIServer()
		case "restart-apiserver":
			stop(b.apiserver, 10*time.Second)
			err = b.startAPIServer()
		case "compact-etcd":
			_, err = b.compactEtcd()
		case "":
			continue
		default:
			err = errors.New("unknown command " + strconv.Quote(cmd))
		}
		if err != nil {
			fmt.Printf("error %s\n", err)
		} else {
			fmt.Println("ok")
		}
	}
	return nil
}
