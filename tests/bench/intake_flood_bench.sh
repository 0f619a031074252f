#!/usr/bin/env bash
# Benchmark (not a test) for issue 11, item 2: the intake under hostile peers. The same good
# upload (`mlfx-agent ship --once` of one bundle, default 64 MiB) is timed, in the same run,
# interleaved per round:
#   none     no flood: the reference
#   anon     1,000 anonymous TCP connections from eight loopback addresses, kept open and
#            reopened as soon as the intake closes them (a third silent, a third sending
#            garbage, a third dribbling the start of a TLS ClientHello)
#   hostile  100 authenticated clients, each its own device, each doing the worst allowed
#            things in a loop: OFFERs of 200 GiB in 64 MiB chunks followed by 64 MiB RECORD
#            headers, RECORD headers before HELLO, OFFERs with random digests and junk
#            records, uploads of its own validly signed bundle abandoned after the metadata
#            (reserved space, then expired partials), sessions held open
#
#   tests/bench/intake_flood_bench.sh BUILD_DIR [ROUNDS]
#
# Columns: ok (the good ship exit code 0 and the bundle stored), ship_s (wall time of the ship
# command), rss0 (intake VmRSS before the flood, MiB), rss (median VmRSS while the good upload
# ran, MiB), peak (VmHWM at the end, MiB), conns (connections the flood opened), disk (MiB the
# store's partial/ held at the end). A fresh intake and store per scenario, so VmHWM is the
# scenario's. Needs python3 with ssl for the flood drivers; raises `ulimit -n`.
set -euo pipefail
source "$(cd "$(dirname "$0")" && pwd)/bench_common.sh"
build=$(realpath "${1:?usage: $0 BUILD_DIR [ROUNDS]}")
rounds=${2:-3}
size_mib=${FLOOD_BENCH_MIB:-64}
hostile_n=${FLOOD_BENCH_HOSTILE:-100}
anon_n=${FLOOD_BENCH_ANON:-1000}
work=$(mktemp -d "${TMPDIR:-/tmp}/mlfx-flood-bench-XXXXXX")
server_pid= driver_pid= sampler_pid=
cleanup() {
  for p in $driver_pid $sampler_pid; do kill "$p" 2>/dev/null || true; done
  [ -n "$server_pid" ] && kill -INT "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
  chmod -R u+w "$work" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"
cd "$work"
copy_binaries "$build"
die() { echo "intake_flood_bench: FAIL: $*" >&2; exit 1; }
status_kb() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
mib() { echo "scale=1; ${1:-0} / 1024" | bc -l; }

# --- PKI, the good device and its bundle, the hostile devices and a bundle each
"$mlfx" keys gen --kind lab --out lab > /dev/null
"$mlfx" keys gen --kind device --out intake > /dev/null
"$mlfx" ca init --out ca > /dev/null
"$mlfx" ca issue --ca ca --server --key intake.pub --name 127.0.0.1,localhost --out intake.pem > /dev/null
new_device() {
  "$mlfx" keys gen --kind device --out "$1" > /dev/null
  "$mlfx" ca issue --ca "$work/ca" --device "$1.pub" --id "$(basename "$1")" --out "$1.pem" > /dev/null
}
new_device good
head -c "$((size_mib << 20))" /dev/urandom > data
"$mlfx" bundle seal data --out good.mlfx --device-key good.key --recipient lab.pub --device-id good -q > /dev/null
mkdir -p hostile
head -c $((1 << 20)) /dev/urandom > small
for i in $(seq "$hostile_n"); do
  (cd hostile && new_device "h$i" &&
   "$mlfx" bundle seal ../small --out "h$i.mlfx" --device-key "h$i.key" --recipient ../lab.pub --device-id "h$i" \
     --chunk-size 65536 -q > /dev/null)
done
rm -f data small

# --- the flood drivers (python3 + ssl), written here so the script is one file
cat > flood.py <<'PY'
import asyncio, os, random, socket, ssl, struct, sys, time, json
mode, port, n, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
opened = 0
def frame(t, body): return struct.pack('<IHH', len(body), t, 0) + body
def jframe(t, obj): return frame(t, json.dumps(obj, separators=(',', ':'), sort_keys=True).encode())
HELLO = jframe(1, {"protocol": "mlfx-intake", "versions": [1], "agent": "hostile"})
def offer(size, chunk, bid=None, digest=None):
    return jframe(3, {"bundle_id": bid or os.urandom(16).hex(), "file_size": size,
                      "bundle_digest": digest or os.urandom(32).hex(), "chunk_size": chunk})
def record(off, unit): return frame(5, struct.pack('<Q', off) + unit)
def units(path):  # the bundle cut into its units, metadata first (wire-protocol.md §4)
    b = open(path, 'rb').read(); meta, chunks, off = [(0, b[:64])], [], 64
    while off + 32 <= len(b):
        size = 32 + struct.unpack_from('<Q', b, off + 8)[0]
        (chunks if b[off:off+4] == b'CHNK' else meta).append((off, b[off:off+size])); off += size
    return b, meta, chunks

async def anon(i):
    global opened
    src = '127.0.0.%d' % (2 + i % 8)
    payload = [b'', b'GET / HTTP/1.1\r\nHost: intake\r\n\r\n' * 4, b'\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03' + b'B' * 64][i % 3]
    while True:
        try:
            r, w = await asyncio.open_connection('127.0.0.1', port, local_addr=(src, 0)); opened += 1
            for k in range(len(payload)):
                w.write(payload[k:k+1]); await w.drain(); await asyncio.sleep(0.2)
            await r.read(65536)  # until the intake closes it
            w.close()
        except Exception:
            await asyncio.sleep(0.05)

async def hostile(i, meta_info):
    global opened
    d = 'hostile/h%d' % (i + 1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations('ca/ca.pem'); ctx.load_cert_chain(d + '.pem', d + '.key')
    ctx.set_alpn_protocols(['mlfx/1'])
    b, meta, chunks = units(d + '.mlfx')
    step = 0
    while True:
        step += 1
        try:
            r, w = await asyncio.open_connection('127.0.0.1', port, ssl=ctx, server_hostname='127.0.0.1'); opened += 1
            kind = step % 4
            if kind == 0:    # a 64 MiB RECORD header before HELLO
                w.write(struct.pack('<IHH', (64 << 20) + 56, 5, 0) + b'x' * (1 << 20))
            elif kind == 1:  # 200 GiB in 64 MiB chunks, then a 64 MiB RECORD header
                w.write(HELLO + offer(200 << 30, 64 << 20) + struct.pack('<IHH', (64 << 20) + 56, 5, 0) + b'x' * (1 << 20))
            elif kind == 2:  # a random digest, then junk metadata records
                junk = b''.join(record(off, bytes(u[:32]) + os.urandom(len(u) - 32)) for off, u in meta)
                w.write(HELLO + offer(len(b), 65536) + junk)
            else:            # its own bundle: the metadata and one chunk, then abandoned
                bid, dig = meta_info
                w.write(HELLO + offer(len(b), 65536, bid, dig) + b''.join(record(o, u) for o, u in meta) + record(*chunks[0]))
            await w.drain()
            await asyncio.wait_for(r.read(1 << 16), 5)
            w.close()
        except Exception:
            await asyncio.sleep(0.05)

async def report():
    while True:
        open(out, 'w').write(str(opened)); await asyncio.sleep(0.5)

async def main():
    tasks = [report()]
    if mode == 'anon':
        tasks += [anon(i) for i in range(n)]
    else:
        info = [json.loads(l) for l in open('hostile/info.jsonl')]
        tasks += [hostile(i, (info[i]['bundle_id'], info[i]['digest'])) for i in range(n)]
    await asyncio.gather(*tasks)
asyncio.run(main())
PY
: > hostile/info.jsonl
for i in $(seq "$hostile_n"); do
  "$mlfx" bundle info --json "hostile/h$i.mlfx" | jq -c '{bundle_id: .manifest.bundle_id, digest: .bundle_digest}' >> hostile/info.jsonl
done

start_server() {
  chmod -R u+w store 2>/dev/null || true; rm -rf store port serve.log
  "$mlfx" serve --listen 127.0.0.1:0 --store store --ca-dir ca --cert intake.pem --key intake.key \
    --port-file port --partial-ttl 5 2> serve.log &
  server_pid=$!
  for _ in $(seq 400); do [ -s port ] && return 0; sleep 0.025; done
  cat serve.log >&2; die "mlfx serve wrote no port file"
}
stop_server() { kill -INT "$server_pid"; wait "$server_pid" || true; server_pid=; }

declare -A s
printf '%-8s %-5s %3s %7s %7s %7s %7s %7s %7s\n' scenario round ok ship_s rss0 rss peak conns disk
for r in $(seq "$rounds"); do
  for scenario in none anon hostile; do
    start_server
    port=$(cat port)
    rss0=$(status_kb "$server_pid" VmRSS)
    echo 0 > conns
    case $scenario in
      anon) python3 flood.py anon "$port" "$anon_n" conns 2> flood.err & driver_pid=$! ;;
      hostile) python3 flood.py hostile "$port" "$hostile_n" conns 2> flood.err & driver_pid=$! ;;
    esac
    [ -n "$driver_pid" ] && sleep 3  # the flood is in full swing
    (while :; do status_kb "$server_pid" VmRSS; sleep 0.1; done) > rss.samples & sampler_pid=$!
    chmod -R u+w spool 2>/dev/null || true; rm -rf spool
    "$agent" spool add --spool spool good.mlfx > /dev/null
    t0=$(now); rc=0
    "$agent" ship --spool spool --server "127.0.0.1:$port" --ca ca/ca.pem --crl ca/crl.pem --cert good.pem \
      --key good.key --once --json --timeout 60 > ship.json 2> ship.err || rc=$?
    t1=$(now)
    kill "$sampler_pid"; wait "$sampler_pid" 2>/dev/null || true; sampler_pid=
    ok=0
    [ "$rc" = 0 ] && ls store/objects/*.mlfx > /dev/null 2>&1 && cmp -s store/objects/*.mlfx good.mlfx && ok=1
    conns=$(cat conns)
    peak=$(status_kb "$server_pid" VmHWM)
    disk=$(du -sk store/partial 2>/dev/null | cut -f1)
    [ -n "$driver_pid" ] && { kill "$driver_pid"; wait "$driver_pid" 2>/dev/null || true; driver_pid=; }
    stop_server
    [ "$ok" = 1 ] || { echo "--- $scenario: ship exit $rc" >&2; cat ship.json ship.err >&2; tail -5 serve.log >&2; }
    ship_s=$(sub "$t1" "$t0")
    rss=$(median < rss.samples)
    printf '%-8s %-5s %3s %7.2f %7.1f %7.1f %7.1f %7s %7.1f\n' "$scenario" "$r" "$ok" "$ship_s" "$(mib "$rss0")" \
      "$(mib "$rss")" "$(mib "$peak")" "$conns" "$(mib "${disk:-0}")"
    s[$scenario.ok]+="$ok "; s[$scenario.ship]+="$ship_s "; s[$scenario.rss]+="$(mib "$rss") "
    s[$scenario.peak]+="$(mib "$peak") "
  done
done
echo
echo "median over $rounds round(s); the good upload: ${size_mib} MiB; flood: $anon_n anonymous / $hostile_n hostile clients"
for scenario in none anon hostile; do
  oks=$(echo "${s[$scenario.ok]}" | tr ' ' '\n' | grep -c 1 || true)
  printf '%-8s stored %s/%s  ship %6.2f s  RSS steady %7.1f MiB  peak %7.1f MiB\n' "$scenario" "$oks" "$rounds" \
    "$(echo "${s[$scenario.ship]}" | median)" "$(echo "${s[$scenario.rss]}" | median)" "$(echo "${s[$scenario.peak]}" | median)"
done
