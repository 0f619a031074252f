"""Crafted inputs for the rehost adversarial tests (issue 11, item 1): a model directory laid out
as `mlfx recover` writes one, and the hostile Python files an evidence folder may hold.

    /usr/bin/python3 craft.py model OUT_DIR ROOT_CLASS [CHILD_CLASS ...]
    /usr/bin/python3 craft.py plant DIR MARKER_DIR
    /usr/bin/python3 craft.py goodmodel DIR MARKER_DIR
    /usr/bin/python3 craft.py package DIR MARKER_DIR

model: architecture.json whose root class is ROOT_CLASS, with a torch.nn Linear(4, 2) child `fc`
and one empty child per CHILD_CLASS; state_dict.pt and state_dict.safetensors with fc's tensors.
plant: every file a hostile folder could use to run code in the lab's Python (a module the
memory names, a package, site/user customisation, a startup file, a `torch` shadow); each one,
if it ever runs, creates MARKER_DIR/<its name>.
goodmodel: the analyst's source goodmodel.py (class Net: fc then relu) and, beside it, a
__pycache__ file with goodmodel.py's size and mtime whose code creates MARKER_DIR/pyc: a loader
that trusts bytecode beside the source would run it instead of the source.
package: the analyst's source as a directory: package pkgnet (net.py imports its sibling
layers.py) beside torch.py and json.py that create MARKER_DIR/torch and MARKER_DIR/json if an
import ever prefers them to the installed modules.
"""
import json, os, py_compile, struct, sys

import torch


def marker_code(marker_dir, name):
    return "open(%r, 'w').close()\n" % os.path.join(marker_dir, name)


def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for k, t in tensors.items():
        b = t.contiguous().numpy().tobytes()
        header[k] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def node(path, cls, **extra):
    n = {"path": path, "class": cls, "training": False, "attributes": {}, "attribute_types": {},
         "other_attributes": [], "parameters": [], "buffers": [], "non_persistent_buffers": [], "children": []}
    n.update(extra)
    return n


def model(out, root, children):
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(3)
    fc = torch.nn.Linear(4, 2)
    sd = {"fc.weight": fc.weight.detach(), "fc.bias": fc.bias.detach()}
    torch.save(sd, os.path.join(out, "state_dict.pt"))
    write_safetensors(os.path.join(out, "state_dict.safetensors"), sd)
    arch = node("", root)
    arch["children"].append(node("fc", "torch.nn.modules.linear.Linear",
                                 attributes={"in_features": 4, "out_features": 2},
                                 parameters=[{"name": "weight", "none": False}, {"name": "bias", "none": False}]))
    for i, c in enumerate(children):
        arch["children"].append(node("c%d" % i, c))
    with open(os.path.join(out, "architecture.json"), "w") as f:
        json.dump(arch, f, indent=1)


def plant(d, markers):
    files = {
        "evilmod.py": "evilmod",                       # a module named by the memory
        "evilpkg/__init__.py": "evilpkg",              # a package named by the memory
        "evilpkg/sub.py": "evilpkg.sub",
        "sitecustomize.py": "sitecustomize",           # imported by site from any sys.path entry
        "usercustomize.py": "usercustomize",
        "startup.py": "pythonstartup",                 # PYTHONSTARTUP
        "torch.py": "torch",                           # shadows the library itself
        "json.py": "json",
    }
    for rel, name in files.items():
        p = os.path.join(d, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w") as f:
            f.write(marker_code(markers, name) + "class Net:\n    pass\n")


GOOD_SOURCE = """import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return torch.relu(self.fc(x))
"""


def goodmodel(d, markers):
    os.makedirs(d, exist_ok=True)
    # Bytecode of hostile source, with the size and mtime of goodmodel.py in its header.
    evil = marker_code(markers, "pyc") + GOOD_SOURCE
    good = GOOD_SOURCE + "#" * (len(evil) - len(GOOD_SOURCE) - 1) + "\n"
    src, evil_src = os.path.join(d, "goodmodel.py"), os.path.join(d, "evil.tmp")
    for p, text in ((src, good), (evil_src, evil)):
        with open(p, "w") as f:
            f.write(text)
    st = os.stat(src)
    os.utime(evil_src, ns=(st.st_atime_ns, st.st_mtime_ns))
    cache = os.path.join(d, "__pycache__", "goodmodel.cpython-%d%d.pyc" % sys.version_info[:2])
    py_compile.compile(evil_src, cfile=cache, doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)
    os.unlink(evil_src)


def package(d, markers):
    files = {
        "pkgnet/__init__.py": "",
        "pkgnet/layers.py": "import torch.nn as nn\n\n\ndef make_fc():\n    return nn.Linear(4, 2)\n",
        "pkgnet/net.py": GOOD_SOURCE.replace("import torch.nn as nn\n", "import torch.nn as nn\nfrom . import layers\n")
                                    .replace("nn.Linear(4, 2)", "layers.make_fc()"),
        "torch.py": marker_code(markers, "torch"),
        "json.py": marker_code(markers, "json"),
    }
    for rel, text in files.items():
        os.makedirs(os.path.dirname(os.path.join(d, rel)), exist_ok=True)
        with open(os.path.join(d, rel), "w") as f:
            f.write(text)


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "model":
        model(sys.argv[2], sys.argv[3], sys.argv[4:])
    elif cmd == "plant":
        plant(sys.argv[2], sys.argv[3])
    elif cmd == "goodmodel":
        goodmodel(sys.argv[2], sys.argv[3])
    elif cmd == "package":
        package(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit("unknown command " + cmd)
