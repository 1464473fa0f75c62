#!/usr/bin/env bash
# The cost of upload scanning: Portcullis with and without its antivirus section in front of
# the same origin, on loopback over HTTPS with keep-alive. With the section on, every upload
# is streamed to a clamd (started here, on the load cores) and held until its verdict; off,
# it streams straight through. The origin is nginx writing each upload to a file (WebDAV
# PUT), so it answers only once it has the whole body. The proxy gets one worker on CPU 1;
# wrk, the origin and clamd share the other cores.
#
# clamd's database: by default one signature (the EICAR test file), written here, which
# measures the edge's streaming and holding plus clamd's file-type detection and matching
# of one pattern; CLAMAV_DB=/var/lib/clamav (a database freshclam filled) measures with the
# real signatures (clamd then needs about 1.5 GiB and a minute or two to start).
#
# Before measuring, an upload carrying EICAR and a clean one are sent to both: EICAR gets
# 403 with scanning and 201/204 without. Prints uploads/s, MiB/s and p50/p99 per body size,
# then the throughput ratio of scanning on to off; it never asserts a time.
#
# Needs: wrk, nginx, openssl, taskset, curl, clamd (apt-get install -y wrk nginx
#   clamav-daemon), and a release build:
#   CARGO_TARGET_DIR=target-proxy cargo build --release -p portcullis-proxy
# Usage: proxy/bench/antivirus.sh [seconds per run, default 8] [rounds, default 2]
#        [body sizes in KiB, default "64 1024 8192"]
set -euo pipefail

DURATION="${1:-8}"
ROUNDS="${2:-2}"
SIZES="${3:-64 1024 8192}"
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
CLAMD=$(command -v clamd || echo /usr/sbin/clamd)
[ -x "$CLAMD" ] || { echo "missing: clamd (apt-get install -y clamav-daemon)" >&2; exit 1; }
bench_init av-bench wrk nginx openssl taskset curl od
if [ "$CPUS" -gt 2 ]; then LOAD_CPUS="0,2-$((CPUS - 1))"; fi

bench_cert
mkdir -p "$WORK/body-tmp"
bench_origin 18380 "client_max_body_size 64m;
    client_body_temp_path $WORK/body-tmp;
    location / { dav_methods PUT; create_full_put_path on; }"

# --- clamd -------------------------------------------------------------------------------------
# shellcheck disable=SC2016  # the EICAR string, not an expansion
EICAR='X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*'
if [ -n "${CLAMAV_DB:-}" ]; then
  DB="$CLAMAV_DB"
  echo "clamd database: $DB"
else
  DB="$WORK/db"
  mkdir -p "$DB"
  printf 'Eicar-Test-Signature:0:*:%s\n' "$(printf '%s' "$EICAR" | od -An -v -tx1 | tr -d ' \n')" \
    >"$DB/eicar.ndb"
  echo "clamd database: one signature (EICAR); set CLAMAV_DB for the real one"
fi
printf '%s\n' "Foreground yes" "DatabaseDirectory $DB" "TCPSocket 18310" "TCPAddr 127.0.0.1" \
  "TemporaryDirectory $WORK" "LogFile $WORK/clamd.log" "MaxThreads 12" \
  "StreamMaxLength 256M" "MaxFileSize 256M" "MaxScanSize 1024M" "AlertEncrypted yes" \
  >"$WORK/clamd.conf"
taskset -c "$LOAD_CPUS" "$CLAMD" --config-file="$WORK/clamd.conf" &
CLAMD_PID=$!
PIDS+=("$CLAMD_PID")

# --- Portcullis, with and without scanning -------------------------------------------------------
# The shared document allows GET, HEAD and POST; uploads here are PUTs.
edge_document 28543 28590 18380 |
  sed 's/allowedMethods: \[GET, HEAD, POST\]/allowedMethods: [GET, HEAD, POST, PUT]/' \
    >"$WORK/portcullis.yaml"
{
  sed 's/28543/28643/; s/28590/28690/' "$WORK/portcullis.yaml"
  printf '%s\n' "antivirus:" "  clamd: 127.0.0.1:18310" \
    "  paths: ['/Items/[^/]+/Images/[^/]+\$']" "  methods: [PUT, POST]" \
    "  maxScanSize: 64Mi" "  onUnscannable: Block" "  timeout: 60s"
} >"$WORK/portcullis-av.yaml"
start_portcullis portcullis "$WORK/portcullis.yaml"
PORTCULLIS=$STARTED
start_portcullis portcullis-av "$WORK/portcullis-av.yaml"
PORTCULLIS_AV=$STARTED
for port in 18380 28543 28643; do wait_port "$port"; done
# clamd loads its database before it listens (minutes with the real one).
for _ in $(seq 3000); do
  (exec 3<>/dev/tcp/127.0.0.1/18310) 2>/dev/null && break
  kill -0 "$CLAMD_PID" 2>/dev/null || { echo "clamd exited: $(cat "$WORK/clamd.log")" >&2; exit 1; }
  sleep 0.1
