#!/usr/bin/env bash
# Portcullis vs nginx as a reverse proxy to the same origin, on loopback.
#
# Each proxy gets one worker on CPU 1 (taskset); wrk and the origin (an nginx serving static
# files) share CPU 0. Measured per proxy: requests/s, p50/p99 latency and proxy CPU time per
# request for small keep-alive responses at 32 and 256 connections over HTTPS (same
# certificate) and over plain HTTP (where both only answer 308, Portcullis's plain-HTTP
# listener does nothing else), large-file throughput, and peak RSS. Portcullis runs once
# more with work stealing on, to show what turning it off buys. Over HTTPS a bare Pingora
# proxy (proxy/examples/bare_pingora.rs: the same job as the bench's nginx, nothing of
# Portcullis) runs too, so the table separates what Pingora's proxy path costs from what
# the edge's layers add. The script prints a Markdown table and ratios; it never asserts a
# time.
#
# Needs: wrk, nginx, openssl, taskset (apt-get install -y wrk nginx), and release builds:
#   CARGO_TARGET_DIR=target-proxy cargo build --release -p portcullis-proxy \
#     --bin portcullis-proxy --example bare_pingora
# Usage: proxy/bench/run.sh [seconds per run, default 8]
set -euo pipefail

DURATION="${1:-8}"
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
bench_init bench wrk nginx openssl taskset
need_bare_pingora

# --- test material -------------------------------------------------------------------------
bench_cert
mkdir -p "$WORK/www"
printf 'hello from the origin\n' >"$WORK/www/small"
head -c $((256 * 1024 * 1024)) /dev/zero >"$WORK/www/large"

# --- the origin: nginx serving files on CPU 0 ------------------------------------------------
bench_origin 18080

# --- nginx as the reverse proxy, one worker on the proxy CPU -----------------------------------
nginx_proxy_config "" "  server {
    listen 127.0.0.1:18081;
    return 308 https://$HOST\$request_uri;
  }" >"$WORK/nginx-proxy.conf"

# --- Portcullis ----------------------------------------------------------------------------
edge_document 19443 19090 18080 19081 >"$WORK/edge.yaml"

RESULTS="$WORK/results.tsv"
: >"$RESULTS"

# run NAME PID URL CONNECTIONS
run() {
  local name=$1 pid=$2 url=$3 conns=$4 out
  local before after
  before=$(ticks "$pid")
  out=$(taskset -c "$LOAD_CPUS" wrk -t1 -c"$conns" -d"${DURATION}s" --latency -H "Host: $HOST" "$url")
  after=$(ticks "$pid")
  local rps p50 p99 reqs transfer
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  transfer=$(awk '/Transfer\/sec/ {print $2}' <<<"$out")
  local cpu_us read_mib cpu_ms_mib
  cpu_us=$(awk -v t=$((after - before)) -v clk="$CLK" -v n="$reqs" 'BEGIN { if (n > 0) printf "%.1f", t / clk * 1e6 / n; else print "-" }')
  read_mib=$(awk '/requests in/ {
    v = $5; sub(/read/, "", v); unit = v; gsub(/[0-9.]/, "", unit); sub(/[A-Z]+$/, "", v)
    f = (unit == "GB") ? 1024 : (unit == "MB") ? 1 : (unit == "KB") ? 1 / 1024 : 1 / 1048576
    printf "%.3f", v * f }' <<<"$out")
  cpu_ms_mib=$(awk -v t=$((after - before)) -v clk="$CLK" -v m="$read_mib" 'BEGIN { if (m > 0) printf "%.2f", t / clk * 1e3 / m; else print "-" }')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$url" "$conns" "$rps" "$p50" "$p99" "$cpu_us" "$transfer" "$cpu_ms_mib" >>"$RESULTS"
}

wait_port 18080
# Every proxy runs at once on the proxy CPU; only the one under load uses it. Running the
# contenders back to back for each workload keeps other load on the machine from favouring
# either.
taskset -c "$PROXY_CPU" nginx -c "$WORK/nginx-proxy.conf" -p "$WORK" &
NGINX_MASTER=$!
PIDS+=("$NGINX_MASTER")
sed -e 's/19443/20443/; s/19081/20081/; s/19090/20090/' "$WORK/edge.yaml" >"$WORK/edge-ws.yaml"
start_portcullis portcullis "$WORK/edge.yaml"
PORTCULLIS=$STARTED
start_portcullis portcullis-work-stealing "$WORK/edge-ws.yaml" --work-stealing
PORTCULLIS_WS=$STARTED
taskset -c "$PROXY_CPU" "$BARE" 127.0.0.1:21443 "$WORK/tls.crt" "$WORK/tls.key" 127.0.0.1:18080 1 \
  >/dev/null 2>"$WORK/bare-pingora.err" &
