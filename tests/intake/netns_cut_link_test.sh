#!/usr/bin/env bash
# Issue 4: an upload survives a cut link between two network namespaces and resumes when the
# link returns, with nothing lost or corrupted and at most one unit sent twice.
#
#   netns_cut_link_test.sh BUILD_DIR
#
# `mlfx serve` runs in one namespace ("the lab"), `mlfx-agent ship` in another ("the car"),
# joined by a veth pair. A 64 MiB bundle of 1 MiB chunks is shipped at 8 MB/s (the agent's
# --bandwidth 8M, and the car's end shaped to 8 MB/s with tbf so that the timing does not hang on
# the agent's limiter alone); about 3 s in,
# the link is cut for 6 s (longer than the agent's --timeout and the server's --idle-timeout,
# so both sides give the connection up), then restored. Variants (MLFX_NETNS_VARIANTS, default
# "drop down"):
#   drop  packets silently vanish while both interfaces stay up ("the car drives into a
#         tunnel"): netem loss 100% where the kernel has netem, else the blackhole qdisc, on
#         both ends of the veth pair;
#   down  the car's end of the veth pair is set down (its route goes away, connects fail fast).
# Each variant starts from an empty store and spool. Checks: the agent exits 0; the store holds
# exactly one object, byte-identical to the bundle, with its receipt and custody log, and it
# verifies; the spool's queue is empty with one receipt; the server read at most one unit more
# than the file (plus framing); the cut really interrupted an upload.
#
# MLFX_NETNS_IDLE_TIMEOUT sets the server's --idle-timeout (default 3: shorter than the cut, so
# the server times the dead connection out itself; a value above ~15 leaves that to TCP).
#
# Needs root and iproute2 (ip, tc); otherwise, or when namespaces cannot be made, it exits 77
# (registered with SKIP_RETURN_CODE 77, see netns.cmake).

set -u

skip() { echo "SKIP: $*"; exit 77; }

build=${1:-}
[ -n "$build" ] || { echo "usage: $0 BUILD_DIR" >&2; exit 2; }
build=$(cd "$build" && pwd) || exit 2
MLFX=$build/analyzer/mlfx
AGENT=$build/agent/mlfx-agent
for b in "$MLFX" "$AGENT"; do
  [ -x "$b" ] || { echo "FAIL: $b is missing (build it first)" >&2; exit 1; }
done

[ "$(id -u)" = 0 ] || skip "needs root to create network namespaces"
command -v ip > /dev/null || skip "iproute2 'ip' is not installed"
command -v tc > /dev/null || skip "iproute2 'tc' is not installed"

variants=${MLFX_NETNS_VARIANTS:-drop down}
idle_timeout=${MLFX_NETNS_IDLE_TIMEOUT:-3}  # the server's; the cut (6 s) must outlast it to test it

ns_srv="mlfx-lab-$$"
ns_car="mlfx-car-$$"
veth_srv="mlfxl$$"   # interface names: at most 15 characters
veth_car="mlfxc$$"
net="10.77.$(($$ % 200))"
srv_ip="$net.1"
car_ip="$net.2"
port=7443

W=$(mktemp -d "${TMPDIR:-/tmp}/mlfx-netns.XXXXXX") || exit 1
serve_pid=""
ship_pid=""
made_ns=()

stop_pid() {  # stop_pid PID: TERM, then KILL, and reap
  local pid=$1
  [ -n "$pid" ] || return 0
  kill -0 "$pid" 2> /dev/null || { wait "$pid" 2> /dev/null; return 0; }
  kill -TERM "$pid" 2> /dev/null
  for _ in $(seq 20); do
    kill -0 "$pid" 2> /dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2> /dev/null
  wait "$pid" 2> /dev/null
  return 0
}

