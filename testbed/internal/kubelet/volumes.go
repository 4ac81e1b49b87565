package kubelet

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// serviceAccountMount is where the ServiceAccount admission plugin mounts the token.
const serviceAccountMount = "/var/run/secrets/kubernetes.io/serviceaccount"

func (p *pod) volumeDir(name string) string {
	return filepath.Join(p.dir, "volumes", name)
}

// prepare writes every volume into the pod's folder and returns the environment all
// containers share: a kubeconfig for the ServiceAccount token, when one is mounted,
// since a local process cannot find it at the in-cluster path.
func (p *pod) prepare(ctx context.Context) ([]string, error) {
	var env []string
	for _, v := range p.obj.Spec.Volumes {
		dir := p.volumeDir(v.Name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		files, err := p.volumeFiles(ctx, v)
		if err != nil {
			return nil, fmt.Errorf("volume %s: %w", v.Name, err)
		}
		for path, content := range files {
			full := filepath.Join(dir, path)
			if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
				return nil, err
			}
			if err := os.WriteFile(full, content, 0o644); err != nil {
				return nil, err
			}
		}
		if _, token := files["token"]; token && p.mountedAt(v.Name, serviceAccountMount) {
			kubeconfig := filepath.Join(p.dir, "kubeconfig")
			if err := p.writeKubeconfig(kubeconfig, filepath.Join(dir, "token")); err != nil {
				return nil, err
			}
			env = append(env, "KUBECONFIG="+kubeconfig)
		}
	}
	server, _ := url.Parse(p.k.podServer())
	env = append(env, "HOME="+p.dir, "PATH="+os.Getenv("PATH"),
		"KUBERNETES_SERVICE_HOST="+server.Hostname(), "KUBERNETES_SERVICE_PORT="+server.Port())
	return env, nil
}

func (p *pod) mountedAt(volume, path string) bool {
	for _, c := range p.obj.Spec.Containers {
		for _, m := range c.VolumeMounts {
			if m.Name == volume && m.MountPath == path {
				return true
			}
		}
	}
	return false
}

func (p *pod) writeKubeconfig(path, tokenFile string) error {
	token, err := os.ReadFile(tokenFile)
	if err != nil {
		return err
	}
	text := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: testbed
  cluster: {server: %q, certificate-authority: %q}
users:
- name: pod
  user: {token: %q}
contexts:
- name: pod
  context: {cluster: testbed, user: pod, namespace: %q}
current-context: pod
`, p.k.podServer(), p.k.cfg.CAFile, strings.TrimSpace(string(token)), p.obj.Namespace)
	return os.WriteFile(path, []byte(text), 0o600)
}

func keyed(data map[string][]byte, items []corev1.KeyToPath) (map[string][]byte, error) {
	files := map[string][]byte{}
	if len(items) == 0 {
		for k, v := range data {
			files[k] = v
		}
		return files, nil
	}
	for _, item := range items {
		v, ok := data[item.Key]
		if !ok {
			return nil, fmt.Errorf("no key %q", item.Key)
		}
		files[item.Path] = v
	}
	return files, nil
}

func (p *pod) configMap(ctx context.Context, name string, items []corev1.KeyToPath, optional *bool) (map[string][]byte, error) {
	cm, err := p.k.client.CoreV1().ConfigMaps(p.obj.Namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		if optional != nil && *optional {
			return nil, nil
		}
		return nil, err
	}
	data := map[string][]byte{}
	for k, v := range cm.Data {
		data[k] = []byte(v)
	}
	for k, v := range cm.BinaryData {
		data[k] = v
	}
	return keyed(data, items)
}

func (p *pod) secret(ctx context.Context, name string, items []corev1.KeyToPath, optional *bool) (map[string][]byte, error) {
	s, err := p.k.client.CoreV1().Secrets(p.obj.Namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		if optional != nil && *optional {
			return nil, nil
		}
		return nil, err
	}
	return keyed(s.Data, items)
}

// token asks for a ServiceAccount token bound to this pod (what the kubelet projects).
func (p *pod) token(ctx context.Context, source *corev1.ServiceAccountTokenProjection) ([]byte, error) {
	seconds := int64(3600)
	if source.ExpirationSeconds != nil {
		seconds = *source.ExpirationSeconds
	}
	var audiences []string
	if source.Audience != "" {
		audiences = []string{source.Audience}
	}
	account := p.obj.Spec.ServiceAccountName
	if account == "" {
		account = "default"
	}
	request, err := p.k.client.CoreV1().ServiceAccounts(p.obj.Namespace).CreateToken(ctx, account, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			Audiences: audiences, ExpirationSeconds: &seconds,
			BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: p.obj.Name, UID: p.obj.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("token for ServiceAccount %s: %w", account, err)
	}
	return []byte(request.Status.Token), nil
}

// volumeFiles is the content of one volume, file path → bytes.
func (p *pod) volumeFiles(ctx context.Context, v corev1.Volume) (map[string][]byte, error) {
	switch {
	case v.EmptyDir != nil:
		return nil, nil
	case v.ConfigMap != nil:
		return p.configMap(ctx, v.ConfigMap.Name, v.ConfigMap.Items, v.ConfigMap.Optional)
	case v.Secret != nil:
		return p.secret(ctx, v.Secret.SecretName, v.Secret.Items, v.Secret.Optional)
	case v.DownwardAPI != nil:
		return p.downward(v.DownwardAPI.Items), nil
	case v.Projected != nil:
		files := map[string][]byte{}
		for _, s := range v.Projected.Sources {
			var part map[string][]byte
			var err error
			switch {
			case s.ServiceAccountToken != nil:
				var token []byte
				token, err = p.token(ctx, s.ServiceAccountToken)
				part = map[string][]byte{s.ServiceAccountToken.Path: token}
			case s.ConfigMap != nil:
				part, err = p.configMap(ctx, s.ConfigMap.Name, s.ConfigMap.Items, s.ConfigMap.Optional)
			case s.Secret != nil:
				part, err = p.secret(ctx, s.Secret.Name, s.Secret.Items, s.Secret.Optional)
			case s.DownwardAPI != nil:
				part = p.downward(s.DownwardAPI.Items)
			}
			if err != nil {
				return nil, err
			}
			for k, v := range part {
				files[k] = v
			}
		}
		return files, nil
	}
	return nil, fmt.Errorf("this kubelet has no support for the volume's type")
}

func (p *pod) downward(items []corev1.DownwardAPIVolumeFile) map[string][]byte {
	files := map[string][]byte{}
	for _, item := range items {
		if item.FieldRef != nil {
			files[item.Path] = []byte(p.field(item.FieldRef.FieldPath))
		}
	}
	return files
}
