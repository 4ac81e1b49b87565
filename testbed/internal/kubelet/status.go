package kubelet

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
)

// status is the pod's status from what runs here.
func (p *pod) status(old corev1.PodStatus) corev1.PodStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := metav1.Now()
	s := corev1.PodStatus{
		HostIP: "127.0.0.1", HostIPs: []corev1.HostIP{{IP: "127.0.0.1"}},
		PodIP: p.ip, PodIPs: []corev1.PodIP{{IP: p.ip}},
		StartTime: &p.start, QOSClass: old.QOSClass,
	}
	allReady, anyRunning, allSucceeded := true, false, true
	for _, c := range p.containers {
		cs := corev1.ContainerStatus{
			Name: c.spec.Name, Image: c.spec.Image, ImageID: "testbed://" + c.spec.Image,
			Ready: c.ready, RestartCount: c.restarts,
		}
		started := c.running
		cs.Started = &started
		switch {
		case c.running:
			anyRunning = true
			cs.ContainerID = "testbed://" + p.obj.Name + "-" + c.spec.Name
			cs.State.Running = &corev1.ContainerStateRunning{StartedAt: c.startedAt}
		case c.lastExit != nil && c.waiting == "":
			cs.State.Terminated = &corev1.ContainerStateTerminated{ExitCode: *c.lastExit, FinishedAt: now}
		default:
			reason := c.waiting
			if reason == "" {
				reason = "ContainerCreating"
			}
			cs.State.Waiting = &corev1.ContainerStateWaiting{Reason: reason}
		}
		if c.lastExit != nil && (c.running || c.waiting != "") {
			cs.LastTerminationState.Terminated = &corev1.ContainerStateTerminated{ExitCode: *c.lastExit}
		}
		allReady = allReady && c.ready
		allSucceeded = allSucceeded && !c.running && c.lastExit != nil && *c.lastExit == 0
		s.ContainerStatuses = append(s.ContainerStatuses, cs)
	}
	switch {
	case anyRunning:
		s.Phase = corev1.PodRunning
	case p.terminating || p.obj.Spec.RestartPolicy != corev1.RestartPolicyAlways:
		if allSucceeded {
			s.Phase = corev1.PodSucceeded
		} else if p.terminating || allExited(p.containers) {
			s.Phase = corev1.PodFailed
		} else {
			s.Phase = corev1.PodPending
		}
	default:
		s.Phase = corev1.PodPending
		if old.Phase == corev1.PodRunning {
			s.Phase = corev1.PodRunning
		}
	}
	condition := func(kind corev1.PodConditionType, ok bool) corev1.PodCondition {
		status := corev1.ConditionFalse
		if ok {
			status = corev1.ConditionTrue
		}
		c := corev1.PodCondition{Type: kind, Status: status, LastTransitionTime: now}
		for _, prev := range old.Conditions {
			if prev.Type == kind && prev.Status == status {
				c.LastTransitionTime = prev.LastTransitionTime
			}
		}
		return c
	}
	s.Conditions = []corev1.PodCondition{
		condition(corev1.PodReadyToStartContainers, true),
		condition(corev1.PodInitialized, true),
		condition(corev1.ContainersReady, allReady && anyRunning),
		condition(corev1.PodReady, allReady && anyRunning),
		condition(corev1.PodScheduled, true),
	}
	return s
}

func allExited(cs []*container) bool {
	for _, c := range cs {
		if c.running || c.lastExit == nil {
			return false
		}
	}
	return true
}

// writeStatus writes the status each time the pod is marked dirty, until it is gone;
// a failed write (say, the API server is down) is retried.
func (p *pod) writeStatus(ctx context.Context) {
	pods := p.k.client.CoreV1().Pods(p.obj.Namespace)
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.dirty:
		}
		for ctx.Err() == nil {
			err := retry.RetryOnConflict(retry.DefaultBackoff, func() error {
				current, err := pods.Get(ctx, p.obj.Name, metav1.GetOptions{})
				if err != nil {
					return err
				}
				if current.UID != p.obj.UID {
					return nil
				}
				current.Status = p.status(current.Status)
				_, err = pods.UpdateStatus(ctx, current, metav1.UpdateOptions{})
				return err
			})
			if err == nil || apierrors.IsNotFound(err) {
				break
			}
			p.logf("status: %v", err)
			time.Sleep(500 * time.Millisecond)
		}
		select {
		case <-p.done:
			// One last write after termination has been done above; nothing more comes.
			if len(p.dirty) == 0 {
				return
			}
		default:
		}
	}
}
