package acceptance

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/smtp"
	"net/url"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"

	"portcullis.local/e2e/harness"
)

const (
	cpuNode = "kwok-cpu-0"
	gpuNode = "kwok-gpu-0"
	gpu     = corev1.ResourceName("nvidia.com/gpu")
)

func testdata(parts ...string) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(append([]string{filepath.Dir(file), "..", "testdata"}, parts...)...)
}

// pause is never pulled: kwok nodes run no containers.
func podSpec() corev1.PodSpec {
	return corev1.PodSpec{
		Containers: []corev1.Container{{
			Name:  "app",
			Image: "registry.k8s.io/pause:3.10",
			Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
				corev1.ResourceCPU:    resource.MustParse("100m"),
				corev1.ResourceMemory: resource.MustParse("64Mi"),
			}},
		}},
	}
}

func deployment(name string, replicas int32) *appsv1.Deployment {
	sel := map[string]string{"app": name}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: sel},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: sel},
				Spec:       podSpec(),
			},
		},
	}
}

func podReady(p *corev1.Pod) bool {
	if p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// waitPodsRunning waits until exactly n pods match sel and all are Running
// and Ready with a pod IP, and returns them.
func waitPodsRunning(t *testing.T, ns, sel string, n int) []corev1.Pod {
	t.Helper()
	var pods []corev1.Pod
	harness.Eventually(t, 90*time.Second, fmt.Sprintf("%d running pods %q in %s", n, sel, ns), func() (bool, error) {
		list, err := cluster.Client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: sel})
		if err != nil {
			return false, err
		}
		if len(list.Items) != n {
			return false, fmt.Errorf("%d pods", len(list.Items))
		}
		for i := range list.Items {
			if !podReady(&list.Items[i]) {
				return false, fmt.Errorf("pod %s: phase %s", list.Items[i].Name, list.Items[i].Status.Phase)
			}
		}
		pods = list.Items
		return true, nil
	})
	return pods
}

