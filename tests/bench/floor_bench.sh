#!/usr/bin/env bash
# Benchmark (not a test) of issue 12's figures, each against its floor on this machine, in the
# same run, ROUNDS interleaved rounds (reference, then mlfx), `sync` before every timed run,
# warm page cache; medians and ratios (median mlfx / median reference).
#
#   tests/bench/floor_bench.sh [BUILD_DIR] [ROUNDS]      (as root: the capture)
#
#   seal      mlfx bundle seal of 1 GiB of random data  vs  openssl dgst -sha256 of the file
#             running beside cp of it + sync                              (goal <= 1.25)
#   open      mlfx bundle open of that bundle (decrypt, write, fsync)  vs  the same reference
#             over the bundle
#   verify    mlfx bundle verify of it  vs  openssl dgst -sha256 of the bundle
#   recover_core    mlfx recover of a ~60 M-parameter model's core  vs  cp -r of the output
#                   directory recover wrote                           (goal <= 1.5)
#   recover_bundle  mlfx recover of the same model's bundle  vs  openssl dgst -sha256 of the
#                   bundle                                            (goal <= 2.0)
#   frozen    how long mlfx-agent capture keeps the target frozen (its own report)  vs  a raw
#             read of all the target's readable mappings (python3, /proc/PID/mem)  (goal <= 1.0)
#   upload    tests/bench/upload_bench.sh (mlfx-agent ship -> mlfx serve vs openssl s_client ->
#             s_server into a file, same certificates), throughput mlfx / reference (goal >= 0.8);
#             FLOOR_UPLOAD_MIB (default 1024) sets its size, FLOOR_UPLOAD=0 skips it.
# The machines here are small and shared: quote the ratios, and rerun when something else ran.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
source "$here/bench_common.sh"
build=$(realpath "${1:-$root/build}")
rounds=${2:-3}
work=$(mktemp -d "${TMPDIR:-/tmp}/mlfx-floor-bench-XXXXXX")
victim_gt=
cleanup() {
  [ -n "$victim_gt" ] && touch "$victim_gt/stop" 2>/dev/null || true
  chmod -R u+w "$work" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
cd "$work"
copy_binaries "$build"
"$mlfx" keys gen --kind device --out dev > /dev/null
"$mlfx" keys gen --kind lab --out lab > /dev/null
# The lab's trust store binds the device key to this host (the device id of both seal and capture).
mkdir trusted && cp dev.pub "trusted/$(hostname).pub"
seal() { "$mlfx" bundle seal -q "$1" --out "$2" --device-key dev.key --recipient lab.pub; }

declare -A s
add() { [ -n "$2" ] || { echo "floor_bench: a timed run failed ($1)" >&2; exit 1; }; s[$1]+="$2 "; }
m() { echo "${s[$1]}" | median; }

# --- seal, open, verify: 1 GiB of random data
head -c 1G /dev/urandom > data
seal data sealed.mlfx > /dev/null
cat data sealed.mlfx > /dev/null
hash_beside_copy() { openssl dgst -sha256 "$1" > /dev/null & cp "$1" copy; sync; wait; }
for r in $(seq "$rounds"); do
  rm -f copy; add seal_ref "$(timed hash_beside_copy data)"
  rm -f out.mlfx; add seal "$(timed seal data out.mlfx)"
  rm -f copy; add open_ref "$(timed hash_beside_copy sealed.mlfx)"
  chmod -R u+w opened 2>/dev/null || true; rm -rf opened
  add open "$(timed "$mlfx" bundle open -q sealed.mlfx --key lab.key --out opened)"
  add verify_ref "$(timed openssl dgst -sha256 sealed.mlfx)"
  add verify "$(timed "$mlfx" bundle verify -q sealed.mlfx --trusted-devices trusted)"
done
cmp data opened/data
rm -f copy out.mlfx data; chmod -R u+w opened; rm -rf opened

# --- the ~60 M-parameter victim: capture (frozen time), its core and its bundle recovered
victim_gt=$work/gt
victim=$(start_victim big "$victim_gt")
for r in $(seq "$rounds"); do
  add raw_read "$(timed raw_read_mappings "$victim")"
  rm -f cap.mlfx; sync
  "$agent" capture --pid "$victim" --out cap.mlfx --device-key dev.key --recipient lab.pub -q > capture.out
  add frozen "$(sed -n 's/.*frozen \([0-9]*\) ms.*/\1/p' capture.out | awk '{print $1 / 1000}')"
done
raw_bytes=$(raw_read_mappings "$victim")
"$mlfx" bundle open -q cap.mlfx --key lab.key --trusted-devices trusted --out capopen > /dev/null
cp capopen/core core.elf
cat core.elf cap.mlfx > /dev/null
rm -rf rec; "$mlfx" recover -q core.elf --out rec > /dev/null
for r in $(seq "$rounds"); do
  rm -rf rec_copy; add recover_core_ref "$(timed cp -r rec rec_copy)"
  rm -rf rec; add recover_core "$(timed "$mlfx" recover -q core.elf --out rec)"
  add recover_bundle_ref "$(timed openssl dgst -sha256 cap.mlfx)"
  rm -rf recb
  add recover_bundle "$(timed "$mlfx" recover -q cap.mlfx --key lab.key --trusted-devices trusted --out recb)"
done
/usr/bin/python3 "$root/tests/victims/check_recovery.py" "$victim_gt" rec > /dev/null
/usr/bin/python3 "$root/tests/victims/check_recovery.py" "$victim_gt" recb > /dev/null
params=$(jq -r '[.models[].parameters] | add' rec/report.json 2>/dev/null || echo "?")
touch "$victim_gt/stop"; victim_gt=

echo "floor_bench: $rounds rounds; $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs);" \
     "load average before the report: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "victim: $params parameters, $((raw_bytes >> 20)) MiB readable memory, core $(( $(stat -c %s core.elf) >> 20 )) MiB," \
     "bundle $(( $(stat -c %s cap.mlfx) >> 20 )) MiB"
printf '%-15s %9s %9s %7s %6s  %s\n' figure mlfx_s ref_s ratio goal reference
row() {  # figure goal reference-words
  printf '%-15s %9.3f %9.3f %7.2f %6s  %s\n' "$1" "$(m "$1")" "$(m "$1_ref")" \
    "$(echo "$(m "$1") / $(m "$1_ref")" | bc -l)" "$2" "$3"
}
s[frozen_ref]=${s[raw_read]}
row seal "<=1.25" "openssl sha256 of the file beside cp + sync (1 GiB)"
row open "-" "openssl sha256 of the bundle beside cp + sync"
row verify "-" "openssl sha256 of the bundle"
row recover_core "<=1.5" "cp -r of the output directory recover wrote"
row recover_bundle "<=2.0" "openssl sha256 of the bundle"
row frozen "<=1.0" "raw read of all the target's mappings"
echo "samples (seconds, in round order):"
for k in seal seal_ref open open_ref verify verify_ref recover_core recover_core_ref recover_bundle recover_bundle_ref frozen raw_read; do
  printf '  %-19s %s\n' "$k" "${s[$k]}"
done

# --- upload, through its own benchmark (its rounds interleave reference and mlfx the same way)
if [ "${FLOOR_UPLOAD:-1}" != 0 ]; then
  mib=${FLOOR_UPLOAD_MIB:-1024}
  if UPLOAD_BENCH_MIB=$mib "$here/upload_bench.sh" "$build" "$rounds" > upload.out 2>&1; then
    upload_ref=$(awk '$1 == "ref" {print $2}' upload.out)
    upload_mlfx=$(awk '$1 == "mlfx" {print $2}' upload.out)
    printf '%-15s %9.3f %9.3f %7.2f %6s  %s\n' upload "$upload_mlfx" "$upload_ref" \
      "$(echo "$upload_ref / $upload_mlfx" | bc -l)" ">=0.8" \
      "openssl s_client -> s_server into a file, $mib MiB; ratio = throughput mlfx / reference"
    grep -v '^mlfx-agent: ship: warning' upload.out | sed 's/^/  upload_bench: /'
  else
    echo "upload: tests/bench/upload_bench.sh failed; the end of its output:"
    grep -v '^mlfx-agent: ship: warning' upload.out | tail -15 | sed 's/^/  upload_bench: /'
  fi
fi
