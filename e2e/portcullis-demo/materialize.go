package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// The CRS release the demo gives the edge when ../shared/testdata has none: the Go module
// that embeds the unmodified OWASP CRS v4 rule files.
const (
	crsModule  = "github.com/corazawaf/coraza-coreruleset/v4"
	crsVersion = "v4.25.0"
)

// materialize writes a container's volumes under the demo root, as the kubelet would mount
// them: Secret and ConfigMap keys as files, claims as directories shared by every pod that
// mounts them at the same path, and the CRS rules where the edge's init container copies
// them. It returns each mount path's local directory.
func (d *Demo) materialize(ctx context.Context, pod corev1.PodSpec, container corev1.Container) (map[string]string, error) {
	volumes := map[string]corev1.Volume{}
	for _, volume := range pod.Volumes {
		volumes[volume.Name] = volume
	}
	mounts := map[string]string{}
	for _, mount := range container.VolumeMounts {
		volume, ok := volumes[mount.Name]
		if !ok {
			return nil, fmt.Errorf("mount %s names no volume", mount.Name)
		}
		dir := filepath.Join(d.root, mount.MountPath)
		mounts[mount.MountPath] = dir
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		var err error
		switch {
		case volume.Secret != nil:
			var secret *corev1.Secret
			secret, err = d.cluster.Client.CoreV1().Secrets(d.opts.Namespace).Get(ctx, volume.Secret.SecretName, metav1.GetOptions{})
			if err == nil {
				err = writeKeys(dir, secret.Data, volume.Secret.Items)
			}
		case volume.ConfigMap != nil:
			var configMap *corev1.ConfigMap
			configMap, err = d.cluster.Client.CoreV1().ConfigMaps(d.opts.Namespace).Get(ctx, volume.ConfigMap.Name, metav1.GetOptions{})
			if err == nil {
				data := map[string][]byte{}
				for key, value := range configMap.Data {
					data[key] = []byte(value)
				}
				err = writeKeys(dir, data, volume.ConfigMap.Items)
			}
		case volume.EmptyDir != nil && filledByInit(pod, mount.Name):
			err = d.copyRules(dir)
		case volume.EmptyDir != nil, volume.PersistentVolumeClaim != nil:
			// A directory: already made.
		default:
			err = fmt.Errorf("volume %s: a kind the demo does not reproduce", mount.Name)
		}
		if err != nil {
			return nil, fmt.Errorf("volume %s at %s: %w", mount.Name, mount.MountPath, err)
		}
	}
	return mounts, nil
}

