"""By-hand check of analyzer/rehost/python/mlfx_rehost.py against a live capture of
tests/victims/torch_victim.py (not registered in ctest).

    /usr/bin/python3 tests/rehost/python_rehost_selftest.py SCENARIO GT_DIR REC_DIR [SCRATCH]
    /usr/bin/python3 tests/rehost/python_rehost_selftest.py --synthetic [SCRATCH]

GT_DIR is the victim's ground-truth directory, REC_DIR the `mlfx recover --out` directory.
For every recovered model the script runs the rehost (as the CLI does: `python3 -I -B - ARGS`, the
script on stdin), loads model.full.pt, and checks: exit 0, state_dict bit-identical to the
victim's <name>.pt, outputs on the victim's inputs (rebuilt by build(SCENARIO) under the same
seed) bit-identical to outputs_before.pt, and the TorchScript file's outputs too.

--synthetic needs no capture: it writes a MODEL_DIR the way `mlfx recover` lays one out from a
live model with shared submodules, a None child, nested classes, tuple and non-finite float
attributes, a function attribute, a non-contiguous non-persistent buffer, and checks the rehost
(and the exit statuses 3 and 1).
"""
import json, os, subprocess, sys, tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SCRIPT = os.path.join(ROOT, "analyzer", "rehost", "python", "mlfx_rehost.py")
VICTIM = os.path.join(ROOT, "tests", "victims", "torch_victim.py")
# The victim's whole source: its own file and the module it imports. Files given with
# --code-path are loaded by path; nothing else beside them is imported.
VICTIM_SOURCE = ["--code-path", VICTIM, "--code-path", os.path.join(ROOT, "tests", "victims", "victim_serve.py")]


def bits(t):
    c = t.detach().contiguous().reshape(-1)
    if c.dtype == torch.bool:
        c = c.to(torch.uint8)
    return (c.dtype, tuple(t.shape), c.view(torch.uint8).numpy().tobytes() if c.numel() else b"")


