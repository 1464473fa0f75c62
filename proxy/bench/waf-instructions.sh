#!/usr/bin/env bash
# User-space instructions per request of the edge with its WAF off and on, counted by
# callgrind on waf.sh's benign workload (a Jellyfin client's session, every request new):
# the A/B measure of the WAF's cost in the edge when requests/s and CPU time are too noisy to
# compare (this shared VM moves them by up to 2x from run to run).
#
# One Portcullis worker at a time runs under callgrind in front of an nginx origin; wrk (32
# keep-alive connections, waf-workload.sh's script) warms it up, the counters are zeroed,
# wrk runs again, and the script prints the instructions per request of the whole process,
# then what the WAF adds, the engine's parts of it, and how many the WAF could add for
# the edge to keep 0.8x of its requests/s (a quarter of the edge's own, if time followed
# instructions). The TLS handshakes are counted apart: wrk opens its 32 connections anew for
# the measured run, and their fixed cost, spread over the requests, would weigh twice as
# much on the slower WAF edge, which serves half as many. Kernel time is not counted. Under callgrind the edge serves a few hundred
# requests per second; the counts repeat within about 10% (the ids are random, and what the
# thread remembers of values and rules depends on how many requests came before).
#
# Needs: wrk, nginx, openssl, valgrind, the CRS v4 rules (CRS_DIR, as waf.sh) and the release
# build (see waf.sh). Usage: proxy/bench/waf-instructions.sh [seconds per count, default 10]
set -euo pipefail

DURATION="${1:-10}"
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
CRS_DIR="${CRS_DIR:-$(cd "$ROOT/.." && pwd)/shared/testdata/crs}"
[ -d "$CRS_DIR/rules" ] || { echo "missing: a CRS v4 release at $CRS_DIR (set CRS_DIR)" >&2; exit 1; }
bench_init waf-instructions wrk nginx openssl valgrind callgrind_control callgrind_annotate taskset

bench_cert
bench_origin 18280 'location / { return 200 "ok\n"; }'
# shellcheck source=waf-workload.sh
source "$(dirname "$0")/waf-workload.sh"
edge_document 28443 28090 18280 >"$WORK/off.yaml"
waf_document 29443 29090 18280 >"$WORK/on.yaml"
write_waf_requests "$WORK/requests.lua"
wait_port 18280

# count LABEL PORT CONFIG: prints LABEL's instructions per request; leaves them, and the
# engine's, in $WORK/LABEL.count.
count() {
  local label=$1 port=$2 config=$3 proxy out reqs file
  taskset -c "$PROXY_CPU" valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$WORK/callgrind.$label" "$BIN" --config "$config" --threads 1 \
    >/dev/null 2>"$WORK/$label.err" &
  proxy=$!
  PIDS+=("$proxy")
  # Starting under valgrind takes a while.
  for _ in 1 2 3 4 5 6 7 8 9 10; do wait_port "$port" 2>/dev/null && break; done
  wait_port "$port"
  callgrind_control -i on "$proxy" >/dev/null 2>&1
  taskset -c "$LOAD_CPUS" wrk -t1 -c32 -d4s -s "$WORK/requests.lua" \
    "https://127.0.0.1:$port/" -- benign >/dev/null
  callgrind_control -z "$proxy" >/dev/null 2>&1
  out=$(taskset -c "$LOAD_CPUS" wrk -t1 -c32 -d"${DURATION}s" -s "$WORK/requests.lua" \
    "https://127.0.0.1:$port/" -- benign)
  callgrind_control -d "$proxy" >/dev/null 2>&1
  kill "$proxy" 2>/dev/null || true
  wait "$proxy" 2>/dev/null || true
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  # The dump made after the measured run (callgrind writes what is left at exit apart).
  file="$WORK/callgrind.$label.1"
  [ -s "$file" ] || { echo "callgrind left no dump for $label: $(tail -3 "$WORK/$label.err")" >&2; exit 1; }
  [ "${reqs:-0}" -gt 0 ] || { echo "wrk sent no request to $label" >&2; exit 1; }
  callgrind_annotate --inclusive=yes "$file" 2>/dev/null | awk -v n="$reqs" '
    function per(v) { gsub(",", "", v); return v / n }
    /PROGRAM TOTALS/ { total = per($1) }
    /tls::boringssl_openssl::server::handshake::\{\{closure\}\} / && !tls { tls = per($1) }
    /waf::transaction::Transaction::run_phase / && !phases { phases = per($1) }
    /waf::transaction::Transaction::new / && !start { start = per($1) }
    /drop_in_place<portcullis_waf::transaction::Transaction> / && !end { end = per($1) }
    END { printf "%d %.0f %.0f %.0f %.0f %.0f\n", n, total - tls, phases, start, end, tls }' \
    >"$WORK/$label.count"
  read -r reqs total _ _ _ tls <"$WORK/$label.count"
  printf '%-10s %7d requests   %8.0f instructions/request (and %.0f of TLS handshakes)\n' \
    "$label" "$reqs" "$total" "$tls"
}

echo "User-space instructions per request, benign session (callgrind):"
count off 28443 "$WORK/off.yaml"
count on 29443 "$WORK/on.yaml"
read -r _ off _ <"$WORK/off.count"
read -r _ on phases start end _ <"$WORK/on.count"
awk -v off="$off" -v on="$on" -v phases="$phases" -v start="$start" -v end="$end" 'BEGIN {
  printf "the WAF adds                  %8.0f (on / off %.2fx)\n", on - off, on / off
  printf "  the engine, its rule phases %8.0f\n", phases
  printf "  a transaction, start and end%8.0f %.0f\n", start, end
  printf "for 0.8x of the edge, at most %8.0f\n", off / 4
}'
