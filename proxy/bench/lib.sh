# shellcheck shell=bash disable=SC2034  # sourced; the variables are the callers'
# The shared part of the proxy benchmarks (run.sh, ratelimit.sh, waf.sh): sourced, not run.
#
# bench_init NAME TOOL...   checks the tools and the release build, makes $WORK (removed on
#                           exit with every process in PIDS), sets ROOT, BIN, HOST, CPUS,
#                           PROXY_CPU (the proxies' core) and LOAD_CPUS (wrk, origin, helpers)
# bench_cert                a self-signed certificate for $HOST in $WORK/tls.{crt,key}
# bench_origin PORT [CONF]  nginx serving $WORK/www on LOAD_CPUS, CONF inside its server block
# nginx_proxy_server PORT [CONF]
#                           an nginx server block: TLS on PORT with the bench certificate,
#                           everything proxied to the upstream "origin" as the edge does it,
#                           CONF inside its location
# nginx_proxy_config [MAIN] [HTTP]
#                           run.sh's whole nginx proxy configuration (one worker, no access
#                           log, the origin on 18080 kept alive, HTTPS on 18443 adding HSTS),
#                           MAIN among the main directives, HTTP inside the http block
# edge_document HTTPS ADMIN UPSTREAM [HTTP]
#                           the edge document every Portcullis under test starts from
# start_portcullis LABEL CONFIG [FLAGS...]
#                           one Portcullis worker on PROXY_CPU; its pid in STARTED
# wait_port PORT            waits until something listens on 127.0.0.1:PORT
# ticks PID, hwm PID        CPU ticks (user+system) and peak RSS (KiB) of a process; CLK ticks/s
# need_bare_pingora         checks that the bare Pingora baseline ($BARE) is built
#
# The release build is $ROOT/target-proxy/release/portcullis-proxy unless PORTCULLIS_PROXY_BIN
# names another:   CARGO_TARGET_DIR=target-proxy cargo build --release -p portcullis-proxy
# The bare Pingora baseline (run.sh, instructions.sh) is the example beside it unless
# BARE_PINGORA_BIN names another: add `--example bare_pingora` to that build.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN="${PORTCULLIS_PROXY_BIN:-$ROOT/target-proxy/release/portcullis-proxy}"
BARE="${BARE_PINGORA_BIN:-$(dirname "$BIN")/examples/bare_pingora}"
HOST=media.bench
PIDS=()
CLK=$(getconf CLK_TCK)

bench_cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}

bench_init() {
  local name=$1
  shift
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "missing: $tool (apt-get install -y $tool)" >&2; exit 1; }
  done
  [ -x "$BIN" ] || { echo "missing release build: $BIN" >&2; exit 1; }
  WORK="$(mktemp -d "/tmp/portcullis-$name.XXXXXX")"
  trap bench_cleanup EXIT
  CPUS=$(nproc)
  PROXY_CPU=$((CPUS > 1 ? 1 : 0))
  LOAD_CPUS="0"
}

bench_cert() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=$HOST" -addext "subjectAltName=DNS:$HOST" \
    -keyout "$WORK/tls.key" -out "$WORK/tls.crt" 2>/dev/null
}

bench_origin() {
  local port=$1 extra=${2:-}
  mkdir -p "$WORK/www"
  cat >"$WORK/origin.conf" <<EOF
user root;
worker_processes 1;
daemon off;
pid $WORK/origin.pid;
error_log $WORK/origin.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$port;
    root $WORK/www;
    $extra
  }
}
EOF
  taskset -c "$LOAD_CPUS" nginx -c "$WORK/origin.conf" -p "$WORK" &
  PIDS+=($!)
}

nginx_proxy_server() {
  local port=$1 extra=${2:-}
  cat <<EOF
  server {
    listen 127.0.0.1:$port ssl;
    ssl_certificate $WORK/tls.crt;
    ssl_certificate_key $WORK/tls.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    server_name $HOST;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_set_header X-Forwarded-Proto https;
      proxy_buffering off;
      $extra
    }
  }
EOF
}

nginx_proxy_config() {
  local main=${1:-} http=${2:-}
  cat <<EOF
user root;
worker_processes 1;
daemon off;
$main
pid $WORK/nginx-proxy.pid;
error_log $WORK/nginx-proxy.err warn;
events { worker_connections 4096; }
http {
  access_log /dev/null;
  keepalive_requests 1000000;
  upstream origin { server 127.0.0.1:18080; keepalive 128; }
$(nginx_proxy_server 18443 'add_header Strict-Transport-Security "max-age=31536000" always;')
$http
}
EOF
}

edge_document() {
  local https=$1 admin=$2 upstream=$3 http=""
  [ -n "${4:-}" ] && http=" http: \"127.0.0.1:$4\","
  cat <<EOF
apiVersion: edge.portcullis.dev/v1
kind: EdgeConfig
source: { namespace: bench, name: bench, generation: 1 }
app: { kind: Jellyfin, displayName: Bench }
host: $HOST
listen: { https: "127.0.0.1:$https",$http admin: "127.0.0.1:$admin" }
tls: { certFile: $WORK/tls.crt, keyFile: $WORK/tls.key }
limits:
  maxUriBytes: 8192
  maxHeaderCount: 100
  maxHeaderBytes: 64Ki
  maxBody: 64Mi
  allowedMethods: [GET, HEAD, POST]
  maxConnections: 10000
  maxConnectionsPerIp: 10000
upstream: { address: "127.0.0.1:$upstream", poolSize: 128 }
EOF
}

start_portcullis() {
  local label=$1 config=$2
  shift 2
  taskset -c "$PROXY_CPU" "$BIN" --config "$config" --threads 1 "$@" \
    >/dev/null 2>"$WORK/$label.err" &
  STARTED=$!
  PIDS+=("$STARTED")
}

need_bare_pingora() {
  [ -x "$BARE" ] || { echo "missing release build: $BARE" >&2; exit 1; }
}

wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "port $1 never opened" >&2
  return 1
}

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hwm() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