def same(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and bits(a) == bits(b)
    if isinstance(a, (tuple, list)):
        return type(a) == type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


SYNTH_SOURCE = """
import torch, torch.nn as nn

class Outer:
    class Inner(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.lin = nn.Linear(n, n)
            self.gain = 0.5

        def forward(self, x):
            return self.lin(x) * self.gain

class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        lin = nn.Linear(8, 8)
        self.a = lin
        self.b = lin                                    # the same module twice
        self.blocks = nn.ModuleList([lin, nn.ReLU(), Outer.Inner(8)])
        self.register_module("empty", None)             # a None child
        self.clip = float("inf")                        # non-finite float
        self.shape = (2, 8)                             # tuple
        self.names = ["a", "b"]                         # list stays a list
        self.fn = torch.tanh                            # not restorable
        self.register_buffer("window", torch.randn(8, 6).t(), persistent=False)  # strides (1, 6)
        self.register_buffer("nothing", None)
        self.tail = nn.Linear(8, 6, bias=False)

    def forward(self, x):
        y = self.blocks[2](self.blocks[1](self.b(self.a(x)))).clamp(max=self.clip)
        return (self.tail(y) + self.window.sum(1)).reshape(self.shape[0], -1)

if __name__ == "__main__":
    raise SystemExit("the __main__ block must not run")
"""


def describe(module, path, tensors_of):
    """architecture.json's node for a live module, as the recovery writes it."""
    import math
    node = {"path": path, "address": hex(id(module)),
            "class": type(module).__module__ + "." + type(module).__qualname__,
            "training": module.training, "attributes": {}, "attribute_types": {}, "other_attributes": []}
    internal = {"training", "_parameters", "_buffers", "_non_persistent_buffers_set", "_modules"}
    for k, v in vars(module).items():
        if k in internal or (k.startswith("_") and k.endswith("hooks")) or k.endswith("hooks_with_kwargs") \
                or k in ("_is_full_backward_hook", "_forward_hooks_always_called"):
            continue
        if isinstance(v, (int, float, str, bool, type(None), tuple, list)) and not callable(v):
            if isinstance(v, float) and not math.isfinite(v):
                node["attribute_types"][k] = "float"
                v = "nan" if v != v else ("inf" if v > 0 else "-inf")
            elif isinstance(v, tuple):
                node["attribute_types"][k] = "tuple"
            node["attributes"][k] = json.loads(json.dumps(v))
        else:
            node["other_attributes"].append(k)
    node["parameters"] = [{"name": n, "none": p is None} for n, p in module._parameters.items()]
    node["buffers"] = [{"name": n, "none": b is None} for n, b in module._buffers.items()]
    node["non_persistent_buffers"] = sorted(module._non_persistent_buffers_set)
    node["children"] = []
    for n, c in module._modules.items():
        cp = path + "." + n if path else n
        node["children"].append({"path": cp, "class": None, "none": True} if c is None else describe(c, cp, tensors_of))
    return node


def write_safetensors(path, tensors):
    import struct
    names = {torch.float32: "F32", torch.float64: "F64", torch.int64: "I64"}
    header, blobs, off = {}, [], 0
    for k, t in tensors.items():
        b = t.contiguous().numpy().tobytes()
        header[k] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def synthetic(scratch):
    import importlib.util
    os.makedirs(scratch, exist_ok=True)
    code_dir = os.path.join(scratch, "code")
    os.makedirs(code_dir, exist_ok=True)
    with open(os.path.join(code_dir, "synth_models.py"), "w") as f:
        f.write(SYNTH_SOURCE)
    spec = importlib.util.spec_from_file_location("synth_models", os.path.join(code_dir, "synth_models.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules["synth_models"] = mod
    spec.loader.exec_module(mod)
    torch.manual_seed(7)
    model = mod.Shared().eval()
    x = torch.randn(2, 8)
    with torch.no_grad():
        want = model(x)
    model_dir = os.path.join(scratch, "model")
    os.makedirs(model_dir, exist_ok=True)
    sd = model.state_dict()
    torch.save(sd, os.path.join(model_dir, "state_dict.pt"))
    write_safetensors(os.path.join(model_dir, "non_persistent.safetensors"), {"window": model.window})
    arch = describe(model, "", None)
    arch["class"] = "__main__.Shared"                    # as if the victim ran the file as a script
    arch["tensors"] = {}
    for k, t in list(sd.items()) + [("window", model.window)]:
        arch["tensors"][k] = {"address": hex(id(t)), "storage": hex(t.storage().data_ptr()),
                              "dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape),
                              "stride": list(t.stride()), "storage_offset": t.storage_offset(),
                              "storage_bytes": t.storage().size() * t.element_size(),
                              "persistent": k != "window", "buffer": k == "window"}
    # sd values are detached aliases: give tied keys the same address, as the recovery does.
    for k in arch["tensors"]:
        owner = model.get_parameter(k) if k != "window" else model.window
        arch["tensors"][k]["address"] = hex(id(owner))
    with open(os.path.join(model_dir, "architecture.json"), "w") as f:
        json.dump(arch, f, indent=1)

    failures = []
    def rehost(out, *extra):
        with open(SCRIPT, "rb") as f:
            p = subprocess.run([sys.executable, "-I", "-B", "-", model_dir, "--out", out] + list(extra),
                               stdin=f, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        return p.returncode, json.loads(p.stdout), p.stderr.decode()

    rc, res, err = rehost(os.path.join(scratch, "missing"))
    if rc != 3 or res["missing_classes"] != ["__main__.Shared", "synth_models.Outer.Inner"] \
            or os.path.exists(os.path.join(scratch, "missing")):
        failures.append("no code path: expected exit 3 and nothing written, got %d %s" % (rc, res))
    out = os.path.join(scratch, "out")
    rc, res, err = rehost(out, "--code-path", os.path.join(code_dir, "synth_models.py"), "--code-path", code_dir)
    if rc != 0:
        failures.append("exit %d: %s\n%s" % (rc, res, err[-2000:]))
    else:
        if not res["state_dict_equal"]:
            failures.append("state_dict: %s" % res.get("state_dict_differences"))
        if res["unrestorable_attributes"] != [{"module": "", "name": "fn"}] or res["ok"]:
            failures.append("fn should be the one unrestorable attribute (and ok false): %s" % res)
        m = torch.load(os.path.join(out, "model.full.pt"))
        checks = {
            "shared module": m.a is m.b is m.blocks[0],
            "None child": "empty" in m._modules and m._modules["empty"] is None,
            "None buffer": "nothing" in m._buffers and m._buffers["nothing"] is None,
            "inf attribute": m.clip == float("inf"),
            "tuple attribute": m.shape == (2, 8) and isinstance(m.shape, tuple),
            "list attribute": m.names == ["a", "b"],
            "module order": list(m._modules) == list(model._modules),
            "non-persistent layout": m.window.stride() == model.window.stride() and bits(m.window) == bits(model.window),
            "non-persistent set": m._non_persistent_buffers_set == {"window"},
            "training": m.training is False,
        }
        with torch.no_grad():
            checks["outputs"] = same(m(x), want)
            if res["torchscript"]:
                checks["torchscript outputs"] = same(torch.jit.load(os.path.join(out, res["torchscript"]))(x), want)
            else:
                failures.append("no torchscript: %s" % res["torchscript_error"])
        failures += [k + " fails" for k, v in checks.items() if not v]
        print("synthetic:", checks)
    os.rename(os.path.join(model_dir, "state_dict.pt"), os.path.join(model_dir, "state_dict.pt.away"))
    rc, res, err = rehost(os.path.join(scratch, "bad"), "--code-path", code_dir)
    os.rename(os.path.join(model_dir, "state_dict.pt.away"), os.path.join(model_dir, "state_dict.pt"))
    if rc != 1 or "error" not in res:
        failures.append("no state_dict.pt: expected exit 1 with an error, got %d %s" % (rc, res))
    for f in failures:
        print("    " + f)
    print("synthetic:", "FAIL" if failures else "PASS")
    return 1 if failures else 0


def main():
    if sys.argv[1] == "--synthetic":
        return synthetic(sys.argv[2] if len(sys.argv) > 2 else tempfile.mkdtemp(prefix="rehost-synth-"))
    scenario, gt, rec = sys.argv[1:4]
    scratch = sys.argv[4] if len(sys.argv) > 4 else tempfile.mkdtemp(prefix="rehost-")
    os.makedirs(scratch, exist_ok=True)
    sys.path.insert(0, os.path.dirname(VICTIM))
    import torch_victim  # noqa: E402  (seeds torch with 1234 as the victim did)
    torch.manual_seed(1234)
    built, _ = torch_victim.build(scenario)
    inputs = {name: x for name, _, x in built}
    classes = {name: type(m).__qualname__ for name, m, _ in built}
    want_out = torch.load(os.path.join(gt, "outputs_before.pt"))
    listing = json.load(open(os.path.join(gt, "models.json")))
    report = json.load(open(os.path.join(rec, "report.json")))
    failures = 0
    for entry in listing:
        name = entry["name"]
        model_dirs = [m["directory"] for m in report["models"] if m["class"].split(".")[-1] == classes[name]]
        if not model_dirs:
            print("%s/%s: FAIL no recovered model of class %s" % (scenario, name, classes[name]))
            failures += 1
            continue
        model_dir = os.path.join(rec, model_dirs[0])
        out = os.path.join(scratch, scenario + "-" + name)
        cli = os.environ.get("MLFX_CLI")  # set: through `mlfx rehost`, which embeds the script
        try:
            if cli:
                p = subprocess.run([cli, "rehost", model_dir, "--out", out] + VICTIM_SOURCE,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                rehost = json.load(open(os.path.join(out, "rehost.json")))
                if rehost.get("path") != "python-classes":
                    raise ValueError("mlfx rehost took path %r" % rehost.get("path"))
                result = rehost["python_classes"]
            else:
                with open(SCRIPT, "rb") as f:
                    p = subprocess.run([sys.executable, "-I", "-B", "-", model_dir, "--out", out] + VICTIM_SOURCE,
                                       stdin=f, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                result = json.loads(p.stdout)
        except (ValueError, OSError):
            print("%s/%s: FAIL stdout is not one JSON object: %r\n%s" % (scenario, name, p.stdout[:500], p.stderr.decode()[-2000:]))
            failures += 1
            continue
        problems = []
        if p.returncode != 0:
            problems.append("exit %d: %s" % (p.returncode, result.get("error")))
        if not result.get("state_dict_equal"):
            problems.append("state_dict differs: %s" % result.get("state_dict_differences"))
        checks = {}
        if p.returncode == 0:
            model = torch.load(os.path.join(out, "model.full.pt"))
            gt_sd = torch.load(os.path.join(gt, entry["state_dict"]))
            sd = model.state_dict()
            checks["state_dict==gt"] = list(sd) == list(gt_sd) and all(same(sd[k], gt_sd[k]) for k in gt_sd)
            with torch.no_grad():
                torch.manual_seed(99)
                checks["outputs==gt"] = same(model(inputs[name]), want_out[name])
                if result.get("torchscript"):
                    ts = torch.jit.load(os.path.join(out, result["torchscript"]))
                    torch.manual_seed(99)
                    checks["torchscript outputs==gt"] = same(ts(inputs[name]), want_out[name])
            for k, v in checks.items():
                if not v:
                    problems.append(k + " fails")
        summary = {k: result.get(k) for k in ("ok", "torchscript_method", "missing_tensors",
                                             "unrestorable_attributes", "restored_attributes")}
        if result.get("torchscript_error"):
            summary["torchscript_error"] = result["torchscript_error"][:300]
        print("%s/%s: %s %s %s" % (scenario, name, "FAIL" if problems else "PASS", checks, json.dumps(summary)))
        for pr in problems:
            print("    " + pr)
        failures += bool(problems)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
