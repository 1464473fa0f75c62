#!/usr/bin/env bash
# The cost of rate limiting: the same Portcullis with no RateLimit on the measured path, with
# one kept in memory, and with one kept in Redis (a real redis-server), in front of the same
# origin, over HTTPS with keep-alive on loopback. Each proxy gets one worker on CPU 1; wrk,
# the origin (nginx serving a small file) and Redis share CPU 0. The limit is set so high
# that nothing is refused: what is measured is the counting. Prints requests/s, p50/p99 and
# the ratios against "off"; it never asserts a time.
#
# Needs: wrk, nginx, openssl, taskset, redis-server, and a release build:
#   CARGO_TARGET_DIR=target-proxy cargo build --release -p portcullis-proxy
# Usage: proxy/bench/ratelimit.sh [seconds per run, default 8]
set -euo pipefail

DURATION="${1:-8}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BIN="${PORTCULLIS_PROXY_BIN:-$ROOT/target-proxy/release/portcullis-proxy}"
WORK="$(mktemp -d /tmp/portcullis-rl-bench.XXXXXX)"
HOST=media.bench
PIDS=()

for tool in wrk nginx openssl taskset redis-server; do
  command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 1; }
done
[ -x "$BIN" ] || { echo "missing release build: $BIN" >&2; exit 1; }

cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

CPUS=$(nproc)
PROXY_CPU=$((CPUS > 1 ? 1 : 0))
LOAD_CPUS="0"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=$HOST" -addext "subjectAltName=DNS:$HOST" \
  -keyout "$WORK/tls.key" -out "$WORK/tls.crt" 2>/dev/null
mkdir -p "$WORK/www"
printf 'hello from the origin\n' >"$WORK/www/small"
cat >"$WORK/origin.conf" <<EOF
user root;
worker_processes 1;
daemon off;
pid $WORK/origin.pid;
error_log $WORK/origin.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:18180; root $WORK/www; }
}
EOF
taskset -c "$LOAD_CPUS" nginx -c "$WORK/origin.conf" -p "$WORK" &
PIDS+=($!)
taskset -c "$LOAD_CPUS" redis-server --port 16379 --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
PIDS+=($!)
echo "redis://127.0.0.1:16379/" >"$WORK/redis-url"

# document PORT_BASE [RATE LIMIT YAML]
document() {
  local base=$1 limits=${2:-}
  cat <<EOF
apiVersion: edge.portcullis.dev/v1
kind: EdgeConfig
source: { namespace: bench, name: bench, generation: 1 }
app: { kind: Jellyfin, displayName: Bench }
host: $HOST
listen: { https: "127.0.0.1:$((base + 443))", admin: "127.0.0.1:$((base + 90))" }
tls: { certFile: $WORK/tls.crt, keyFile: $WORK/tls.key }
limits:
  maxUriBytes: 8192
  maxHeaderCount: 100
  maxHeaderBytes: 64Ki
  maxBody: 64Mi
  allowedMethods: [GET, HEAD, POST]
  maxConnections: 10000
  maxConnectionsPerIp: 10000
upstream: { address: "127.0.0.1:18180", poolSize: 128 }
$limits
EOF
}

# A limit on the measured path that never refuses (a million a second per address).
limit() {
  cat <<EOF
rateLimits:
  - name: api
    pathPrefixes: [/small]
    key: Ip
    ipv6PrefixLength: 64
    limit: 1000000
    period: 1s
    burst: 1000000
    status: 429
    retryAfter: true
EOF
  [ -n "${1:-}" ] && echo "    redisUrlFile: $1"
  return 0
}

document 21000 >"$WORK/off.yaml"
document 22000 "$(limit)" >"$WORK/memory.yaml"
document 23000 "$(limit "$WORK/redis-url")" >"$WORK/redis.yaml"

wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "port $1 never opened" >&2
  return 1
}

for name in off memory redis; do
  taskset -c "$PROXY_CPU" "$BIN" --config "$WORK/$name.yaml" --threads 1 >/dev/null 2>"$WORK/$name.err" &
  PIDS+=($!)
done
for port in 18180 16379 21443 22443 23443; do wait_port "$port"; done
sleep 1

RESULTS="$WORK/results.tsv"
: >"$RESULTS"
run() {
  local name=$1 port=$2 out
  out=$(taskset -c "$LOAD_CPUS" wrk -t1 -c32 -d"${DURATION}s" --latency -H "Host: $HOST" "https://127.0.0.1:$port/small")
  printf '%s\t%s\t%s\t%s\n' "$name" \
    "$(awk '/Requests\/sec/ {print $2}' <<<"$out")" \
    "$(awk '$1 == "50%" {print $2}' <<<"$out")" \
    "$(awk '$1 == "99%" {print $2}' <<<"$out")" >>"$RESULTS"
}
# Twice each, interleaved, so other load on the machine does not favour one.
for _ in 1 2; do
  run off 21443
  run memory 22443
  run redis 23443
done
if grep -q "Redis cannot answer" "$WORK/redis.err"; then
  echo "warning: the Redis instance fell back to memory during the run" >&2
fi

echo
echo "| rate limiting | req/s | p50 | p99 |"
echo "| --- | ---: | ---: | ---: |"
awk -F'\t' '{ printf "| %s | %s | %s | %s |\n", $1, $2, $3, $4 }' "$RESULTS"
echo
echo "Ratios of the mean requests/s against off:"
awk -F'\t' '{ sum[$1] += $2; n[$1]++ }
  END { off = sum["off"] / n["off"]
        printf "  memory %.2fx   redis %.2fx\n", (sum["memory"] / n["memory"]) / off, (sum["redis"] / n["redis"]) / off }' "$RESULTS"