cleanup() {
  stop_pid "$ship_pid"
  stop_pid "$serve_pid"
  for ns in "${made_ns[@]}"; do ip netns del "$ns" 2> /dev/null; done
  ip link del "$veth_srv" 2> /dev/null  # only if it never moved into a namespace
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- network -------------------------------------------------------------------------------
ip netns add "$ns_srv" 2> "$W/ns.err" || skip "cannot create a network namespace: $(cat "$W/ns.err")"
made_ns+=("$ns_srv")
ip netns add "$ns_car" 2> "$W/ns.err" || skip "cannot create a network namespace: $(cat "$W/ns.err")"
made_ns+=("$ns_car")
ip link add "$veth_srv" type veth peer name "$veth_car" 2> "$W/ns.err" ||
  skip "cannot create a veth pair: $(cat "$W/ns.err")"
{
  ip link set "$veth_srv" netns "$ns_srv" &&
    ip link set "$veth_car" netns "$ns_car" &&
    ip -n "$ns_srv" link set lo up &&
    ip -n "$ns_car" link set lo up &&
    ip -n "$ns_srv" addr add "$srv_ip/24" dev "$veth_srv" &&
    ip -n "$ns_car" addr add "$car_ip/24" dev "$veth_car" &&
    ip -n "$ns_srv" link set "$veth_srv" up &&
    ip -n "$ns_car" link set "$veth_car" up
} 2> "$W/ns.err" || skip "cannot set up the veth pair between namespaces: $(cat "$W/ns.err")"
ok=0
for _ in $(seq 50); do
  if ip netns exec "$ns_car" ping -c1 -W1 "$srv_ip" > /dev/null 2>&1; then ok=1; break; fi
  # without ping: the link is usable once both ends report state UP
  if ! command -v ping > /dev/null && ip -n "$ns_car" link show "$veth_car" | grep -q "state UP" &&
    ip -n "$ns_srv" link show "$veth_srv" | grep -q "state UP"; then ok=1; break; fi
  sleep 0.1
done
[ "$ok" = 1 ] || skip "the veth link between the namespaces does not come up"

# The silent cut: netem where the kernel has it, else the blackhole qdisc (drops every packet
# and reports success to the sender, like netem loss 100%). Probed on the lab's end, which
# otherwise keeps its default qdisc.
if tc -n "$ns_srv" qdisc add dev "$veth_srv" root netem loss 100% 2> /dev/null; then
  drop_qdisc="netem loss 100%"
elif tc -n "$ns_srv" qdisc add dev "$veth_srv" root blackhole 2> /dev/null; then
  drop_qdisc="blackhole"
else
  drop_qdisc=""
fi
[ -z "$drop_qdisc" ] || tc -n "$ns_srv" qdisc del dev "$veth_srv" root 2> /dev/null

# The car's uplink: 8 MB/s with a token bucket, so that the 64 MiB upload takes about 8 s
# whatever the agent's own --bandwidth limit does. Without tbf, only --bandwidth slows it.
shaper="tbf rate 64mbit burst 256kb latency 200ms"
if tc -n "$ns_car" qdisc add dev "$veth_car" root $shaper 2> /dev/null; then
  shaped=1
else
  shaped=0
  echo "NOTE: no tbf qdisc; the upload is slowed by the agent's --bandwidth alone"
fi

# --- keys, certificates, the bundle --------------------------------------------------------
fail_setup() { echo "FAIL: setup: $1" >&2; cat "$W/setup.log" >&2; exit 1; }
{
  "$MLFX" keys gen --kind lab --out "$W/lab" &&
    "$MLFX" keys gen --kind device --out "$W/dev" &&
    "$MLFX" keys gen --kind device --out "$W/intake" &&
    "$MLFX" ca init --out "$W/ca" &&
    "$MLFX" ca issue --ca "$W/ca" --device "$W/dev.pub" --id car-netns --out "$W/dev.pem" &&
    "$MLFX" ca issue --ca "$W/ca" --server --key "$W/intake.pub" --name "$srv_ip" --out "$W/intake.pem"
} > "$W/setup.log" 2>&1 || fail_setup "keys and certificates"
head -c $((64 << 20)) /dev/urandom > "$W/data.bin" || fail_setup "random data"
"$MLFX" bundle seal "$W/data.bin" --out "$W/b.mlfx" --device-key "$W/dev.key" --recipient "$W/lab.pub" \
  --device-id car-netns \
  -q --chunk-size 1048576 >> "$W/setup.log" 2>&1 || fail_setup "bundle seal"
rm -f "$W/data.bin"
mkdir -p "$W/trusted" && cp "$W/dev.pub" "$W/trusted/car-netns.pub"  # for bundle verify: attributed
file_size=$(stat -c %s "$W/b.mlfx")
# The bundle digest names it in the store (bundle-format.md §18).
file_sha=$("$MLFX" bundle info --json "$W/b.mlfx" | python3 -c 'import json,sys; print(json.load(sys.stdin)["bundle_digest"])')
unit_max=$((1048576 + 48))  # one chunk record: 32-byte header, 1 MiB, 16-byte tag
# Framing the server reads besides the units: 16 bytes per RECORD frame (8-byte frame header,
# 8-byte offset), and HELLO/OFFER per connection (allowed 4 KiB each).
record_frames=$((file_size / 1048576 + 16))

# --- one run -------------------------------------------------------------------------------
t0=0
now() { date +%s.%N; }
note() { M="$*" awk -v t="$(now)" -v t0="$t0" 'BEGIN { printf "[%6.2fs] %s\n", t - t0, ENVIRON["M"] }' >> "$V/timeline"; }
json_num() { grep -o "\"$1\":[0-9]*" | head -1 | cut -d: -f2; }  # FIELD < one JSON line
json_str() { grep -o "\"$1\":\"[^\"]*\"" | head -1 | cut -d: -f2- | tr -d '"'; }

# Where the server and agent are, at a glance, for the timeline.
snapshot() {
  local events
  events=$(grep -o '"event":"[a-z_]*"' "$V/serve.log" 2> /dev/null | cut -d'"' -f4 | tr '\n' ' ')
  note "  server events so far: ${events:-none}"
  local partial
  partial=$(find "$V/store" -path '*partial*' -type f -name '*' -printf '%s ' 2> /dev/null)
  [ -n "$partial" ] && note "  server partial file sizes: $partial"
  [ -s "$V/ship.out" ] && note "  agent json lines: $(wc -l < "$V/ship.out")"
  return 0
}

cut_link() {
  case $1 in
    drop)
      tc -n "$ns_car" qdisc replace dev "$veth_car" root $drop_qdisc &&
        tc -n "$ns_srv" qdisc replace dev "$veth_srv" root $drop_qdisc
      ;;
    down) ip -n "$ns_car" link set "$veth_car" down ;;
  esac
}
restore_link() {
  case $1 in
    drop)
      if [ "$shaped" = 1 ]; then
        tc -n "$ns_car" qdisc replace dev "$veth_car" root $shaper
      else
        tc -n "$ns_car" qdisc del dev "$veth_car" root
      fi
      tc -n "$ns_srv" qdisc del dev "$veth_srv" root
      ;;
    down) ip -n "$ns_car" link set "$veth_car" up ;;
  esac
}

