#!/usr/bin/env bash
# What single CRS rules cost per request, counted by callgrind: the engine bench
# (waf/benches/engine.rs) runs one case under callgrind, counting only the requests
# (`engine::inspect`), once with every rule and once per group of rules removed
# (`WAF_BENCH_RULES="SecRuleRemoveById ..."`); a group's cost is what the requests take
# with it minus without it. Instruction counts do not depend on the machine's other load, so
# two runs of the same build agree to a few instructions: the A/B measure for the engine's
# per-rule work, where timings of a few hundred nanoseconds are noise.
#
# The default groups are the rules a benign request runs whatever its values (they match,
# or read `TX`, so no memory of values can pass over them), then the fixed part: every
# rule after the setup rules removed.
#
# Needs: valgrind (apt-get install -y valgrind). Usage:
#   waf/bench/rule-costs.sh [CASE [REQUESTS [GROUP...]]]
# CASE is a text the bench's case names contain (default "bare"), REQUESTS the requests
# counted (default 1000), each GROUP a quoted list of rule ids or ranges (as
# SecRuleRemoveById takes them), e.g.
#   waf/bench/rule-costs.sh session 500 "920450" "942100 942200"
set -euo pipefail

CASE="${1:-bare}"
REQUESTS="${2:-1000}"
shift $(($# < 2 ? $# : 2))
GROUPS_=("$@")
if [ ${#GROUPS_[@]} -eq 0 ]; then
  GROUPS_=(
    "920450"
    "949052 949152 949060 949160 949059 949159"
    "941010"
    "920170 920171"
    "920180 920181"
    "901340"
    "905110"
    "920250"
    "949110 949111"
    "922100 922110 922140"
    "920280 920539 920620 920640 920660"
    "905000-999999"
  )
fi

for tool in valgrind callgrind_annotate cargo; do
  command -v "$tool" >/dev/null || { echo "rule-costs.sh: needs $tool" >&2; exit 1; }
done
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BENCH=$(cd "$ROOT" && cargo bench -p portcullis-waf --bench engine --no-run \
  --message-format=json 2>/dev/null |
  sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
[ -x "$BENCH" ] || { echo "rule-costs.sh: the engine bench did not build" >&2; exit 1; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# count RULES: instructions per counted request with RULES loaded after the CRS. The bench
# sends a tenth of the requests again first to warm up; all of them are counted.
count() {
  local out="$WORK/callgrind.out"
  WAF_BENCH_RULES="$1" WAF_BENCH_MEMORY=on WAF_BENCH_CASE="$CASE" \
    WAF_BENCH_ITERS="$REQUESTS" valgrind --tool=callgrind --callgrind-out-file="$out" \
    --toggle-collect='engine::inspect*' "$BENCH" --bench >/dev/null 2>&1
  local total
  total=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')
  echo $((total / (REQUESTS + REQUESTS / 10 + 1)))
}

all=$(count "")
printf 'case "%s", %s requests: %s instructions per request with every rule\n\n' \
  "$CASE" "$REQUESTS" "$all"
printf '%-48s %12s %12s %7s\n' "removed" "instr/req" "rule cost" "share"
for group in "${GROUPS_[@]}"; do
  without=$(count "SecRuleRemoveById $group")
  cost=$((all - without))
  printf '%-48s %12s %12s %6s%%\n' "$group" "$without" "$cost" "$((100 * cost / all))"
done
