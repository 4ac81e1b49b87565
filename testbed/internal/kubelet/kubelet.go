// Package kubelet is a process kubelet: it registers a Node, runs the containers of the
// Pods bound to it as local processes (the program chosen by image name from a table),
// gives every Pod a network namespace of its own on the Pod /16 (a veth pair on the node's
// bridge, sandbox.go) and its volumes mounted where the spec says (a mount namespace per
// container), reports readiness from the Pod's readiness probe, and on deletion sends SIGTERM and honours the grace period, so the real
// EndpointSlice controller sees ready, serving and terminating exactly as in a cluster.
//
// What it leaves out: liveness, startup and exec probes, lifecycle hooks (preStop), image pulls, resource limits,
// volume updates after start (ConfigMaps and Secrets are written once, when the Pod starts).
package kubelet

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"os"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// Image is how to run the containers of one image: the program and its environment.
// Values in Env may use {{podIP}}, {{podName}}, {{podNamespace}} and {{podDir}}.
type Image struct {
	Command []string          `json:"command"`
	Env     map[string]string `json:"env"`
}

// LoadImages reads the image table (a JSON object from image name to Image); "" is empty.
func LoadImages(path string) (map[string]Image, error) {
	images := map[string]Image{}
	if path == "" {
		return images, nil
	}
	text, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("image table: %w", err)
	}
	if err := json.Unmarshal(text, &images); err != nil {
		return nil, fmt.Errorf("image table %s: %w", path, err)
	}
	return images, nil
}

// Config of a kubelet.
type Config struct {
	// Node is the name it registers.
	Node string
	// Network is the first two octets of the pod addresses ("10.244").
	Network string
	// Dir holds one folder per pod: its volumes and container logs.
	Dir    string
	Images map[string]Image
	// Server and CAFile go into the kubeconfig given to pods with a ServiceAccount token.
	Server, CAFile string
}

// Kubelet runs the pods of one node.
type Kubelet struct {
	client kubernetes.Interface
	cfg    Config
	mu     sync.Mutex
	pods   map[types.UID]*pod
	nextIP int
}

// New makes a kubelet; Register then Run start it.
func New(client kubernetes.Interface, cfg Config) *Kubelet {
	return &Kubelet{client: client, cfg: cfg, pods: map[types.UID]*pod{}}
}

func (k *Kubelet) nodeStatus() corev1.NodeStatus {
	now := metav1.Now()
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("64"),
		corev1.ResourceMemory: resource.MustParse("256Gi"),
		corev1.ResourcePods:   resource.MustParse("1000"),
	}
	return corev1.NodeStatus{
		Capacity:    capacity,
		Allocatable: capacity,
		Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: "127.0.0.1"},
			{Type: corev1.NodeHostName, Address: k.cfg.Node},
		},
		Conditions: []corev1.NodeCondition{{
			Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
			Message: "process kubelet is posting ready status", LastHeartbeatTime: now, LastTransitionTime: now,
		}},
		NodeInfo: corev1.NodeSystemInfo{
			OperatingSystem: "linux", Architecture: "amd64", KubeletVersion: "v1.37.2",
			ContainerRuntimeVersion: "testbed://processes",
		},
	}
}

// Register creates the Node (ready, untainted) or refreshes it.
func (k *Kubelet) Register(ctx context.Context) error {
	if err := k.setupNode(ctx); err != nil {
		return err
	}
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: k.cfg.Node, Labels: map[string]string{
			"kubernetes.io/hostname": k.cfg.Node, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
		}},
	}
	created, err := k.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		created, err = k.client.CoreV1().Nodes().Get(ctx, k.cfg.Node, metav1.GetOptions{})
	}
	if err != nil {
		return err
	}
	created.Status = k.nodeStatus()
	_, err = k.client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{})
	return err
}