failures=0
run_variant() {
  local variant=$1
  V=$W/$variant
  mkdir -p "$V"
  : > "$V/timeline"
  local problems=()
  problem() { problems+=("$*"); }
  t0=$(now)
  note "variant '$variant' (${2}); bundle $file_size bytes, digest $file_sha"

  ip netns exec "$ns_srv" "$MLFX" serve --listen "$srv_ip:$port" --store "$V/store" --ca-dir "$W/ca" \
    --cert "$W/intake.pem" --key "$W/intake.key" --idle-timeout "$idle_timeout" 2> "$V/serve.log" &
  serve_pid=$!
  for _ in $(seq 100); do
    grep -q '"event":"listening"' "$V/serve.log" 2> /dev/null && break
    kill -0 "$serve_pid" 2> /dev/null || break
    sleep 0.05
  done
  if ! grep -q '"event":"listening"' "$V/serve.log"; then
    problem "the server did not start listening"
  else
    note "server listening on $srv_ip:$port in $ns_srv (pid $serve_pid), --idle-timeout $idle_timeout"
    "$AGENT" spool add --spool "$V/spool" "$W/b.mlfx" > "$V/spool_add.log" 2>&1 ||
      problem "spool add failed: $(cat "$V/spool_add.log")"
  fi

  local ship_rc="" crashed=0
  if [ ${#problems[@]} = 0 ]; then
    ip netns exec "$ns_car" "$AGENT" ship --spool "$V/spool" --server "$srv_ip:$port" --ca "$W/ca/ca.pem" \
      --cert "$W/dev.pem" --key "$W/dev.key" --until-empty --bandwidth 8M --timeout 3 \
      --backoff-min 0.5 --backoff-max 2 --json > "$V/ship.out" 2> "$V/ship.err" &
    ship_pid=$!
    note "agent shipping from $ns_car (pid $ship_pid), --bandwidth 8M$([ "$shaped" = 1 ] && echo ", link shaped to 8 MB/s")"
    sleep 3
    snapshot
    if ! kill -0 "$ship_pid" 2> /dev/null; then
      problem "the agent exited before the cut: the upload was too fast (is --bandwidth / the tbf shaping in effect?) or failed early"
    fi
    if cut_link "$variant" 2> "$V/cut.err"; then
      note "link CUT ($variant)"
    else
      problem "could not cut the link: $(cat "$V/cut.err")"
    fi
    sleep 3
    snapshot
    sleep 3
    snapshot
    restore_link "$variant" 2>> "$V/cut.err"
    note "link RESTORED"
    local deadline=$(($(date +%s) + 60))
    local server_died=0
    while kill -0 "$ship_pid" 2> /dev/null && [ "$(date +%s)" -lt "$deadline" ]; do
      if ! kill -0 "$serve_pid" 2> /dev/null; then server_died=1; break; fi
      sleep 0.1
    done
    if kill -0 "$ship_pid" 2> /dev/null; then
      snapshot
      if [ "$server_died" = 1 ]; then
        problem "the server died while the agent was still shipping (last server output: $(tail -1 "$V/serve.log"))"
      else
        problem "the agent did not finish within 60 s of the link's return"
      fi
      stop_pid "$ship_pid"
      ship_rc="killed"
    else
      wait "$ship_pid"
      ship_rc=$?
      note "agent exited with status $ship_rc"
      [ "$ship_rc" = 0 ] || problem "the agent exited with status $ship_rc"
    fi
    ship_pid=""
  fi
  if kill -0 "$serve_pid" 2> /dev/null; then
    stop_pid "$serve_pid"
  else
    wait "$serve_pid" 2> /dev/null
    local serve_rc=$?
    note "the server had exited by itself, status $serve_rc"
    crashed=1
    problem "the server exited by itself with status $serve_rc (last output: $(tail -1 "$V/serve.log"))"
  fi
  serve_pid=""

  # --- checks ---
  local objects=()
  [ -d "$V/store/objects" ] && mapfile -t objects < <(find "$V/store/objects" -name '*.mlfx' | sort)
  if [ ${#objects[@]} != 1 ]; then
    problem "the store holds ${#objects[@]} bundle objects, not 1: ${objects[*]:-}"
  else
    local obj=${objects[0]}
    [ "$(basename "$obj")" = "$file_sha.mlfx" ] || problem "the object is named $(basename "$obj"), not $file_sha.mlfx"
    cmp -s "$obj" "$W/b.mlfx" || problem "the stored object differs from the bundle: $(cmp "$obj" "$W/b.mlfx" 2>&1)"
    [ -s "$V/store/objects/$file_sha.receipt.json" ] || problem "no $file_sha.receipt.json in the store"
    [ -s "$V/store/objects/$file_sha.custody.jsonl" ] || problem "no $file_sha.custody.jsonl in the store"
    "$MLFX" bundle verify -q --trusted-devices "$W/trusted" "$obj" > "$V/verify.log" 2>&1 ||
      problem "mlfx bundle verify fails on the stored object: $(tail -5 "$V/verify.log")"
  fi

  "$AGENT" status --spool "$V/spool" --json > "$V/status.json" 2> "$V/status.err" || problem "mlfx-agent status failed"
  local flat
  flat=$(tr -d ' \n' < "$V/status.json")
  grep -q '"queue":\[\]' <<< "$flat" || problem "the spool queue is not empty"
  grep -q '"receipts":1[,}]' <<< "$flat" || problem "the spool does not hold exactly one receipt"

  # The server's log: per connection an "upload" line per bundle and a "disconnected" line with
  # bytes_in (whole frames read). Everything read minus the file is what was sent twice.
  local uploads disconnects bytes_in=0 n_conn=0 received_sum=0 stored=0 interrupted=0
  uploads=$(grep '"event":"upload"' "$V/serve.log")
  disconnects=$(grep '"event":"disconnected"' "$V/serve.log")
  while IFS= read -r line; do
    [ -n "$line" ] || continue
    n_conn=$((n_conn + 1))
    bytes_in=$((bytes_in + $(json_num bytes_in <<< "$line")))
  done <<< "$disconnects"
  while IFS= read -r line; do
    [ -n "$line" ] || continue
    local r rb
    r=$(json_str result <<< "$line")
    rb=$(json_num received_bytes <<< "$line")
    received_sum=$((received_sum + rb))
    note "server upload: result=$r received_bytes=$rb"
    [ "$r" = stored ] && stored=$((stored + 1))
    [ "$r" != stored ] && [ "$r" != busy ] && [ "$rb" -gt 0 ] && interrupted=$((interrupted + 1))
  done <<< "$uploads"
  while IFS= read -r line; do
    [ -n "$line" ] || continue
    note "server connection: end=\"$(json_str end <<< "$line")\" bytes_in=$(json_num bytes_in <<< "$line")"
  done <<< "$disconnects"
  local overhead=$((16 * record_frames + 4096 * n_conn))
  local extra=$((bytes_in - file_size))
  note "server read $bytes_in bytes in $n_conn connection(s): $extra over the file" \
    "(allowed: one unit $unit_max + framing $overhead); sum of received_bytes $received_sum"
  if [ "$crashed" = 1 ]; then
    note "(the server's upload accounting is not checked: it died before logging it)"
  else
    [ "$stored" = 1 ] || problem "the server log shows $stored stored uploads, not 1"
    [ "$interrupted" -ge 1 ] || problem "the server log shows no interrupted upload: the cut did not hit the transfer"
    [ "$n_conn" -ge 2 ] || problem "only $n_conn connection(s): the upload did not resume on a new one"
    [ "$extra" -ge 0 ] || problem "the server read less than the file ($bytes_in < $file_size)"
    [ "$extra" -le $((unit_max + overhead)) ] ||
      problem "the server read $extra bytes more than the file: more than one unit was sent twice"
    [ $((received_sum - file_size)) -le "$unit_max" ] ||
      problem "the upload lines' received_bytes add up to $received_sum, more than one unit over the file"
  fi

  # The agent's view: one JSON line per attempt.
  local last_held=0 last_sent=0 agent_sent=0
  while IFS= read -r line; do
    [ -n "$line" ] || continue
    note "agent: $line"
  done < "$V/ship.out"
  # The final attempt sends exactly what the server lacked.
  local final
  final=$(grep '"result":"stored"' "$V/ship.out" | tail -1)
  if [ -n "$final" ]; then
    last_held=$(json_num held_before <<< "$final")
    last_sent=$(json_num sent_bytes <<< "$final")
    [ $((last_held + last_sent)) = "$file_size" ] ||
      problem "the final attempt held $last_held + sent $last_sent != $file_size bytes"
  else
    problem "the agent reported no stored upload"
  fi

  if [ ${#problems[@]} = 0 ]; then
    echo "PASS: variant '$variant' ($2)"
    sed 's/^/  /' "$V/timeline"
    rm -rf "$V"
  else
    failures=$((failures + 1))
    echo "FAIL: variant '$variant' ($2)"
    for p in "${problems[@]}"; do echo "  - $p"; done
    echo "  timeline:"
    sed 's/^/    /' "$V/timeline"
    for f in serve.log ship.out ship.err status.json cut.err verify.log; do
      [ -s "$V/$f" ] || continue
      echo "  --- $f (last 40 lines)"
      tail -40 "$V/$f" | sed 's/^/    /'
    done
    echo "  --- store"
    find "$V/store" -printf '    %p %s\n' 2> /dev/null | head -30
  fi
}

ran=0
for variant in $variants; do
  case $variant in
    drop)
      if [ -z "$drop_qdisc" ]; then
        echo "NOTE: variant 'drop' not run: the kernel has neither netem nor the blackhole qdisc"
        continue
      fi
      run_variant drop "silent drop with tc qdisc $drop_qdisc on both ends, interfaces up"
      ;;
    down) run_variant down "the car's veth end set down" ;;
    *) echo "unknown variant '$variant'" >&2; exit 2 ;;
  esac
  ran=$((ran + 1))
done
[ "$ran" -gt 0 ] || skip "no way to cut the link in this kernel"
if [ "$failures" -gt 0 ]; then
  echo "FAILED: $failures of $ran variant(s)"
  exit 1
fi
echo "OK: $ran variant(s) passed"
exit 0
