#!/usr/bin/env bash
# Issue 11, item 1: `mlfx rehost` runs no code that the evidence names or carries. A model
# directory whose architecture names classes of modules that sit in the evidence folder (or of
# the standard library, or odd dotted names), rehosted with the analyst's shell in that folder
# and a hostile environment (PYTHONPATH, PYTHONSTARTUP, a user site with usercustomize.py):
# nothing runs (no marker file appears), exit 3 names every class. The analyst's source given
# with --code-path still works when it sits beside hostile files (a module shadowing torch,
# bytecode in __pycache__ that is not the source), a directory of source imports its own
# modules but never shadows an installed one, and rehost.json records the SHA-256 of each file
# of code executed, of the library modules, of the interpreter and of the embedded script.
# --allow-module extends the library allowlist, and is recorded.
#   hostile_classes_test.sh BUILD_DIR
set -euo pipefail
build=$(realpath "$1")
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
py=/usr/bin/python3
mlfx=$build/analyzer/mlfx
work=$(mktemp -d "${TMPDIR:-/tmp}/mlfx-adv-rehost-XXXXXX")
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
markers=$work/markers ev=$work/evidence tmp=$work/tmp
mkdir -p "$markers" "$tmp"
no_marker() { [ -z "$(ls -A "$markers")" ] || fail "$1: code from the evidence ran: $(ls "$markers")"; }
# rehost RUN_NAME EXPECTED_EXIT ARGS...: from inside the evidence folder, TMPDIR to $tmp.
rehost() {
  local name=$1 want=$2 rc=0
  shift 2
  (cd "$ev" && TMPDIR=$tmp "$mlfx" rehost "$@" --out "$work/$name") > "$work/$name.out" 2> "$work/$name.err" || rc=$?
  no_marker "$name"
  [ "$rc" = "$want" ] || { cat "$work/$name.err"; fail "$name: exit $rc, want $want"; }
  [ -z "$(ls -A "$tmp")" ] || fail "$name: the temporary working directory was left: $(ls "$tmp")"
}
# What every run of the lab's Python must show in rehost.json: isolated, nothing of the
# evidence folder on sys.path, its working directory gone, the embedded script's hash.
check_isolated() {
  "$py" - "$work/$1/rehost.json" "$ev" "$root/analyzer/rehost/python/mlfx_rehost.py" <<'EOF'
import hashlib, json, os, sys
r, ev, script = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
x = r["executed_code"]
i = x["interpreter"]
assert i["arguments"][:2] == ["-I", "-B"], i["arguments"]
assert i["flags"]["isolated"] == 1 and i["flags"]["no_user_site"] == 1 and i["flags"]["ignore_environment"] == 1, i["flags"]
assert "" not in i["sys_path"] and not any(p.startswith(ev) for p in i["sys_path"]), i["sys_path"]
assert i["sha256"] == hashlib.sha256(open(os.path.realpath(i["path"]), "rb").read()).hexdigest()
assert not os.path.exists(i["working_directory"]) and not i["working_directory"].startswith(ev), i["working_directory"]
assert sorted(i["environment"]) == ["HOME", "LANG", "LC_ALL", "PATH", "TMPDIR"], i["environment"]
assert x["script"]["sha256"] == hashlib.sha256(open(script, "rb").read()).hexdigest(), "script hash"
for m in x["library_modules"]:
    assert any(m["name"] == a or m["name"].startswith(a + ".") for a in x["allowed_modules"]), m
    assert m["sha256"] == hashlib.sha256(open(m["file"], "rb").read()).hexdigest(), m
EOF
}

"$py" "$here/craft.py" plant "$ev" "$markers"
hostile=(evilmod.Net evilpkg.sub.Net evilpkg.Net os.system subprocess.Popen builtins.object __main__.Rebuilder
         json.JSONDecoder torch.nn..Linear .evilmod.Net ../../evilmod.Net "evilmod.Net;x" evilmod.Net.
         torch.nn.modules.module.Module.__base__ torch.nn.modules.linear.torch.hub.Net)
"$py" "$here/craft.py" model "$ev/models/0-Net" "${hostile[@]}"