// heartbeat renews the node's Lease and Ready condition, as the node lifecycle
// controller expects every few seconds.
func (k *Kubelet) heartbeat(ctx context.Context) {
	leases := k.client.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	for {
		now := metav1.NewMicroTime(time.Now())
		lease, err := leases.Get(ctx, k.cfg.Node, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			holder, seconds := k.cfg.Node, int32(40)
			_, err = leases.Create(ctx, &coordinationv1.Lease{
				ObjectMeta: metav1.ObjectMeta{Name: k.cfg.Node},
				Spec:       coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: &seconds, RenewTime: &now},
			}, metav1.CreateOptions{})
		} else if err == nil {
			lease.Spec.RenewTime = &now
			_, err = leases.Update(ctx, lease, metav1.UpdateOptions{})
		}
		if err == nil {
			var node *corev1.Node
			if node, err = k.client.CoreV1().Nodes().Get(ctx, k.cfg.Node, metav1.GetOptions{}); err == nil {
				node.Status = k.nodeStatus()
				_, err = k.client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
			}
		}
		if err != nil && ctx.Err() == nil {
			log.Printf("kubelet: heartbeat: %v", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(10 * time.Second):
		}
	}
}

// Run watches the pods bound to the node until ctx ends, then kills every process.
func (k *Kubelet) Run(ctx context.Context) {
	go k.heartbeat(ctx)
	factory := informers.NewSharedInformerFactoryWithOptions(k.client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", k.cfg.Node).String()
		}))
	informer := factory.Core().V1().Pods().Informer()
	informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { k.sync(ctx, obj.(*corev1.Pod)) },
		UpdateFunc: func(_, obj any) { k.sync(ctx, obj.(*corev1.Pod)) },
		DeleteFunc: func(obj any) {
			if gone, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = gone.Obj
			}
			if p, ok := obj.(*corev1.Pod); ok {
				k.forget(p.UID)
			}
		},
	})
	factory.Start(ctx.Done())
	<-ctx.Done()
	factory.Shutdown()
	k.mu.Lock()
	running := make([]*pod, 0, len(k.pods))
	for _, p := range k.pods {
		running = append(running, p)
	}
	k.mu.Unlock()
	for _, p := range running {
		p.kill()
	}
}

// allocateIP hands out N.N.a.b, b in 2..251, never twice in one test bed.
func (k *Kubelet) allocateIP() string {
	n := k.nextIP
	k.nextIP++
	return fmt.Sprintf("%s.%d.%d", k.cfg.Network, 1+n/250, 2+n%250)
}

// sync acts on the latest state of one pod: start it, or begin its termination.
func (k *Kubelet) sync(ctx context.Context, obj *corev1.Pod) {
	k.mu.Lock()
	p, known := k.pods[obj.UID]
	if !known {
		if obj.DeletionTimestamp != nil || obj.Status.Phase == corev1.PodSucceeded || obj.Status.Phase == corev1.PodFailed {
			k.mu.Unlock()
			if obj.DeletionTimestamp != nil {
				// Never started here: nothing to stop.
				k.finalDelete(ctx, obj.Namespace, obj.Name, obj.UID)
			}
			return
		}
		p = newPod(k, obj.DeepCopy(), k.allocateIP())
		k.pods[obj.UID] = p
		k.mu.Unlock()
		go p.run(ctx)
		return
	}
	k.mu.Unlock()
	if obj.DeletionTimestamp != nil {
		grace := int64(30)
		if obj.DeletionGracePeriodSeconds != nil {
			grace = *obj.DeletionGracePeriodSeconds
		}
		p.beginTermination(ctx, time.Duration(grace)*time.Second)
	}
}

// finalDelete removes a pod whose processes are gone, as the kubelet's status manager does.
func (k *Kubelet) finalDelete(ctx context.Context, namespace, name string, uid types.UID) {
	zero := int64(0)
	for ctx.Err() == nil {
		err := k.client.CoreV1().Pods(namespace).Delete(ctx, name, metav1.DeleteOptions{
			GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &uid},
		})
		if err == nil || apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			return
		}
		log.Printf("kubelet: delete %s/%s: %v", namespace, name, err)
		time.Sleep(500 * time.Millisecond)
	}
}

// forget drops a pod the API server no longer has, killing what may still run.
func (k *Kubelet) forget(uid types.UID) {
	k.mu.Lock()
	p := k.pods[uid]
	delete(k.pods, uid)
	k.mu.Unlock()
	if p != nil {
		p.kill()
	}
}
