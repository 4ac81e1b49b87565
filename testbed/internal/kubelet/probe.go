package kubelet

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// probe runs the container's readiness probe for as long as the pod lives (also while
// it terminates: a terminating endpoint is still reported as serving or not), and marks
// the pod dirty when readiness changes. Without a probe a running container is ready.
func (p *pod) probe(ctx context.Context, c *container) {
	spec := c.spec.ReadinessProbe
	period, timeout := 10*time.Second, time.Second
	success, failure := 1, 3
	var delay time.Duration
	if spec != nil {
		if spec.PeriodSeconds > 0 {
			period = time.Duration(spec.PeriodSeconds) * time.Second
		}
		if spec.TimeoutSeconds > 0 {
			timeout = time.Duration(spec.TimeoutSeconds) * time.Second
		}
		if spec.SuccessThreshold > 0 {
			success = int(spec.SuccessThreshold)
		}
		if spec.FailureThreshold > 0 {
			failure = int(spec.FailureThreshold)
		}
		delay = time.Duration(spec.InitialDelaySeconds) * time.Second
	} else {
		period = 200 * time.Millisecond
	}
	var streak int
	var lastOK bool
	var startedAt time.Time
	for {
		p.mu.Lock()
		running, ready, since := c.running, c.ready, c.startedAt.Time
		p.mu.Unlock()
		if since != startedAt {
			// A (re)started process begins not ready, with a fresh initial delay.
			startedAt, streak, lastOK = since, 0, false
		}
		next := ready
		switch {
		case !running:
			next = false
		case spec == nil:
			next = true
		case time.Since(since) >= delay:
			ok := p.check(ctx, c, spec, timeout)
			if ok != lastOK {
				streak = 0
			}
			streak++
			lastOK = ok
			if ok && streak >= success {
				next = true
			} else if !ok && streak >= failure {
				next = false
			}
		}
		if next != ready {
			p.mu.Lock()
			if c.running || !next {
				c.ready = next
			}
			p.mu.Unlock()
			p.markDirty()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(period):
		}
	}
}

// port resolves a probe's port, by number or by the container's port name.
func port(c *container, value intstr.IntOrString) (int, error) {
	if value.Type == intstr.Int {
		return value.IntValue(), nil
	}
	for _, p := range c.spec.Ports {
		if p.Name == value.StrVal {
			return int(p.ContainerPort), nil
		}
	}
	return 0, fmt.Errorf("no port named %q", value.StrVal)
}

func (p *pod) check(ctx context.Context, c *container, spec *corev1.Probe, timeout time.Duration) bool {
	switch {
	case spec.HTTPGet != nil:
		h := spec.HTTPGet
		n, err := port(c, h.Port)
		if err != nil {
			return false
		}
		host := h.Host
		if host == "" {
			host = p.ip
		}
		scheme := "http"
		if h.Scheme == corev1.URISchemeHTTPS {
			scheme = "https"
		}
		request, err := http.NewRequestWithContext(ctx, "GET", scheme+"://"+net.JoinHostPort(host, strconv.Itoa(n))+h.Path, nil)
		if err != nil {
			return false
		}
		for _, header := range h.HTTPHeaders {
			request.Header.Set(header.Name, header.Value)
		}
		client := &http.Client{Timeout: timeout, Transport: &http.Transport{
			// As the kubelet: a probe checks liveness of the server, not its certificate.
			TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, DisableKeepAlives: true,
		}}
		resp, err := client.Do(request)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode >= 200 && resp.StatusCode < 400
	case spec.TCPSocket != nil:
		n, err := port(c, spec.TCPSocket.Port)
		if err != nil {
			return false
		}
		conn, err := net.DialTimeout("tcp", net.JoinHostPort(p.ip, strconv.Itoa(n)), timeout)
		if err != nil {
			return false
		}
		conn.Close()
		return true
	}
	p.logf("container %s: only httpGet and tcpSocket probes are supported", c.spec.Name)
	return false
}
