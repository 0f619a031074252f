#!/usr/bin/env bash
# Issue 11, item 6: `--sysroot` must not read lab files into exports. A real torch victim whose
# weight lives in a file-mapped tensor is captured with gcore, which leaves the mapping's bytes
# out: the core only names the file (NT_FILE). In the lab that path holds something else (here:
# a secret; an NT_FILE entry may name any lab-side path). `mlfx recover --sysroot /` must refuse
# the file (it is no ELF object whose build-id the core vouches for), say so in report.json,
# mark the model incomplete, and put none of the file's bytes into any output; the interpreter
# itself is still read, its build-id matching the core's.
#   sysroot_lab_file_test.sh BUILD_DIR
set -euo pipefail
build=$(realpath "$1")
here=$(cd "$(dirname "$0")" && pwd)
py=/usr/bin/python3
mlfx=$build/analyzer/mlfx
command -v gcore > /dev/null || { echo "SKIP: gcore (gdb) is not installed: apt-get install gdb"; exit 77; }
work=$(mktemp -d "${TMPDIR:-/tmp}/mlfx-adv-sysroot-XXXXXX")
victim=
cleanup() {
  [ -n "$victim" ] && kill "$victim" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
cd "$work"

"$py" "$here/mapped_weights_victim.py" gt &
victim=$!
for _ in $(seq 240); do [ -f gt/ready ] && break; sleep 0.25; done
[ -f gt/ready ] || fail "the victim did not start"
gcore -o core "$victim" > gcore.log 2>&1 || { cat gcore.log; fail "gcore failed"; }
kill "$victim"; wait "$victim" 2>/dev/null || true
victim=

# The lab-side file at the path the core names.
"$py" -c "open('gt/weights.bin', 'wb').write(b'LAB-SECRET-0123456789abcdef' * 1000)"
rc=0
"$mlfx" recover "core.$(cat gt/ready)" --sysroot / --out out -q > recover.log 2>&1 || rc=$?
[ "$rc" = 0 ] || { cat recover.log; fail "recover exited $rc"; }
if grep -rqa "LAB-SECRET" out; then fail "the lab file's bytes are in the output: $(grep -rla LAB-SECRET out)"; fi
"$py" - "$work" <<'PY' || fail "report.json does not show the refusal"
import json, sys
work = sys.argv[1]
r = json.load(open("out/report.json"))
files = {f["path"]: f for f in r["input"]["sysroot"]["files"]}
w = files[work + "/gt/weights.bin"]
assert w["refused"] and not w["attached"] and not w["read"], w
assert w["detail"].startswith("refused: "), w
assert any(f["verified"] and f["read"] for f in files.values()), "the interpreter is read, build-id verified"
assert [m["complete"] for m in r["models"]] == [False], r["models"]
warnings = "\n".join(r["diagnostics"]["warnings"])
assert "weights.bin not read" in warnings and "is not all in the image" in warnings, warnings
PY
echo PASS
