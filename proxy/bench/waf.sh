#!/usr/bin/env bash
# The WAF's cost: nginx, nginx with ModSecurity v3 and the OWASP CRS, Portcullis with its WAF
# off, and Portcullis with its WAF on, as reverse proxies in front of the same origin, on
# loopback over HTTPS with keep-alive (Portcullis proxies only over HTTPS; its plain-HTTP
# listener only redirects, so every contender terminates TLS with the same certificate).
# Both WAFs run the same CRS v4 rules at paranoia level 1 in blocking mode (anomaly
# thresholds 5/4, no application exclusions, no response inspection, 128 KiB of body
# inspected). Each proxy gets one worker on CPU 1; wrk and the origin (an nginx answering
# 200 to everything) share CPU 0.
#
# Two workloads, 32 connections: "benign" is a Jellyfin client's session in which every
# request differs, as in real use (library pages with 9 query arguments and a changing
# StartIndex, searches for changing terms, playback-progress POSTs with a JSON body and a
# changing position, poster images of random item ids), with the same client headers on
# every request; "mixed" adds an SQL injection and an XSS in the query, a quarter of the requests, which the
# WAFs refuse with 403 (in the query, not a body: the origin here answers without reading
# bodies, so a body's refusal could race with its answer). Before measuring, every request is sent once to
# every proxy and the answers checked (benign 200 everywhere, attacks 403 from the WAFs).
# Prints requests/s, p50/p99, the proxy's CPU time per request and the share refused, then
# ratios; it never asserts a time.
#
# Needs: wrk, nginx, openssl, taskset, the ModSecurity module for nginx
#   (apt-get install -y wrk nginx libnginx-mod-http-modsecurity), the CRS v4 rules (CRS_DIR,
#   default ../shared/testdata/crs beside the checkout; Debian's modsecurity-crs is 3.3, which
#   Portcullis does not load), and a release build:
#   CARGO_TARGET_DIR=target-proxy cargo build --release -p portcullis-proxy
# Usage: proxy/bench/waf.sh [seconds per run, default 8] [rounds, default 2]
set -euo pipefail

DURATION="${1:-8}"
ROUNDS="${2:-2}"
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
CRS_DIR="${CRS_DIR:-$(cd "$ROOT/.." && pwd)/shared/testdata/crs}"
MODSEC_MODULE=/usr/lib/nginx/modules/ngx_http_modsecurity_module.so
[ -f "$MODSEC_MODULE" ] || { echo "missing: $MODSEC_MODULE (apt-get install -y libnginx-mod-http-modsecurity)" >&2; exit 1; }
if [ ! -f "$CRS_DIR/crs-setup.conf.example" ] || [ ! -d "$CRS_DIR/rules" ]; then
  echo "missing: a CRS v4 release at $CRS_DIR (set CRS_DIR)" >&2
  exit 1
fi
bench_init waf-bench wrk nginx openssl taskset curl

bench_cert
bench_origin 18280 'location / { return 200 "ok\n"; }'