// writeKeys writes data's keys (or only items, at their paths) into dir.
func writeKeys(dir string, data map[string][]byte, items []corev1.KeyToPath) error {
	paths := map[string]string{}
	for key := range data {
		paths[key] = key
	}
	if len(items) > 0 {
		paths = map[string]string{}
		for _, item := range items {
			paths[item.Key] = item.Path
		}
	}
	for key, path := range paths {
		value, ok := data[key]
		if !ok {
			return fmt.Errorf("no key %s", key)
		}
		file := filepath.Join(dir, path)
		if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
			return err
		}
		if err := replaceFile(file, value, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// filledByInit says whether an init container writes into the volume (the edge's CRS copy).
func filledByInit(pod corev1.PodSpec, volume string) bool {
	for _, init := range pod.InitContainers {
		for _, mount := range init.VolumeMounts {
			if mount.Name == volume && !mount.ReadOnly {
				return true
			}
		}
	}
	return false
}

// claimOf is the claim behind a pod's volume, or "".
func claimOf(pod corev1.PodSpec, volume string) string {
	for _, v := range pod.Volumes {
		if v.Name == volume && v.PersistentVolumeClaim != nil {
			return v.PersistentVolumeClaim.ClaimName
		}
	}
	return ""
}

// copyRules puts the CRS into dir in the release layout (crs-setup.conf.example and
// rules/): from ../shared/testdata/crs when this checkout has it, else from the Go module.
func (d *Demo) copyRules(dir string) error {
	if _, err := os.Stat(filepath.Join(dir, "crs-setup.conf.example")); err == nil {
		return nil // copied before
	}
	shared := filepath.Join(d.opts.RepoDir, "..", "shared", "testdata", "crs")
	if _, err := os.Stat(filepath.Join(shared, "crs-setup.conf.example")); err == nil {
		if err := copyTree(filepath.Join(shared, "rules"), filepath.Join(dir, "rules")); err != nil {
			return err
		}
		return copyFile(filepath.Join(shared, "crs-setup.conf.example"), filepath.Join(dir, "crs-setup.conf.example"))
	}
	module, err := downloadModule(crsModule, crsVersion)
	if err != nil {
		return err
	}
	if err := copyTree(filepath.Join(module, "rules", "@owasp_crs"), filepath.Join(dir, "rules")); err != nil {
		return err
	}
	return copyFile(filepath.Join(module, "rules", "@crs-setup.conf.example"), filepath.Join(dir, "crs-setup.conf.example"))
}

// downloadModule fetches a Go module through the module proxy and returns its directory.
func downloadModule(path, version string) (string, error) {
	out, err := exec.Command("go", "mod", "download", "-json", path+"@"+version).Output()
	if err != nil {
		return "", fmt.Errorf("go mod download %s@%s: %w", path, version, err)
	}
	var module struct{ Dir string }
	if err := json.Unmarshal(out, &module); err != nil || module.Dir == "" {
		return "", fmt.Errorf("go mod download %s@%s said %s", path, version, out)
	}
	return module.Dir, nil
}

func copyTree(from, to string) error {
	return filepath.WalkDir(from, func(path string, entry fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		target := filepath.Join(to, strings.TrimPrefix(path, from))
		if entry.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		return copyFile(path, target)
	})
}

func copyFile(from, to string) error {
	data, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, data, 0o644)
}

// localPath maps a path inside the pod to its local place, when a mount holds it.
func localPath(path string, mounts map[string]string) (string, bool) {
	// The longest mount path wins, as in a container.
	points := make([]string, 0, len(mounts))
	for point := range mounts {
		points = append(points, point)
	}
	sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
	for _, point := range points {
		if path == point {
			return mounts[point], true
		}
		if rest, ok := strings.CutPrefix(path, strings.TrimSuffix(point, "/")+"/"); ok {
			return filepath.Join(mounts[point], rest), true
		}
	}
	return path, false
}

// rewriteArgs maps the paths in a command line (`/x` or `--flag=/x`) to their local places.
func rewriteArgs(args []string, mounts map[string]string) []string {
	out := make([]string, len(args))
	for i, arg := range args {
		if flag, value, ok := strings.Cut(arg, "="); ok && strings.HasPrefix(flag, "-") {
			local, _ := localPath(value, mounts)
			out[i] = flag + "=" + local
		} else {
			out[i], _ = localPath(arg, mounts)
		}
	}
	return out
}

// localizeEdgeDocument rewrites the edge document in file: every path inside a mount moves
// to its local place, and the dotted keys in addresses get their local values; those in
// optional too when the document has them and a local value is known.
func localizeEdgeDocument(file string, mounts map[string]string, addresses, optional map[string]string) error {
	text, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	var document map[string]any
	if err := yaml.Unmarshal(text, &document); err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	localized := localizeValue(document, mounts).(map[string]any)
	for dotted, value := range optional {
		if _, has := lookup(localized, dotted); has && value != "" {
			addresses[dotted] = value
		}
	}
	for dotted, value := range addresses {
		keys := strings.Split(dotted, ".")
		parent := localized
		for _, key := range keys[:len(keys)-1] {
			child, ok := parent[key].(map[string]any)
			if !ok {
				return fmt.Errorf("%s: the document has no %s", file, dotted)
			}
			parent = child
		}
		last := keys[len(keys)-1]
		if _, ok := parent[last]; !ok {
			return fmt.Errorf("%s: the document has no %s", file, dotted)
		}
		parent[last] = value
	}
	out, err := yaml.Marshal(localized)
	if err != nil {
		return err
	}
	return replaceFile(file, out, 0o644)
}

// lookup finds a dotted key in a document.
func lookup(document map[string]any, dotted string) (any, bool) {
	var value any = document
	for _, key := range strings.Split(dotted, ".") {
		object, ok := value.(map[string]any)
		if !ok {
			return nil, false
		}
		if value, ok = object[key]; !ok {
			return nil, false
		}
	}
	return value, true
}

// replaceFile writes file whole or not at all (a new file renamed over the old), so that the
// edge, which polls its files, never reads half of one.
func replaceFile(file string, data []byte, mode os.FileMode) error {
	next := file + ".next"
	if err := os.WriteFile(next, data, mode); err != nil {
		return err
	}
	return os.Rename(next, file)
}

func localizeValue(value any, mounts map[string]string) any {
	switch v := value.(type) {
	case map[string]any:
		for key, child := range v {
			v[key] = localizeValue(child, mounts)
		}
		return v
	case []any:
		for i, child := range v {
			v[i] = localizeValue(child, mounts)
		}
		return v
	case string:
		local, _ := localPath(v, mounts)
		return local
	default:
		return v
	}
}

// stampOf names the versions of the Secrets and ConfigMaps a container mounts: when it
// changes, the kubelet would update the files.
func (d *Demo) stampOf(ctx context.Context, pod corev1.PodSpec, container corev1.Container) (string, error) {
	volumes := map[string]corev1.Volume{}
	for _, volume := range pod.Volumes {
		volumes[volume.Name] = volume
	}
	var stamp strings.Builder
	for _, mount := range container.VolumeMounts {
		volume := volumes[mount.Name]
		switch {
		case volume.Secret != nil:
			secret, err := d.cluster.Client.CoreV1().Secrets(d.opts.Namespace).Get(ctx, volume.Secret.SecretName, metav1.GetOptions{})
			if err != nil {
				return "", err
			}
			fmt.Fprintf(&stamp, "secret/%s@%s ", secret.Name, secret.ResourceVersion)
		case volume.ConfigMap != nil:
			configMap, err := d.cluster.Client.CoreV1().ConfigMaps(d.opts.Namespace).Get(ctx, volume.ConfigMap.Name, metav1.GetOptions{})
			if err != nil {
				return "", err
			}
			fmt.Fprintf(&stamp, "configmap/%s@%s ", configMap.Name, configMap.ResourceVersion)
		}
	}
	return stamp.String(), nil
}