func TestNodesAndRuntimeClass(t *testing.T) {
	ctx := context.Background()
	gpuN, err := cluster.Client.CoreV1().Nodes().Get(ctx, gpuNode, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"nvidia.com/gpu.product": "Tesla-P4",
		"nvidia.com/gpu.memory":  "7680",
		"nvidia.com/gpu.count":   "1",
		"nvidia.com/gpu.present": "true",
	}
	for k, v := range want {
		if got := gpuN.Labels[k]; got != v {
			t.Errorf("node %s label %s = %q, want %q", gpuNode, k, got, v)
		}
	}
	for _, rl := range []corev1.ResourceList{gpuN.Status.Capacity, gpuN.Status.Allocatable} {
		if q := rl[gpu]; q.Value() != 1 {
			t.Errorf("node %s %s = %s, want 1", gpuNode, gpu, q.String())
		}
	}
	cpuN, err := cluster.Client.CoreV1().Nodes().Get(ctx, cpuNode, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if q := cpuN.Status.Allocatable[gpu]; !q.IsZero() {
		t.Errorf("node %s advertises %s %s", cpuNode, gpu, q.String())
	}
	if q := cpuN.Status.Allocatable[corev1.ResourceCPU]; q.Cmp(resource.MustParse("7800m")) != 0 {
		t.Errorf("node %s allocatable cpu = %s, want 7800m (kwok kept the node's own capacity?)", cpuNode, q.String())
	}
	rc, err := cluster.Client.NodeV1().RuntimeClasses().Get(ctx, "nvidia", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("RuntimeClass nvidia: %v", err)
	}
	if rc.Handler != "nvidia" {
		t.Errorf("RuntimeClass nvidia handler = %q", rc.Handler)
	}
}

// (1) The real scheduler places a Deployment's pods on kwok nodes and kwok
// reports them Running and Ready.
func TestDeploymentScheduledOnKwokNodes(t *testing.T) {
	ctx := context.Background()
	ns := cluster.Namespace(t)
	d, err := cluster.Client.AppsV1().Deployments(ns).Create(ctx, deployment("web", 3), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pods := waitPodsRunning(t, ns, "app=web", 3)
	for _, p := range pods {
		if p.Spec.NodeName != cpuNode && p.Spec.NodeName != gpuNode {
			t.Errorf("pod %s on node %q, want a kwok node", p.Name, p.Spec.NodeName)
		}
		if p.Spec.SchedulerName != corev1.DefaultSchedulerName {
			t.Errorf("pod %s schedulerName %q", p.Name, p.Spec.SchedulerName)
		}
		// The binding must come from kube-scheduler, reported as an event.
		harness.Eventually(t, 30*time.Second, "Scheduled event for pod "+p.Name, func() (bool, error) {
			evs, err := cluster.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{
				FieldSelector: fields.Set{"involvedObject.name": p.Name, "reason": "Scheduled"}.String(),
			})
			if err != nil {
				return false, err
			}
			for _, e := range evs.Items {
				if e.ReportingController == corev1.DefaultSchedulerName || e.Source.Component == corev1.DefaultSchedulerName {
					if !strings.Contains(e.Message, p.Spec.NodeName) {
						return false, fmt.Errorf("event message %q does not name node %s", e.Message, p.Spec.NodeName)
					}
					return true, nil
				}
			}
			return false, fmt.Errorf("%d Scheduled events, none from %s", len(evs.Items), corev1.DefaultSchedulerName)
		})
	}
	harness.Eventually(t, 60*time.Second, "deployment web available", func() (bool, error) {
		d, err = cluster.Client.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return d.Status.ReadyReplicas == 3 && d.Status.AvailableReplicas == 3 && d.Status.ObservedGeneration == d.Generation, nil
	})
	// kubectl sees the same, through the rollout machinery.
	out := cluster.Kubectl(t, "-n", ns, "rollout", "status", "deployment/web", "--timeout=30s")
	if !strings.Contains(out, "successfully rolled out") {
		t.Errorf("kubectl rollout status: %s", out)
	}
}

// (2) nvidia.com/gpu is an extended resource the scheduler accounts for: one
// pod lands on the GPU node, a second stays Pending as Unschedulable.
func TestGPUPodScheduling(t *testing.T) {
	ctx := context.Background()
	ns := cluster.Namespace(t)
	gpuPod := func(name string) *corev1.Pod {
		spec := podSpec()
		spec.RuntimeClassName = new("nvidia")
		spec.Containers[0].Resources.Limits = corev1.ResourceList{gpu: resource.MustParse("1")}
		spec.Tolerations = []corev1.Toleration{{Key: "nvidia.com/gpu", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}}
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": name}}, Spec: spec}
	}
	if _, err := cluster.Client.CoreV1().Pods(ns).Create(ctx, gpuPod("transcoder-1"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	first := waitPodsRunning(t, ns, "app=transcoder-1", 1)[0]
	if first.Spec.NodeName != gpuNode {
		t.Fatalf("GPU pod scheduled on %q, want %s", first.Spec.NodeName, gpuNode)
	}
	if q := first.Spec.Containers[0].Resources.Requests[gpu]; q.Value() != 1 {
		t.Errorf("GPU request defaulted to %s, want 1", q.String())
	}

	if _, err := cluster.Client.CoreV1().Pods(ns).Create(ctx, gpuPod("transcoder-2"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var cond corev1.PodCondition
	harness.Eventually(t, 60*time.Second, "transcoder-2 to be marked Unschedulable", func() (bool, error) {
		p, err := cluster.Client.CoreV1().Pods(ns).Get(ctx, "transcoder-2", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable {
				cond = c
				return true, nil
			}
		}
		return false, nil
	})
	if !strings.Contains(cond.Message, "Insufficient nvidia.com/gpu") {
		t.Errorf("PodScheduled message %q lacks %q", cond.Message, "Insufficient nvidia.com/gpu")
	}
	p, err := cluster.Client.CoreV1().Pods(ns).Get(ctx, "transcoder-2", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Status.Phase != corev1.PodPending || p.Spec.NodeName != "" {
		t.Errorf("second GPU pod: phase %s node %q, want Pending and unbound", p.Status.Phase, p.Spec.NodeName)
	}
}

// (3) Deleting a Deployment lets the garbage collector remove its ReplicaSet
// and pods via owner references.
func TestDeploymentDeletionGarbageCollects(t *testing.T) {
	ctx := context.Background()
	ns := cluster.Namespace(t)
	d, err := cluster.Client.AppsV1().Deployments(ns).Create(ctx, deployment("gc", 2), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pods := waitPodsRunning(t, ns, "app=gc", 2)
	rsList, err := cluster.Client.AppsV1().ReplicaSets(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=gc"})
	if err != nil {
		t.Fatal(err)
	}
	if len(rsList.Items) != 1 {
		t.Fatalf("%d ReplicaSets for deployment gc, want 1", len(rsList.Items))
	}
	rs := rsList.Items[0]
	if ref := metav1.GetControllerOf(&rs); ref == nil || ref.UID != d.UID {
		t.Fatalf("ReplicaSet %s is not controlled by deployment gc: %+v", rs.Name, rs.OwnerReferences)
	}
	for _, p := range pods {
		if ref := metav1.GetControllerOf(&p); ref == nil || ref.UID != rs.UID {
			t.Fatalf("pod %s is not controlled by ReplicaSet %s: %+v", p.Name, rs.Name, p.OwnerReferences)
		}
	}

	bg := metav1.DeletePropagationBackground
	if err := cluster.Client.AppsV1().Deployments(ns).Delete(ctx, "gc", metav1.DeleteOptions{PropagationPolicy: &bg}); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, 90*time.Second, "ReplicaSet "+rs.Name+" to be garbage-collected", func() (bool, error) {
		_, err := cluster.Client.AppsV1().ReplicaSets(ns).Get(ctx, rs.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true, nil
		}
		if err == nil {
			err = fmt.Errorf("ReplicaSet %s still exists", rs.Name)
		}
		return false, err
	})
	harness.Eventually(t, 90*time.Second, "pods of deployment gc to be deleted", func() (bool, error) {
		list, err := cluster.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=gc"})
		if err != nil {
			return false, err
		}
		return len(list.Items) == 0, fmt.Errorf("%d pods left", len(list.Items))
	})
}

// (4) A CRD shipped in a helm chart's crds/ dir is installed, served, and
// its schema descriptions reach kubectl explain through OpenAPI.
func TestHelmInstalledCRDIsServedAndExplained(t *testing.T) {
	ctx := context.Background()
	ns := cluster.Namespace(t)
	const crd = "widgets.e2e.portcullis.dev"
	t.Cleanup(func() {
		// helm never deletes CRDs from crds/; this test owns this one.
		_, _ = cluster.Run("kubectl", nil, "delete", "crd", crd, "--ignore-not-found", "--wait=true", "--timeout=60s")
	})
	release := "widgets"
	cluster.Helm(t, "install", release, testdata("charts", "widget-crd"), "--namespace", ns, "--wait", "--timeout", "60s")
	out := cluster.Helm(t, "status", release, "--namespace", ns)
	if !strings.Contains(out, "STATUS: deployed") {
		t.Fatalf("helm status:\n%s", out)
	}
	cluster.Kubectl(t, "wait", "--for=condition=Established", "crd/"+crd, "--timeout=60s")
	// The chart's template (a ConfigMap) was rendered with the release values.
	cm, err := cluster.Client.CoreV1().ConfigMaps(ns).Get(ctx, release+"-widget-defaults", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("chart ConfigMap: %v", err)
	}
	if cm.Data["size"] != "3" {
		t.Errorf("chart ConfigMap size = %q, want 3", cm.Data["size"])
	}

	// Served: create and read back a Widget with a typed, validated field.
	cluster.Kubectl(t, "-n", ns, "apply", "-f", testdata("widget.yaml"))
	got := cluster.Kubectl(t, "-n", ns, "get", "widget", "sample", "-o", "jsonpath={.spec.size}")
	if got != "5" {
		t.Errorf("widget sample spec.size = %q, want 5", got)
	}
	// Validated: the schema's maximum is enforced by the apiserver.
	bad, err := cluster.Run("kubectl", nil, "-n", ns, "create", "-f", testdata("widget-invalid.yaml"))
	if err == nil || !strings.Contains(bad, "spec.size") {
		t.Errorf("an invalid widget was not rejected on spec.size: err=%v out=%s", err, bad)
	}

	// Explained: OpenAPI publication of a new CRD is asynchronous; poll.
	var explain string
	harness.Eventually(t, 60*time.Second, "kubectl explain widget.spec", func() (bool, error) {
		out, err := cluster.Run("kubectl", nil, "explain", "widgets.spec", "--api-version=e2e.portcullis.dev/v1alpha1")
		explain = out
		if err != nil {
			return false, err
		}
		if !strings.Contains(out, "How many sprockets a widget turns.") {
			return false, fmt.Errorf("field description not in output:\n%s", out)
		}
		return true, nil
	})
	for _, want := range []string{"KIND:       Widget", "size\t<integer>", "DESCRIPTION:", "Desired state of the widget."} {
		if !strings.Contains(explain, want) {
			t.Errorf("kubectl explain output lacks %q:\n%s", want, explain)
		}
	}
}

// (5) A restricted identity is denied until a Role and RoleBinding grant it
// exactly what it needs, and remains denied for everything else.
func TestRBACRestrictedServiceAccount(t *testing.T) {
	ctx := context.Background()
	ns := cluster.Namespace(t)
	kc := cluster.KubeconfigForServiceAccount(t, ns, "reader")
	sa := harness.ClientFor(t, kc)

	if _, err := sa.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("list configmaps before any grant: err = %v, want Forbidden", err)
	}
	if out, err := cluster.Run("kubectl", nil, "--kubeconfig", kc, "-n", ns, "get", "configmaps"); err == nil || !strings.Contains(out, "forbidden") {
		t.Fatalf("kubectl as the ServiceAccount was not forbidden: err=%v out=%s", err, out)
	}

	grant(t, ns, "configmap-reader", []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"get", "list", "watch"}}},
		rbacv1.Subject{Kind: rbacv1.ServiceAccountKind, Name: "reader", Namespace: ns})

	harness.Eventually(t, 30*time.Second, "the ServiceAccount to list configmaps", func() (bool, error) {
		_, err := sa.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{})
		return err == nil, err
	})
	if out, err := cluster.Run("kubectl", nil, "--kubeconfig", kc, "-n", ns, "get", "configmaps", "kube-root-ca.crt", "-o", "name"); err != nil || strings.TrimSpace(out) != "configmap/kube-root-ca.crt" {
		t.Errorf("kubectl get configmap as the ServiceAccount: err=%v out=%s", err, out)
	}
	// Least privilege: the grant covers reading configmaps in ns only.
	denied(t, "create configmap", func() error {
		_, err := sa.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "x"}}, metav1.CreateOptions{})
		return err
	})
	denied(t, "list secrets", func() error { _, err := sa.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{}); return err })
	denied(t, "list configmaps in kube-system", func() error {
		_, err := sa.CoreV1().ConfigMaps("kube-system").List(ctx, metav1.ListOptions{})
		return err
	})
}