# --- nginx, with and without ModSecurity ---------------------------------------------------
cat >"$WORK/modsec.conf" <<EOF
# Debian's recommended base (body access, JSON and XML body processors, limits), then CRS.
Include /etc/nginx/modsecurity.conf
SecRuleEngine On
SecAuditEngine Off
SecResponseBodyAccess Off
SecRequestBodyLimit 13107200
SecRequestBodyNoFilesLimit 131072
Include $CRS_DIR/crs-setup.conf.example
Include $CRS_DIR/rules/*.conf
EOF

# nginx_config NAME PORT MODSEC(on|off)
nginx_config() {
  local name=$1 port=$2 modsec=$3
  cat <<EOF
load_module $MODSEC_MODULE;
user root;
worker_processes 1;
daemon off;
pid $WORK/$name.pid;
error_log $WORK/$name.err warn;
events { worker_connections 4096; }
http {
  access_log /dev/null;
  keepalive_requests 1000000;
  client_max_body_size 64m;
  modsecurity $modsec;
  $([ "$modsec" = on ] && echo "modsecurity_rules_file $WORK/modsec.conf;")
  upstream origin { server 127.0.0.1:18280; keepalive 128; }
$(nginx_proxy_server "$port")
}
EOF
}
nginx_config nginx 24443 off >"$WORK/nginx.conf"
nginx_config nginx-modsec 25443 on >"$WORK/nginx-modsec.conf"

# --- Portcullis, with and without its WAF, and the requests --------------------------------
# shellcheck source=waf-workload.sh
source "$(dirname "$0")/waf-workload.sh"
edge_document 28443 28090 18280 >"$WORK/portcullis.yaml"
waf_document 29443 29090 18280 >"$WORK/portcullis-waf.yaml"
write_waf_requests "$WORK/requests.lua"

# --- start everything ----------------------------------------------------------------------
taskset -c "$PROXY_CPU" nginx -c "$WORK/nginx.conf" -p "$WORK" &
NGINX_MASTER=$!
PIDS+=("$NGINX_MASTER")
taskset -c "$PROXY_CPU" nginx -c "$WORK/nginx-modsec.conf" -p "$WORK" &
MODSEC_MASTER=$!
PIDS+=("$MODSEC_MASTER")
start_portcullis portcullis "$WORK/portcullis.yaml"
PORTCULLIS=$STARTED
start_portcullis portcullis-waf "$WORK/portcullis-waf.yaml"
PORTCULLIS_WAF=$STARTED
for port in 18280 24443 25443 28443 29443; do wait_port "$port"; done
sleep 1
NGINX_WORKER=$(pgrep -P "$NGINX_MASTER" | head -1)
MODSEC_WORKER=$(pgrep -P "$MODSEC_MASTER" | head -1)

# --- every request once, answers checked -----------------------------------------------------
# check PORT EXPECTED_ATTACK_STATUS
check() {
  local port=$1 attack=$2 url="https://$HOST:$1" failed=0
  local curl_args=(-sk -o /dev/null -w '%{http_code}' --resolve "$HOST:$port:127.0.0.1"
    -H "User-Agent: $UA" -H "Accept: application/json" -H "Accept-Language: en-US,en;q=0.5"
    -H "X-Emby-Authorization: $AUTH")
  expect() {
    local want=$1 got
    shift
    got=$(curl "${curl_args[@]}" "$@")
    [ "$got" = "$want" ] || { echo "port $port: $* answered $got, expected $want" >&2; failed=1; }
  }
  expect 200 "$url$BROWSE"
  expect 200 "$url$SEARCH"
  expect 200 -H "Content-Type: application/json" --data "$PROGRESS_BODY" "$url/Sessions/Playing/Progress"
  expect 200 "$url/Items/$ITEM/Images/Primary?fillHeight=396&fillWidth=264&quality=96&tag=${ITEM:0:16}"
  expect "$attack" "$url$SQLI"
  expect "$attack" "$url$XSS"
  return $failed
}
check 24443 200
check 25443 403
check 28443 200
check 29443 403

# --- measure -----------------------------------------------------------------------------------
RESULTS="$WORK/results.tsv"
: >"$RESULTS"
# run NAME PID PORT WORKLOAD
run() {
  local name=$1 pid=$2 port=$3 workload=$4 out before after
  before=$(ticks "$pid")
  out=$(taskset -c "$LOAD_CPUS" wrk -t1 -c32 -d"${DURATION}s" --latency -s "$WORK/requests.lua" \
    "https://127.0.0.1:$port/" -- "$workload")
  after=$(ticks "$pid")
  local reqs refused
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  refused=$(awk '/Non-2xx or 3xx responses/ {print $5}' <<<"$out")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$workload" \
    "$(awk '/Requests\/sec/ {print $2}' <<<"$out")" \
    "$(awk '$1 == "50%" {print $2}' <<<"$out")" \
    "$(awk '$1 == "99%" {print $2}' <<<"$out")" \
    "$(awk -v t=$((after - before)) -v clk="$CLK" -v n="$reqs" 'BEGIN { if (n > 0) printf "%.1f", t / clk * 1e6 / n; else print "-" }')" \
    "$(awk -v r="${refused:-0}" -v n="$reqs" 'BEGIN { if (n > 0) printf "%.1f%%", 100 * r / n; else print "-" }')" \
    >>"$RESULTS"
}
# The contenders back to back for each workload and round, so that other load on the machine
# does not favour one.
for _ in $(seq "$ROUNDS"); do
  for workload in benign mixed; do
    run nginx "$NGINX_WORKER" 24443 "$workload"
    run nginx+modsecurity "$MODSEC_WORKER" 25443 "$workload"
    run portcullis "$PORTCULLIS" 28443 "$workload"
    run portcullis+waf "$PORTCULLIS_WAF" 29443 "$workload"
  done
done

echo
echo "| proxy | workload | req/s | p50 | p99 | CPU µs/req | refused |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: |"
awk -F'\t' '{ printf "| %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7 }' "$RESULTS"
echo
echo "Ratios of the means over the rounds (requests/s; CPU per request in brackets):"
awk -F'\t' '
  { k = $1 "|" $2; rps[k] += $3; cpu[k] += $6; n[k]++ }
  function r(a, b, w) {
    if (n[a "|" w] == 0 || n[b "|" w] == 0) return "-"
    return sprintf("%.2fx (CPU %.2fx)", (rps[a "|" w] / n[a "|" w]) / (rps[b "|" w] / n[b "|" w]),
      (cpu[a "|" w] / n[a "|" w]) / (cpu[b "|" w] / n[b "|" w]))
  }
  END {
    for (wi = 1; wi <= 2; wi++) {
      w = (wi == 1) ? "benign" : "mixed"
      printf "  %s:\n", w
      printf "    portcullis+waf / nginx+modsecurity  %s\n", r("portcullis+waf", "nginx+modsecurity", w)
      printf "    WAF cost, portcullis (on / off)     %s\n", r("portcullis+waf", "portcullis", w)
      printf "    WAF cost, nginx (on / off)          %s\n", r("nginx+modsecurity", "nginx", w)
      printf "    portcullis / nginx, no WAF          %s\n", r("portcullis", "nginx", w)
    }
  }' "$RESULTS"