done
wait_port 18310

# --- the answers, checked -----------------------------------------------------------------------
# put PORT FILE: the status of an upload
put() {
  curl -sk -o /dev/null -w '%{http_code}' --resolve "$HOST:$1:127.0.0.1" -X PUT \
    --data-binary "@$2" -H 'Content-Type: image/png' "https://$HOST:$1/Items/bench/Images/Primary"
}
printf '%s' "$EICAR" >"$WORK/eicar.png"
head -c 65536 /dev/urandom >"$WORK/clean.png"
failed=0
for check in "28543 eicar.png 20[14]" "28543 clean.png 20[14]" "28643 eicar.png 403" \
  "28643 clean.png 20[14]"; do
  read -r port file want <<<"$check"
  got=$(put "$port" "$WORK/$file")
  # shellcheck disable=SC2053  # $want is a pattern
  [[ $got == $want ]] || { echo "port $port: $file answered $got, expected $want" >&2; failed=1; }
done
[ "$failed" = 0 ] || exit 1

# --- measure -----------------------------------------------------------------------------------
RESULTS="$WORK/results.tsv"
: >"$RESULTS"
# run NAME PID PORT KIB
run() {
  local name=$1 pid=$2 port=$3 kib=$4 out before after reqs bad
  printf '%s\n' "local f = io.open(\"$WORK/body-$kib\", \"rb\")" "local body = f:read(\"*a\")" \
    "f:close()" "wrk.method = \"PUT\"" "wrk.path = \"/Items/bench/Images/Primary\"" \
    "wrk.headers[\"Host\"] = \"$HOST\"" "wrk.headers[\"Content-Type\"] = \"image/png\"" \
    "wrk.body = body" >"$WORK/upload.lua"
  before=$(ticks "$pid")
  out=$(taskset -c "$LOAD_CPUS" wrk -t1 -c8 -d"${DURATION}s" --latency -s "$WORK/upload.lua" \
    "https://127.0.0.1:$port/")
  after=$(ticks "$pid")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  bad=$(awk '/Non-2xx or 3xx responses/ {print $5}' <<<"$out")
  [ -z "$bad" ] || echo "warning: $name answered $bad uploads of $kib KiB with an error" >&2
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$kib" \
    "$(awk '/Requests\/sec/ {print $2}' <<<"$out")" \
    "$(awk -v k="$kib" '/Requests\/sec/ {printf "%.1f", $2 * k / 1024}' <<<"$out")" \
    "$(awk '$1 == "50%" {print $2}' <<<"$out")" \
    "$(awk '$1 == "99%" {print $2}' <<<"$out")" \
    "$(awk -v t=$((after - before)) -v clk="$CLK" -v n="$reqs" \
      'BEGIN { if (n > 0) printf "%.0f", t / clk * 1e6 / n; else print "-" }')" \
    >>"$RESULTS"
}
for kib in $SIZES; do
  head -c $((kib * 1024)) /dev/urandom >"$WORK/body-$kib"
done
# Both back to back for each size and round, so that other load on the machine favours
# neither.
for _ in $(seq "$ROUNDS"); do
  for kib in $SIZES; do
    run portcullis "$PORTCULLIS" 28543 "$kib"
    run portcullis+antivirus "$PORTCULLIS_AV" 28643 "$kib"
  done
done

echo
echo "| proxy | body KiB | uploads/s | MiB/s | p50 | p99 | proxy CPU µs/upload |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
awk -F'\t' '{ printf "| %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7 }' \
  "$RESULTS"
echo
echo "Upload throughput, scanning on / off (means over the rounds; proxy CPU per upload in brackets):"
awk -F'\t' '
  {
    k = $1 "|" $2; mbs[k] += $4; cpu[k] += $7; n[k]++
    if (!($2 in seen)) { seen[$2] = 1; order[++m] = $2 }
  }
  END {
    for (i = 1; i <= m; i++) {
      s = order[i]; on = "portcullis+antivirus|" s; off = "portcullis|" s
      if (n[on] == 0 || n[off] == 0 || mbs[off] == 0 || cpu[off] == 0) continue
      printf "  %6s KiB: %.2fx (CPU %.2fx)\n", s, (mbs[on] / n[on]) / (mbs[off] / n[off]),
        (cpu[on] / n[on]) / (cpu[off] / n[off])
    }
  }' "$RESULTS"
