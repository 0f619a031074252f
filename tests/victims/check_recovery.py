"""Compares what `mlfx recover` wrote with the victim's ground truth, bit for bit.

    /usr/bin/python3 check_recovery.py GROUND_TRUTH_DIR RECOVERY_DIR

Every ground-truth model must be recovered exactly once: same class, and a state_dict.pt
and state_dict.safetensors whose keys, order, dtypes, shapes and bytes equal the live
model's state_dict(); tensors that share storage in the victim (tied weights) must share
it after torch.load. Prints one line per model and exits non-zero on any difference.
"""
import json, os, struct, sys

import torch

SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                      "U8": torch.uint8, "BOOL": torch.bool}


def raw(t):
    t = t.detach().contiguous().reshape(-1)
    return bytes(t.view(torch.uint8).numpy()) if t.numel() else b""


def read_safetensors(path):
    """An independent reader: header length, JSON header, raw data."""
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n], object_pairs_hook=lambda p: p)
    body = data[8 + n:]
    out = []
    for key, info in header:
        if key == "__metadata__":
            continue
        info = dict(info)
        b, e = info["data_offsets"]
        out.append((key, info["dtype"], info["shape"], body[b:e]))
    return out


def fail(msg):
    print("MISMATCH:", msg)
    sys.exit(1)


def check_modules(name, arch, truth_path):
    """Every module's class and hyperparameters in architecture.json equal the victim's own
    (NAME.modules.json, when the victim wrote one)."""
    if not os.path.exists(truth_path):
        return
    truth = json.load(open(truth_path))
    nodes, stack = {}, [arch]
    while stack:
        node = stack.pop()
        nodes.setdefault(node["path"], node)
        stack.extend(c for c in node.get("children", []) if c.get("path") is not None)
    for path, want in truth.items():
        got = nodes.get(path)
        if got is None:
            fail("%s: module '%s' is not in architecture.json" % (name, path))
        if got["class"] != want["class"]:
            fail("%s: module '%s' is %s, not %s" % (name, path, got["class"], want["class"]))
        if got["attributes"] != want["attributes"]:
            fail("%s: module '%s' hyperparameters differ: %s vs %s" % (name, path, got["attributes"], want["attributes"]))
        if sorted(got["other_attributes"]) != sorted(want["other_attributes"]):
            fail("%s: module '%s' other attributes differ: %s vs %s"
                 % (name, path, got["other_attributes"], want["other_attributes"]))


def main():
    gt_dir, rec_dir = sys.argv[1], sys.argv[2]
    report = json.load(open(os.path.join(rec_dir, "report.json")))
    expected = json.load(open(os.path.join(gt_dir, "models.json")))
    recovered = {}
    for m in report["models"]:
        recovered.setdefault(m["class"], []).append(m)
    for exp in expected:
        gt = torch.load(os.path.join(gt_dir, exp["state_dict"]), map_location="cpu")  # a CUDA victim's too
        candidates = recovered.get(exp["class"], [])
        match = None
        for m in candidates:
            sd = torch.load(os.path.join(rec_dir, m["directory"], "state_dict.pt"))
            if list(sd.keys()) == list(gt.keys()) and all(raw(sd[k]) == raw(gt[k]) for k in gt):
                match = (m, sd)
                break
        if match is None:
            fail("%s (%s): no recovered model has its exact state_dict (candidates: %s)"
                 % (exp["name"], exp["class"], [m["directory"] for m in candidates]))
        m, sd = match
        for k in gt:
            a, b = gt[k], sd[k]
            if a.dtype != b.dtype or a.shape != b.shape or raw(a) != raw(b):
                fail("%s: %s differs (%s %s vs %s %s)" % (exp["name"], k, a.dtype, tuple(a.shape), b.dtype, tuple(b.shape)))
        # Sharing: tensors sharing a storage in the ground truth share it after loading.
        def groups(d):
            by = {}
            for k, t in d.items():
                by.setdefault(t.storage().data_ptr(), []).append(k)
            return sorted(sorted(v) for v in by.values() if len(v) > 1)
        if groups(gt) != groups(sd):
            fail("%s: storage sharing differs: %s vs %s" % (exp["name"], groups(gt), groups(sd)))
        st = read_safetensors(os.path.join(rec_dir, m["directory"], "state_dict.safetensors"))
        if [s[0] for s in st] != list(gt.keys()):
            fail("%s: safetensors keys or order differ" % exp["name"])
        for key, dtype, shape, data in st:
            t = gt[key]
            if SAFETENSORS_DTYPES[dtype] != t.dtype or list(shape) != list(t.shape) or data != raw(t):
                fail("%s: safetensors tensor %s differs" % (exp["name"], key))
        arch = json.load(open(os.path.join(rec_dir, m["directory"], "architecture.json")))
        if arch["class"] != exp["class"]:
            fail("%s: architecture.json names class %s" % (exp["name"], arch["class"]))
        check_modules(exp["name"], arch, os.path.join(gt_dir, exp["name"] + ".modules.json"))
        print("OK %-10s %-40s %4d tensors identical (pt and safetensors)" % (exp["name"], exp["class"], len(gt)))
    if not report["models"]:
        fail("no models recovered")


if __name__ == "__main__":
    main()