// (5b) The same for a client-certificate user authorised through a group.
func TestRBACRestrictedCertificateUser(t *testing.T) {
	ctx := context.Background()
	ns := cluster.Namespace(t)
	user := fmt.Sprintf("e2e-user-%06d", rand.IntN(1000000))
	group := "portcullis:e2e-pod-readers"
	kc := cluster.KubeconfigForUser(t, user, group)
	u := harness.ClientFor(t, kc)

	if _, err := u.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("list pods before any grant: err = %v, want Forbidden", err)
	} else if !strings.Contains(err.Error(), user) {
		t.Errorf("Forbidden error does not name user %s: %v", user, err)
	}
	// kubectl auth can-i answers "no" and exits 1 when denied.
	if out, err := cluster.Run("kubectl", nil, "--kubeconfig", kc, "auth", "can-i", "list", "pods", "-n", ns); err == nil || strings.TrimSpace(out) != "no" {
		t.Fatalf("kubectl auth can-i as %s before the grant: err=%v out=%q", user, err, out)
	}
	grant(t, ns, "pod-reader", []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"list"}}},
		rbacv1.Subject{Kind: rbacv1.GroupKind, Name: group, APIGroup: rbacv1.GroupName})
	harness.Eventually(t, 30*time.Second, "the user to list pods", func() (bool, error) {
		_, err := u.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		return err == nil, err
	})
	denied(t, "delete pods", func() error {
		return u.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
	})
}