echo "== classes the memory names, rehosted inside the evidence folder"
rehost names 3 models/0-Net
check_isolated names
"$py" - "$work/names/rehost.json" "${hostile[@]}" <<'EOF'
import json, sys
p = json.load(open(sys.argv[1]))["python_classes"]
assert sorted(p["missing_classes"]) == sorted(sys.argv[2:]), p["missing_classes"]
x = json.load(open(sys.argv[1]))["executed_code"]
assert x["code_files"] == [], x["code_files"]
assert "evilmod" not in json.dumps(x["library_modules"]), x["library_modules"]
EOF
for c in evilmod.Net evilpkg.sub.Net __main__.Rebuilder; do
  grep -q "class \"$c\" .*--code-path" "$work/names.err" || { cat "$work/names.err"; fail "the message does not name $c"; }
done

echo "== a hostile environment: PYTHONPATH, PYTHONSTARTUP, usercustomize in the user site"
home=$work/home
usersite=$(HOME=$home "$py" -c 'import site; print(site.getusersitepackages())')
mkdir -p "$usersite" && cp "$ev/usercustomize.py" "$ev/sitecustomize.py" "$usersite/"
"$py" "$here/craft.py" model "$ev/models/1-Net" evilmod.Net
HOME=$home PYTHONPATH=$ev PYTHONSTARTUP=$ev/startup.py rehost env 3 models/1-Net
check_isolated env

echo "== the analyst's source beside hostile files (torch.py, evilmod.py, bytecode that is not the source)"
"$py" "$here/craft.py" goodmodel "$ev" "$markers"
"$py" "$here/craft.py" model "$ev/models/2-Net" goodmodel.Net
rehost good 0 models/2-Net --code-path "$ev/goodmodel.py"
check_isolated good
"$py" - "$work/good/rehost.json" "$ev/goodmodel.py" <<'EOF'
import hashlib, json, sys
r, src = json.load(open(sys.argv[1])), sys.argv[2]
assert r["path"] == "python-classes" and r["python_classes"]["state_dict_equal"], r["python_classes"]
x = r["executed_code"]
want = hashlib.sha256(open(src, "rb").read()).hexdigest()
assert x["code_files"] == [{"path": src, "module": "goodmodel", "sha256": want}], x["code_files"]
names = [m["name"] for m in x["library_modules"]]
assert "torch.nn" in names and "torch.nn.modules.linear" in names, names
assert x["allowed_modules_added"] == [], x
EOF
[ -f "$work/good/model.full.pt" ] && [ -f "$work/good/model.torchscript.pt" ] || fail "the model files are missing"

echo "== the analyst's source as a directory: its modules import each other, never shadow torch or json"
"$py" "$here/craft.py" package "$work/src" "$markers"
"$py" "$here/craft.py" model "$ev/models/4-Net" pkgnet.net.Net
rehost package 0 models/4-Net --code-path "$work/src"
check_isolated package
"$py" - "$work/package/rehost.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
assert r["python_classes"]["state_dict_equal"], r["python_classes"]
got = sorted(f["module"] for f in r["executed_code"]["code_files"])
assert got == ["pkgnet", "pkgnet.layers", "pkgnet.net"], got
EOF

echo "== --allow-module extends the allowlist, and is recorded"
"$py" "$here/craft.py" model "$ev/models/3-Stub" torch.ao.quantization.stubs.QuantStub
rehost stub-refused 3 models/3-Stub
grep -q 'class "torch.ao.quantization.stubs.QuantStub"' "$work/stub-refused.err" || fail "QuantStub not named"
rehost stub 0 models/3-Stub --allow-module torch.ao.quantization
check_isolated stub
"$py" - "$work/stub/rehost.json" <<'EOF'
import json, sys
x = json.load(open(sys.argv[1]))["executed_code"]
assert x["allowed_modules_added"] == ["torch.ao.quantization"], x
assert "torch.ao.quantization.stubs" in [m["name"] for m in x["library_modules"]], x["library_modules"]
EOF
for bad in ../evilmod "os;id" "" .evil torch..nn; do
  rc=0
  (cd "$ev" && "$mlfx" rehost models/3-Stub --out "$work/bad-allow" --allow-module "$bad") 2> "$work/bad.err" || rc=$?
  [ "$rc" != 0 ] && [ ! -e "$work/bad-allow/rehost.json" ] || fail "--allow-module '$bad' accepted"
  grep -q "allow-module" "$work/bad.err" || { cat "$work/bad.err"; fail "no message for --allow-module '$bad'"; }
done
no_marker "end"
echo PASS
