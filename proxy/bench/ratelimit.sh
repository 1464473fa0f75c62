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
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
bench_init rl-bench wrk nginx openssl taskset redis-server

bench_cert
mkdir -p "$WORK/www"
printf 'hello from the origin\n' >"$WORK/www/small"
bench_origin 18180
taskset -c "$LOAD_CPUS" redis-server --port 16379 --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
PIDS+=($!)
echo "redis://127.0.0.1:16379/" >"$WORK/redis-url"

# document PORT_BASE [RATE LIMIT YAML]
document() {
  edge_document $(($1 + 443)) $(($1 + 90)) 18180
  [ -n "${2:-}" ] && echo "$2"
  return 0
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

for name in off memory redis; do
  start_portcullis "$name" "$WORK/$name.yaml"
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
