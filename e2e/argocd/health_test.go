// Package argocd checks examples/gitops/argocd/health-checks.yaml: the Lua health checks
// Argo CD needs for the Portcullis kinds, run in gopher-lua (the interpreter Argo CD embeds)
// on objects in the shapes the operator writes.
package argocd

import (
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"

	lua "github.com/yuin/gopher-lua"
	"sigs.k8s.io/yaml"
)

const keyPrefix = "resource.customizations.health.portcullis.dev_"

var kinds = []string{"MediaServer", "AccessPolicy", "WafRuleSet", "RateLimit"}

func healthChecks(t *testing.T) map[string]string {
	_, file, _, _ := runtime.Caller(0)
	path := filepath.Join(filepath.Dir(file), "..", "..", "examples", "gitops", "argocd", "health-checks.yaml")
	text, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var patch struct{ Data map[string]string }
	if err := yaml.Unmarshal(text, &patch); err != nil {
		t.Fatal(err)
	}
	return patch.Data
}

// health runs a check on an object as Argo CD does: the object as the global `obj`, the
// script's return value a table with status and message.
func health(t *testing.T, script, object string) (status, message string) {
	t.Helper()
	var decoded map[string]any
	if err := json.Unmarshal([]byte(object), &decoded); err != nil {
		t.Fatal(err)
	}
	state := lua.NewState(lua.Options{SkipOpenLibs: false})
	defer state.Close()
	state.SetGlobal("obj", toLua(state, decoded))
	if err := state.DoString(script); err != nil {
		t.Fatalf("the script fails: %v", err)
	}
	result, ok := state.Get(-1).(*lua.LTable)
	if !ok {
		t.Fatalf("the script returned %v, not a table", state.Get(-1))
	}
	return result.RawGetString("status").String(), result.RawGetString("message").String()
}

// toLua converts decoded JSON the way Argo CD hands objects to Lua: objects and arrays as
// tables, numbers, strings and booleans as themselves.
func toLua(state *lua.LState, value any) lua.LValue {
	switch v := value.(type) {
	case map[string]any:
		table := state.NewTable()
		for key, child := range v {
			table.RawSetString(key, toLua(state, child))
		}
		return table
	case []any:
		table := state.NewTable()
		for _, child := range v {
			table.Append(toLua(state, child))
		}
		return table
	case string:
		return lua.LString(v)
	case float64:
		return lua.LNumber(v)
	case bool:
		return lua.LBool(v)
	default:
		return lua.LNil
	}
}

func object(generation, observed int, conditions string) string {
	status := ""
	if observed > 0 {
		status = `,"status":{"observedGeneration":` + strconv.Itoa(observed) + `,"conditions":[` + conditions + `]}`
	}
	return `{"metadata":{"name":"jellyfin","generation":` + strconv.Itoa(generation) + `}` + status + `}`
}

func condition(kind, status, reason, message string) string {
	return `{"type":"` + kind + `","status":"` + status + `","reason":"` + reason + `","message":"` + message + `"}`
}

func TestEveryKindHasTheSameCheck(t *testing.T) {
	checks := healthChecks(t)
	if len(checks) != len(kinds) {
		t.Fatalf("%d checks for %d kinds", len(checks), len(kinds))
	}
	for _, kind := range kinds {
		if checks[keyPrefix+kind] == "" || checks[keyPrefix+kind] != checks[keyPrefix+kinds[0]] {
			t.Errorf("%s: no check, or not the same as %s's", kind, kinds[0])
		}
	}
}

func TestTheChecksReadTheOperatorsConditions(t *testing.T) {
	script := healthChecks(t)[keyPrefix+"MediaServer"]
	ready := condition("Ready", "True", "Ready", "https://media.example.org is served")
	notStalled := condition("Stalled", "False", "Ready", "")
	notReconciling := condition("Reconciling", "False", "Ready", "")
	for _, c := range []struct {
		what, object, status, message string
	}{
		{"no status yet", object(1, 0, ""), "Progressing", "waiting for the operator"},
		{"ready", object(2, 2, ready+","+notReconciling+","+notStalled), "Healthy", "https://media.example.org is served"},
		{"ready for an older generation", object(3, 2, ready), "Progressing", "waiting for the operator"},
		{"rolling out", object(2, 2, condition("Ready", "False", "EdgeNotReady", "the edge has 1 of 2 replicas ready")+","+
			condition("Reconciling", "True", "EdgeNotReady", "")+","+notStalled), "Progressing", "the edge has 1 of 2 replicas ready"},
		{"stalled", object(2, 2, condition("Ready", "False", "SecretMissing", "Secret smtp-credentials not found")+","+
			condition("Stalled", "True", "SecretMissing", "Secret smtp-credentials not found")), "Degraded", "Secret smtp-credentials not found"},
	} {
		status, message := health(t, script, c.object)
		if status != c.status || message != c.message {
			t.Errorf("%s: %s %q, want %s %q", c.what, status, message, c.status, c.message)
		}
	}
}
