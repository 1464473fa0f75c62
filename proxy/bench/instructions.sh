#!/usr/bin/env bash
# User-space instructions per request of the edge, counted by callgrind: the A/B measure for
# changes on the request path when requests/s and CPU time are too noisy to compare (a shared
# machine; a VM without hardware counters for `perf stat -e instructions`).
#
# One Portcullis worker runs under callgrind (valgrind) in front of an nginx origin, as in
# run.sh. For HTTPS /small (proxied) and the plain-HTTP 308, wrk (8 keep-alive connections)
# warms the path up, the counters are zeroed, wrk runs again, and the script prints the
# instructions per request: the whole process, then the edge's hooks (inclusive) and
# OpenSSL's reads and writes. Then the same HTTPS request is counted, the same way, through
# the bare Pingora proxy (proxy/examples/bare_pingora.rs) and through nginx (one process,
# run.sh's proxy configuration): what Pingora's proxy path takes by itself, and what nginx
# takes for the same job. Kernel time is not counted; copies done with `rep movsb` count
# one instruction per iteration, so memcpy weighs more here than in time. Under callgrind the
# proxy serves a few hundred requests per second; the counts repeat within about 1%.
#
# Needs: wrk, nginx, openssl, valgrind (apt-get install -y wrk nginx valgrind), and the
# release builds (see run.sh). Usage: proxy/bench/instructions.sh [seconds per run, default 15]
set -euo pipefail

DURATION="${1:-15}"
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
bench_init instructions wrk nginx openssl valgrind callgrind_control callgrind_annotate taskset
need_bare_pingora

bench_cert
mkdir -p "$WORK/www"
printf 'hello from the origin\n' >"$WORK/www/small"
bench_origin 18080
edge_document 19443 19090 18080 19081 >"$WORK/edge.yaml"
wait_port 18080

# under_callgrind LABEL PORT... -- COMMAND...: starts COMMAND on the proxy CPU under
# callgrind, counting nothing yet; its pid in PROXY once it listens on every PORT.
under_callgrind() {
  local label=$1 ports=()
  shift
  while [ "$1" != -- ]; do ports+=("$1"); shift; done
  shift
  taskset -c "$PROXY_CPU" valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$WORK/callgrind.%p" "$@" >/dev/null 2>"$WORK/$label.err" &
  PROXY=$!
  PIDS+=("$PROXY")
  # Starting under valgrind takes a while.
  for port in "${ports[@]}"; do
    for _ in 1 2 3 4 5 6; do wait_port "$port" 2>/dev/null && break; done
    wait_port "$port"
  done
}

# stop_counted: ends the process under callgrind before the next one takes the CPU.
stop_counted() {
  kill "$PROXY" 2>/dev/null || true
  wait "$PROXY" 2>/dev/null || true
}

# The bench's nginx as one process (no master), so that callgrind follows its worker.
nginx_proxy_config "master_process off;" >"$WORK/nginx-proxy.conf"

# count NAME URL
count() {
  local name=$1 url=$2 out reqs file
  callgrind_control -i on "$PROXY" >/dev/null 2>&1
  taskset -c "$LOAD_CPUS" wrk -t1 -c8 -d3s -H "Host: $HOST" "$url" >/dev/null
  callgrind_control -z "$PROXY" >/dev/null 2>&1
  out=$(taskset -c "$LOAD_CPUS" wrk -t1 -c8 -d"${DURATION}s" -H "Host: $HOST" "$url")
  callgrind_control -d "$PROXY" >/dev/null 2>&1
  callgrind_control -i off "$PROXY" >/dev/null 2>&1
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  file=$(find "$WORK" -name "callgrind.$PROXY.*" -newer "$WORK/edge.yaml" -printf '%T@ %p\n' |
    sort -n | tail -1 | cut -d' ' -f2)
  callgrind_annotate --inclusive=yes "$file" 2>/dev/null | awk -v name="$name" -v n="$reqs" '
    function per(v) { gsub(",", "", v); return v / n }
    /PROGRAM TOTALS/ { printf "%-22s %7d requests   %8.0f instructions/request\n", name, n, per($1) }
    /Edge as pingora_proxy::proxy_trait::ProxyHttp>::[a-z_]+(::\{\{closure\}\})? / {
      hook = $0; sub(/.*ProxyHttp>::/, "", hook); sub(/::\{\{closure\}\}.*/, "", hook); sub(/ .*/, "", hook)
      if (!(hook in seen)) { seen[hook] = 1; printf "    %-44s %8.0f\n", "edge " hook, per($1) }
    }
    /\?\?\?:(SSL_read(_ex)?|SSL_write(_ex)?|portcullis_proxy::access_log::write_line) / {
      f = $0; sub(/.*\?\?\?:/, "", f); sub(/ .*/, "", f)
      printf "    %-44s %8.0f\n", f, per($1)
    }'
}

echo "User-space instructions per request (callgrind; inclusive costs below each total):"
under_callgrind portcullis 19443 19081 -- "$BIN" --config "$WORK/edge.yaml" --threads 1
count "https /small" "https://127.0.0.1:19443/small"
count "http 308" "http://127.0.0.1:19081/small"
stop_counted
under_callgrind bare-pingora 21443 -- \
  "$BARE" 127.0.0.1:21443 "$WORK/tls.crt" "$WORK/tls.key" 127.0.0.1:18080 1
count "bare Pingora https" "https://127.0.0.1:21443/small"
stop_counted
under_callgrind nginx 18443 -- nginx -c "$WORK/nginx-proxy.conf" -p "$WORK"
count "nginx https" "https://127.0.0.1:18443/small"
stop_counted