func grant(t *testing.T, ns, name string, rules []rbacv1.PolicyRule, subject rbacv1.Subject) {
	t.Helper()
	ctx := context.Background()
	rbac := cluster.Client.RbacV1()
	if _, err := rbac.Roles(ns).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: rules}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := rbac.RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: name},
		Subjects:   []rbacv1.Subject{subject},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func denied(t *testing.T, what string, do func() error) {
	t.Helper()
	if err := do(); !apierrors.IsForbidden(err) {
		t.Errorf("%s: err = %v, want Forbidden", what, err)
	}
}

// Mailpit accepts SMTP and serves the message over its REST API.
func TestMailpitReceivesMail(t *testing.T) {
	smtpAddr := cluster.Env["PORTCULLIS_E2E_MAILPIT_SMTP"]
	api := cluster.Env["PORTCULLIS_E2E_MAILPIT_API"]
	if smtpAddr == "" || api == "" {
		t.Fatalf("e2e/cluster env lacks the Mailpit addresses: %v", cluster.Env)
	}
	subject := fmt.Sprintf("portcullis e2e %d", time.Now().UnixNano())
	msg := "From: portcullis@example.test\r\nTo: admin@example.test\r\nSubject: " + subject + "\r\n\r\nhello from the e2e harness\r\n"
	if err := smtp.SendMail(smtpAddr, nil, "portcullis@example.test", []string{"admin@example.test"}, []byte(msg)); err != nil {
		t.Fatalf("SMTP to Mailpit at %s: %v", smtpAddr, err)
	}
	harness.Eventually(t, 20*time.Second, "Mailpit to list the message", func() (bool, error) {
		resp, err := http.Get(api + "/api/v1/search?query=" + url.QueryEscape(`subject:"`+subject+`"`))
		if err != nil {
			return false, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return false, fmt.Errorf("HTTP %d", resp.StatusCode)
		}
		var body struct {
			Messages []struct {
				Subject string
				To      []struct{ Address string }
			} `json:"messages"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			return false, err
		}
		for _, m := range body.Messages {
			if m.Subject == subject && len(m.To) == 1 && m.To[0].Address == "admin@example.test" {
				return true, nil
			}
		}
		return false, fmt.Errorf("%d messages, none with the subject", len(body.Messages))
	})
}