BARE_PINGORA=$!
PIDS+=("$BARE_PINGORA")
for port in 18443 18081 19443 19081 20443 21443; do wait_port "$port"; done
sleep 1
NGINX_WORKER=$(pgrep -P "$NGINX_MASTER" | head -1)

for workload in "https small 32" "https small 256" "http small 32" "http small 256" "https large 4"; do
  set -- $workload
  scheme=$1 path=$2 conns=$3
  if [ "$scheme" = https ]; then n=18443 p=19443; else n=18081 p=19081; fi
  run nginx "$NGINX_WORKER" "$scheme://127.0.0.1:$n/$path" "$conns"
  run portcullis "$PORTCULLIS" "$scheme://127.0.0.1:$p/$path" "$conns"
  if [ "$scheme" = https ] && [ "$path" = small ]; then
    run bare-pingora "$BARE_PINGORA" "https://127.0.0.1:21443/$path" "$conns"
  fi
  if [ "$workload" = "https small 32" ]; then
    run portcullis-work-stealing "$PORTCULLIS_WS" "https://127.0.0.1:20443/$path" "$conns"
  fi
done
: >"$WORK/rss.tsv"
echo "nginx	rss_kib	$(hwm "$NGINX_WORKER")" >>"$WORK/rss.tsv"
echo "portcullis	rss_kib	$(hwm "$PORTCULLIS")" >>"$WORK/rss.tsv"
echo "portcullis-work-stealing	rss_kib	$(hwm "$PORTCULLIS_WS")" >>"$WORK/rss.tsv"
echo "bare-pingora	rss_kib	$(hwm "$BARE_PINGORA")" >>"$WORK/rss.tsv"

echo
echo "| proxy | workload | conns | req/s | p50 | p99 | CPU µs/req | transfer/s | CPU ms/MiB |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
awk -F'\t' '{
  split($2, u, "/"); scheme = substr($2, 1, index($2, ":") - 1); path = u[4];
  printf "| %s | %s /%s | %s | %s | %s | %s | %s | %s | %s |\n", $1, scheme, path, $3, $4, $5, $6, $7, $8, $9
}' "$RESULTS"
echo
echo "| proxy | peak RSS (KiB) |"
echo "| --- | ---: |"
awk -F'\t' '{ printf "| %s | %s |\n", $1, $3 }' "$WORK/rss.tsv"
echo
echo "Ratios (Portcullis / nginx; requests/s above 1 and CPU per request below 1 favour Portcullis):"
awk -F'\t' '
  $1 == "nginx" { key = $2 " c" $3; rps[key] = $4; cpu[key] = $7; tr[key] = $8; mib[key] = $9 }
  $1 == "portcullis" {
    key = $2; sub(/19443/, "18443", key); sub(/19081/, "18081", key); key = key " c" $3
    if ($2 ~ /large/) {
      if (mib[key] > 0) printf "  %-40s transfer/s %s vs %s   CPU/MiB %.2fx\n", $2 " c" $3, $8, tr[key], $9 / mib[key]
    } else if (rps[key] > 0) printf "  %-40s req/s %.2fx   CPU/req %.2fx\n", $2 " c" $3, $4 / rps[key], (cpu[key] > 0 ? $7 / cpu[key] : 0)
  }
  $1 == "portcullis-work-stealing" { ws = $4; wscpu = $7 }
  $1 == "portcullis" && $3 == 32 && $2 ~ /https.*small/ { off = $4; offcpu = $7 }
  END { if (ws > 0) printf "  work stealing off vs on (https /small c32): %.2fx requests/s, %.2fx CPU/req\n", off / ws, offcpu / wscpu }
' "$RESULTS"
echo
echo "Over HTTPS, bare Pingora against nginx (what Pingora's proxy path allows) and Portcullis"
echo "against bare Pingora (what the edge's layers cost on top):"
awk -F'\t' '
  { key = $3; sub(/.*\//, "", $2) }
  $2 != "small" || $1 ~ /work-stealing/ { next }
  { rps[$1, key] = $4; cpu[$1, key] = $7; seen[key] = 1 }
  END {
    for (key in seen) {
      if (rps["nginx", key] > 0 && rps["bare-pingora", key] > 0 && cpu["bare-pingora", key] > 0)
        printf "  c%-4s bare Pingora / nginx: req/s %.2fx, CPU/req %.2fx;   Portcullis / bare Pingora: req/s %.2fx, CPU/req %.2fx\n",
          key, rps["bare-pingora", key] / rps["nginx", key], cpu["bare-pingora", key] / cpu["nginx", key],
          rps["portcullis", key] / rps["bare-pingora", key], cpu["portcullis", key] / cpu["bare-pingora", key]
    }
  }
' <(grep -P '^[^\t]+\thttps://' "$RESULTS")
