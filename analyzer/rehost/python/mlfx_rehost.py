"""mlfx rehost, path (b): the model's classes come from the lab's libraries or the analyst's source.

    python3 -I -B - MODEL_DIR --out DIR [--code-path PATH]... [--allow-module NAME]...
                    [--example-input FILE.safetensors]      (this script on stdin)

MODEL_DIR is one model directory that `mlfx recover` wrote: state_dict.pt, architecture.json and
maybe non_persistent.safetensors. The module tree of architecture.json is rebuilt from the
classes (without calling their __init__, whose arguments are unknown), its tensors are the very
tensors of state_dict.pt (so shared storages, tied weights and strides survive), and
the rebuilt model is checked (state_dict() equals state_dict.pt bit for bit) and written as
DIR/model.full.pt (torch.save of the module) and, where torch.jit can, DIR/model.torchscript.pt.

Class names are read from the evidence: no module is imported because a name says so. A class
comes from an allowlisted library module (ALLOWED_MODULES, plus --allow-module) or from the
analyst's --code-path files, loaded by path (see ClassResolver); any other class is missing.
state_dict.pt is loaded with weights_only (tensors, nothing run). The JSON's "executed_code"
lists every file of code run (SHA-256) and how this Python runs.

Exactly one JSON object goes to stdout. Exit status: 0 a full model was written; 3 classes
are missing (nothing written); 1 any other error (the JSON has "error").

The mlfx CLI runs this isolated (-I: no script folder, working directory, user site or PYTHON*
variables on the path), in an empty temporary working directory with a clean environment;
nothing here depends on the script's own location.
"""
import argparse
import collections
import hashlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import struct
import sys
import traceback

EXIT_OK, EXIT_ERROR, EXIT_MISSING_CLASSES = 0, 1, 3

# safetensors dtype names -> torch dtype attribute names.
SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
    "C64": "complex64", "C128": "complex128",
}

# Attributes of torch.nn classes that are lists although JSON arrays of torch.nn classes are
# otherwise tuples (used only when architecture.json has no attribute_types).
TORCH_LIST_ATTRIBUTES = {"_flat_weights_names", "_all_weights"}


class RehostError(Exception):
    pass


def report_base():
    return {
        "path": "python-classes", "ok": False, "classes": {}, "missing_classes": [],
        "unrestorable_attributes": [], "restored_attributes": [], "missing_tensors": [],
        "full_model": None, "torchscript": None, "torchscript_method": None,
        "torchscript_error": None, "state_dict_equal": False, "state_dict_differences": [],
        "load_note": None, "warnings": [],
        "executed_code": {"code_files": [], "library_modules": [], "allowed_modules": [],
                          "allowed_modules_added": [], "interpreter": interpreter()},
    }


def interpreter():
    """The Python that runs this script, as it runs: its flags, sys.path and working directory."""
    flags = {k: getattr(sys.flags, k) for k in ("isolated", "ignore_environment", "no_user_site", "no_site",
                                                   "safe_path", "dont_write_bytecode") if hasattr(sys.flags, k)}
    return {"executable": sys.executable, "version": sys.version.split()[0], "flags": flags,
            "sys_path": list(sys.path), "working_directory": os.getcwd()}


# ---------------------------------------------------------------------------------------------
# safetensors, read without the safetensors package

def read_safetensors(path):
    import torch
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise RehostError(path + ": too short for safetensors")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > len(raw) - 8:
        raise RehostError(path + ": header length past the end")
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    data = memoryview(raw)[8 + n:]
    out = collections.OrderedDict()
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype_name = SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype_name is None:
            raise RehostError("%s: tensor %s has unsupported dtype %s" % (path, name, info["dtype"]))
        dtype = getattr(torch, dtype_name)
        begin, end = info["data_offsets"]
        shape = [int(s) for s in info["shape"]]
        if begin < 0 or end < begin or end > len(data):
            raise RehostError("%s: tensor %s data outside the file" % (path, name))
        if end == begin:
            t = torch.empty(shape, dtype=dtype)
        else:
            u8 = torch.frombuffer(bytearray(data[begin:end]), dtype=torch.uint8)
            t = u8.view(dtype).reshape(shape)
        out[name] = t
    return out


# ---------------------------------------------------------------------------------------------
# class resolution: code runs only from the lab's allowlisted libraries and the analyst's
# --code-path source, never from a module because the memory names it

# Library modules whose classes a recovered model may use without the analyst's source. An
# entry is imported only when a class of the model lies under it, and allows the classes
# defined in it and in the modules under it that its import loaded; no other module is ever
# imported for a name read from memory. `mlfx rehost --allow-module NAME` adds entries (recorded
# in rehost.json); README.md lists these.
ALLOWED_MODULES = (
    "torch.nn",            # torch.nn.modules.*, and the quantized, qat, intrinsic and parallel ones
    "torch.ao.nn",         # quantized and QAT modules
    "torchvision.models",  # torchvision's model zoo
    "torchvision.ops",     # blocks of those models (Conv2dNormActivation, FrozenBatchNorm2d, ...)
)

MAX_CLASS_NAME = 1024


def name_parts(name):
    """The parts of a dotted class name, or None: each part an identifier (or <locals>), no
    empty part, no dunder but a leading __main__."""
    if not isinstance(name, str) or len(name) > MAX_CLASS_NAME:
        return None
    parts = name.split(".")
    for i, p in enumerate(parts):
        if p == "<locals>" and i > 0:
            continue
        if not p.isidentifier() or (p.startswith("__") and not (i == 0 and p == "__main__")):
            return None
    return parts


def module_name_ok(name):
    parts = name_parts(name)
    return parts is not None and "<locals>" not in parts and parts[0] != "__main__"


def walk_classes(module, parts):
    """The class at module.parts[0].parts[1]...: every step is a class (no module, no <locals>)."""
    obj = module
    for part in parts:
        if part == "<locals>":
            return None
        obj = getattr(obj, part, None)
        if not isinstance(obj, type):
            return None
    return obj


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class CodeLoader(importlib.abc.Loader):
    """Runs one file of the analyst's source from the very bytes it hashed; never bytecode from
    a __pycache__ beside it. path None: a folder without __init__.py (a namespace package)."""

    def __init__(self, resolver, path):
        self.resolver, self.path, self.source = resolver, path, b""

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        if self.path is None:
            return
        with open(self.path, "rb") as f:
            self.source = f.read()
        self.resolver.record_code(module.__name__, self.path, self.source)
        exec(compile(self.source, self.path, "exec", dont_inherit=True), module.__dict__)

    def get_source(self, name):
        return self.source.decode("utf-8", "replace")


class CodePathFinder(importlib.abc.MetaPathFinder):
    """Lets the analyst's source import its own modules. Last on sys.meta_path: a file of the
    source never shadows an installed module."""

    def __init__(self, resolver):
        self.resolver = resolver

    def find_spec(self, fullname, path=None, target=None):
        return self.resolver.spec_for(fullname)


class ClassResolver:
    """Classes come from (1) the allowlisted library modules, (2) the analyst's source by the
    recorded module name: a .py file given with --code-path, or a module inside a directory
    given with --code-path, (3) the same qualname in the source's files (a victim run as a
    script records __main__). Files of the source are loaded by path; their folders never go on
    sys.path, so other files beside a given file (evidence opened there) are never imported."""

    def __init__(self, code_paths, allowed, report):
        self.report, self.warnings = report, report["warnings"]
        self.allowed = list(allowed)
        self.files = {}              # module name -> a .py file given with --code-path
        self.dirs = []               # directories given with --code-path
        for p in code_paths:
            p = os.path.abspath(p)
            stem = os.path.splitext(os.path.basename(p))[0]
            if os.path.isdir(p):
                self.dirs.append(p)
            elif not os.path.isfile(p):
                self.warnings.append("--code-path %s does not exist" % p)
            elif not p.endswith(".py") or not module_name_ok(stem):
                self.warnings.append("--code-path %s is not a Python module file (NAME.py)" % p)
            else:
                self.files.setdefault(stem, p)
        self.modules = {}            # module name of the source -> module, None when it failed
        self.imported = {}           # allowlist entry -> imported
        self.found = {}              # class name -> (class, where)
        sys.meta_path.append(CodePathFinder(self))

    # -- the analyst's source

    def source_of(self, modname):
        """(file or None for a namespace folder, is_package) of a module of the source, or None."""
        if not module_name_ok(modname):
            return None
        if modname in self.files:
            return self.files[modname], False
        for d in self.dirs:
            base = os.path.join(d, *modname.split("."))
            if os.path.isfile(base + ".py"):
                return base + ".py", False
            if os.path.isfile(os.path.join(base, "__init__.py")):
                return os.path.join(base, "__init__.py"), True
            if os.path.isdir(base):
                return None, True
        return None

    def spec_for(self, modname):
        where = self.source_of(modname)
        if where is None:
            return None
        path, package = where
        spec = importlib.machinery.ModuleSpec(modname, CodeLoader(self, path), origin=path, is_package=package)
        spec.has_location = path is not None
        return spec

    def record_code(self, modname, path, data):
        self.report["executed_code"]["code_files"].append(
            {"path": path, "module": modname, "sha256": hashlib.sha256(data).hexdigest()})

    def code_module(self, modname):
        """The module `modname` of the analyst's source, loaded by path; None when the source
        has no such module, or it failed to load (a warning says why)."""
        if modname in self.modules:
            return self.modules[modname]
        module, spec = None, self.spec_for(modname)
        existing = sys.modules.get(modname)
        if spec is None:
            pass
        elif existing is not None:
            if isinstance(getattr(existing, "__loader__", None), CodeLoader):
                module = existing
            else:
                self.warnings.append("%s of the --code-path source not loaded: a module named %s is already imported (%s)"
                                     % (spec.origin, modname, getattr(existing, "__file__", None) or "built-in"))
        else:
            parent, _, child = modname.rpartition(".")
            if not parent or self.code_module(parent) is not None:
                module = self.load(spec, parent, child)
        self.modules[modname] = module
        return module

    def load(self, spec, parent, child):
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module   # before running it, as import does (pickle needs it)
        try:
            spec.loader.exec_module(module)
        except BaseException as e:        # SystemExit from a script too
            sys.modules.pop(spec.name, None)
            self.warnings.append("%s could not be loaded: %s: %s" % (spec.origin, type(e).__name__, e))
            return None
        if parent:
            setattr(sys.modules[parent], child, module)
        return module

    def code_files(self):
        """(module name, file) of each given file, then of each top-level .py file of each given
        directory."""
        for name, f in self.files.items():
            yield name, f
        for d in self.dirs:
            try:
                names = sorted(os.listdir(d))
            except OSError:
                continue
            for n in names:
                stem = n[:-3]
                if n.endswith(".py") and module_name_ok(stem) and os.path.isfile(os.path.join(d, n)):
                    yield stem, os.path.join(d, n)

    # -- the allowlisted libraries

    def allowed_entry(self, modname):
        for a in self.allowed:
            if modname == a or modname.startswith(a + "."):
                return a
        return None

    def import_allowed(self, entry):
        if entry not in self.imported:
            try:
                importlib.import_module(entry)
                self.imported[entry] = True
            except Exception as e:
                self.warnings.append("allowed module %s cannot be imported: %s: %s" % (entry, type(e).__name__, e))
                self.imported[entry] = False
        return self.imported[entry]

    def from_library(self, parts):
        for i in range(len(parts) - 1, 0, -1):
            modname = ".".join(parts[:i])
            entry = self.allowed_entry(modname)
            if entry is None or not self.import_allowed(entry):
                continue
            module = sys.modules.get(modname)
            if module is None:
                self.warnings.append("%s is not loaded by importing the allowed module %s (not imported; "
                                     "--allow-module %s allows it)" % (modname, entry, modname))
                continue
            cls = walk_classes(module, parts[i:])
            if cls is not None and self.allowed_entry(cls.__module__) is not None:
                return cls, getattr(sys.modules.get(cls.__module__), "__file__", None) or cls.__module__
        return None, None

    def library_modules(self):
        """Each allowlist entry imported, and each module defining a class used from one."""
        names = [e for e, ok in self.imported.items() if ok]
        for cls, _ in self.found.values():
            if self.allowed_entry(cls.__module__) is not None and cls.__module__ not in names:
                names.append(cls.__module__)
        out = []
        for n in names:
            f = getattr(sys.modules.get(n), "__file__", None)
            out.append({"name": n, "file": f, "sha256": sha256_of(f) if f and os.path.isfile(f) else None})
        return out

    # -- resolution

    def from_source_module(self, parts):
        for i in range(len(parts) - 1, 0, -1):
            module = self.code_module(".".join(parts[:i]))
            cls = walk_classes(module, parts[i:]) if module is not None else None
            if cls is not None and issubclass_module(cls):
                return cls, module.__file__
        return None, None

    def from_source_qualname(self, name, parts):
        """The same qualname (or, for a name not under __main__, its longest suffix) defined in
        a file of the source."""
        start = len(parts) - parts[::-1].index("<locals>") if "<locals>" in parts else 1
        candidates = [parts[start:]] if parts[0] == "__main__" and start == 1 else \
            [parts[i:] for i in range(start, len(parts))]
        for q in candidates:
            for modname, f in self.code_files():
                module = self.code_module(modname)
                c = walk_classes(module, q) if module is not None else None
                if c is not None and issubclass_module(c):
                    if parts[0] != "__main__":
                        self.warnings.append("%s is not in the source as recorded; %s.%s from %s used"
                                             % (name, c.__module__, c.__qualname__, f))
                    return c, f
        return None, None

    def resolve(self, name):
        if name in self.found:
            return self.found[name][0]
        parts = name_parts(name)
        if parts is None:
            self.warnings.append("%s is not a class name (dotted identifiers): not looked up" % json.dumps(name))
            return None
        cls, where = None, None
        if parts[0] != "__main__":
            cls, where = self.from_library(parts)
            if cls is None:
                cls, where = self.from_source_module(parts)
        if cls is None:
            cls, where = self.from_source_qualname(name, parts)
        if cls is not None:
            self.found[name] = (cls, where)
        return cls


def issubclass_module(c):
    import torch
    return isinstance(c, type) and issubclass(c, torch.nn.Module)


# ---------------------------------------------------------------------------------------------
# the rebuild

def tree_nodes(node):
    yield node
    for c in node.get("children") or []:
        yield from tree_nodes(c)


def child_name(parent_path, child_path):
    if parent_path:
        if not child_path.startswith(parent_path + "."):
            raise RehostError("child path %r is not under %r" % (child_path, parent_path))
        return child_path[len(parent_path) + 1:]
    return child_path


def non_finite(value):
    return {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}.get(value, value)


def tuples_deep(value):
    if isinstance(value, list):
        return tuple(tuples_deep(v) for v in value)
    return value


class Rebuilder:
    def __init__(self, arch, state, non_persistent, resolver, report):
        import torch
        self.torch = torch
        self.arch = arch
        self.state = state
        self.non_persistent = non_persistent or {}
        self.resolver = resolver
        self.report = report
        self.meta = arch.get("tensors") or {}
        self.modules = {}          # module address -> rebuilt module
        self.by_address = {}       # tensor object address -> (kind, object)
        self.np_storages = {}      # storage address -> rebuilt storage tensor for non-persistent

    def restore_attribute_value(self, cls, node, name, value):
        types = node.get("attribute_types")
        if types is not None:
            t = types.get(name)
            if t == "tuple" and isinstance(value, list):
                return tuple(value)
            if t == "float" and isinstance(value, str):
                return non_finite(value)
            return value
        # No attribute_types (an older architecture.json): arrays of torch.nn classes are tuples.
        if isinstance(value, list) and cls.__module__.startswith("torch.nn.") and name not in TORCH_LIST_ATTRIBUTES:
            return tuple(value)
        return value

    def tensor_for(self, key, is_parameter):
        torch = self.torch
        meta = self.meta.get(key) or {}
        address = meta.get("address")
        if address is not None and address in self.by_address:
            kind, obj = self.by_address[address]
            if kind == ("parameter" if is_parameter else "buffer"):
                return obj
        if key in self.state:
            t = self.state[key]
        elif key in self.non_persistent:
            t = self.layout_non_persistent(key, self.non_persistent[key], meta)
        else:
            return None
        if is_parameter:
            requires_grad = t.is_floating_point() or t.is_complex()
            if meta.get("requires_grad") is not None:
                requires_grad = bool(meta["requires_grad"]) and requires_grad
            obj = torch.nn.Parameter(t, requires_grad=requires_grad)
        else:
            obj = t
        if address is not None:
            self.by_address[address] = ("parameter" if is_parameter else "buffer", obj)
        return obj

    def layout_non_persistent(self, key, t, meta):
        """safetensors holds a view's elements only: give them back the recorded layout (strides,
        offset, a storage shared with another tensor) where architecture.json says it."""
        torch = self.torch
        try:
            shape, stride = meta.get("shape"), meta.get("stride")
            offset, nbytes, storage = meta.get("storage_offset", 0), meta.get("storage_bytes"), meta.get("storage")
            if shape is None or stride is None or nbytes is None or list(t.shape) != list(shape):
                return t
            # A storage of a persistent tensor already loaded?
            base = None
            for k, m in self.meta.items():
                if m.get("storage") == storage and k in self.state:
                    base = self.state[k]
                    break
            if base is None and storage in self.np_storages:
                base = self.np_storages[storage]
            if base is not None:
                flat = self._storage_as(base, t.dtype)
                if flat is not None:
                    v = flat.as_strided(shape, stride, offset)
                    if bits(v) == bits(t):
                        return v
                    self.report["warnings"].append("%s: bytes differ from the storage it shares; kept apart" % key)
                return t
            if list(stride) == contiguous_stride(shape) and offset == 0:
                return t
            itemsize = t.element_size()
            flat = torch.zeros(max(nbytes // itemsize, 0), dtype=t.dtype)
            v = flat.as_strided(shape, stride, offset)
            v.copy_(t)
            self.np_storages[storage] = flat
            return v
        except Exception as e:
            self.report["warnings"].append("%s: layout not rebuilt (%s)" % (key, e))
            return t

    def _storage_as(self, base, dtype):
        """A flat tensor of dtype over all of base's storage (None when the sizes do not fit)."""
        torch = self.torch
        storage = base.storage()
        flat = torch.empty(0, dtype=base.dtype).set_(storage, 0, (storage.size(),), (1,))
        if dtype == base.dtype:
            return flat
        u8 = flat.view(torch.uint8)
        itemsize = torch.empty(0, dtype=dtype).element_size()
        if u8.numel() % itemsize:
            return None
        return u8.view(dtype)

    def build(self, node, parent_path=None):
        torch = self.torch
        if node.get("none"):
            return None
        address = node.get("address")
        if address is not None and address in self.modules:
            return self.modules[address]
        path = node.get("path", "")
        name = node.get("class")
        if not name or node.get("error"):
            raise RehostError("module %r is not described (%s)" % (path, node.get("error", "no class")))
        cls = self.resolver.resolve(name)
        obj = cls.__new__(cls)
        torch.nn.Module.__init__(obj)
        if address is not None:
            self.modules[address] = obj   # before the children: a module may hold itself
        d = obj.__dict__
        d["training"] = bool(node.get("training", True))
        for aname, value in (node.get("attributes") or {}).items():
            d[aname] = self.restore_attribute_value(cls, node, aname, value)
        prefix = path + "." if path else ""
        for p in node.get("parameters") or []:
            if p.get("none"):
                obj._parameters[p["name"]] = None
                continue
            t = self.tensor_for(prefix + p["name"], True)
            if t is None:
                self.report["missing_tensors"].append(prefix + p["name"])
                obj._parameters[p["name"]] = None
            else:
                obj._parameters[p["name"]] = t
        non_persistent = set(node.get("non_persistent_buffers") or [])
        for b in node.get("buffers") or []:
            if b.get("none"):
                obj._buffers[b["name"]] = None
                continue
            t = self.tensor_for(prefix + b["name"], False)
            if t is None:
                self.report["missing_tensors"].append(prefix + b["name"])
                obj._buffers[b["name"]] = None
            else:
                obj._buffers[b["name"]] = t
        obj._non_persistent_buffers_set = non_persistent
        for c in node.get("children") or []:
            obj._modules[child_name(path, c.get("path", ""))] = self.build(c, path)
        self.restore_other_attributes(obj, node, path)
        return obj

    def restore_other_attributes(self, obj, node, path):
        torch = self.torch
        for aname in node.get("other_attributes") or []:
            restored = False
            if aname == "_flat_weights" and isinstance(obj, torch.nn.RNNBase) and hasattr(obj, "_flat_weights_names"):
                if hasattr(obj, "_init_flat_weights"):
                    obj._init_flat_weights()
                else:
                    obj._flat_weights = [getattr(obj, wn) if hasattr(obj, wn) else None
                                         for wn in obj._flat_weights_names]
                restored = True
            elif aname == "activation" and "activation_relu_or_gelu" in obj.__dict__ and \
                    type(obj).__module__.startswith("torch.nn."):
                # TransformerEncoderLayer/DecoderLayer with a function activation.
                fn = {1: torch.nn.functional.relu, 2: torch.nn.functional.gelu}.get(obj.activation_relu_or_gelu)
                if fn is not None:
                    obj.__dict__["activation"] = fn
                    restored = True
            elif aname == "_flat_weight_refs" and isinstance(obj, torch.nn.RNNBase):
                restored = hasattr(obj, "_init_flat_weights")   # _init_flat_weights rebuilds it
            (self.report["restored_attributes"] if restored else self.report["unrestorable_attributes"]).append(
                {"module": path, "name": aname})


def contiguous_stride(shape):
    stride, acc = [], 1
    for s in reversed(shape):
        stride.append(acc)
        acc *= max(int(s), 1)
    return list(reversed(stride))


def bits(t):
    """The tensor's elements as bytes, bit for bit (NaN payloads and -0.0 included)."""
    import torch
    c = t.detach().contiguous().reshape(-1)
    if c.numel() == 0:
        return b""
    if c.dtype == torch.bool:
        c = c.to(torch.uint8)
    return c.view(torch.uint8).numpy().tobytes()


def compare_state_dicts(got, want):
    diffs = []
    gk, wk = list(got.keys()), list(want.keys())
    if gk != wk:
        missing = [k for k in wk if k not in got]
        extra = [k for k in gk if k not in want]
        if missing:
            diffs.append("keys missing from the rebuilt state_dict: %s" % missing)
        if extra:
            diffs.append("keys only in the rebuilt state_dict: %s" % extra)
        if not missing and not extra:
            diffs.append("key order differs")
    for k in wk:
        if k not in got:
            continue
        a, b = got[k], want[k]
        if a.dtype != b.dtype or tuple(a.shape) != tuple(b.shape):
            diffs.append("%s: %s%s, expected %s%s" % (k, a.dtype, tuple(a.shape), b.dtype, tuple(b.shape)))
        elif a.stride() != b.stride() or a.storage_offset() != b.storage_offset():
            diffs.append("%s: layout stride %s offset %d, expected %s offset %d"
                         % (k, a.stride(), a.storage_offset(), b.stride(), b.storage_offset()))
        elif bits(a) != bits(b):
            diffs.append("%s: bytes differ" % k)
    # Storage sharing: keys sharing a storage in state_dict.pt share it in the rebuilt one.
    def groups(sd):
        g = collections.defaultdict(list)
        for k, t in sd.items():
            g[t.storage().data_ptr()].append(k)
        return sorted(sorted(v) for v in g.values())
    if not diffs and groups(got) != groups(want):
        diffs.append("storage sharing differs")
    return diffs


def atomic_write(path, write):
    tmp = "%s.tmp-%d" % (path, os.getpid())
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def run(args, report):
    import torch
    model_dir = args.model_dir
    arch_path = os.path.join(model_dir, "architecture.json")
    sd_path = os.path.join(model_dir, "state_dict.pt")
    for p in (arch_path, sd_path):
        if not os.path.isfile(p):
            raise RehostError("%s not found" % p)
    with open(arch_path, "r", encoding="utf-8") as f:
        arch = json.load(f)

    # 1. Every class of the tree, before anything else.
    executed = report["executed_code"]
    executed["allowed_modules"] = list(ALLOWED_MODULES) + [m for m in args.allow_module if m not in ALLOWED_MODULES]
    executed["allowed_modules_added"] = list(args.allow_module)
    for m in args.allow_module:
        if not module_name_ok(m):
            raise RehostError("--allow-module %s is not a module name" % json.dumps(m))
    resolver = ClassResolver(args.code_path, executed["allowed_modules"], report)
    seen = []
    for node in tree_nodes(arch):
        if node.get("none"):
            continue
        name = node.get("class")
        if not name:
            raise RehostError("module %r is not described (%s)" % (node.get("path"), node.get("error", "no class")))
        if name not in seen:
            seen.append(name)
    for name in seen:
        cls = resolver.resolve(name)
        if cls is None:
            report["missing_classes"].append(name)
        elif not issubclass_module(cls):
            report["missing_classes"].append(name)
            report["warnings"].append("%s resolved to %r, which is not an nn.Module" % (name, cls))
        else:
            report["classes"][name] = resolver.found[name][1]
    executed["library_modules"] = resolver.library_modules()
    if report["missing_classes"]:
        return EXIT_MISSING_CLASSES

    # 2. The tensors (tensors only: nothing of the file is run), then the tree.
    state = torch.load(sd_path, map_location="cpu", weights_only=True)
    non_persistent = None
    np_st, np_pt = os.path.join(model_dir, "non_persistent.safetensors"), os.path.join(model_dir, "non_persistent.pt")
    if os.path.isfile(np_st):
        non_persistent = read_safetensors(np_st)
    elif os.path.isfile(np_pt):
        non_persistent = torch.load(np_pt, map_location="cpu", weights_only=True)
    rebuilder = Rebuilder(arch, state, non_persistent, resolver, report)
    model = rebuilder.build(arch)

    # 3. The check.
    diffs = compare_state_dicts(model.state_dict(), state)
    report["state_dict_equal"] = not diffs
    report["state_dict_differences"] = diffs

    # 4. The files.
    os.makedirs(args.out, exist_ok=True)
    full = os.path.join(args.out, "model.full.pt")
    atomic_write(full, lambda p: torch.save(model, p))
    report["full_model"] = "model.full.pt"
    needed = sorted({type(m).__module__ for m in model.modules()
                     if not type(m).__module__.split(".")[0] == "torch"})
    report["load_note"] = ("torch.load needs these modules importable: %s (and weights_only=False on torch >= 2.6)"
                           % json.dumps(needed))

    ts = os.path.join(args.out, "model.torchscript.pt")
    errors = []
    try:
        scripted = torch.jit.script(model)
        atomic_write(ts, lambda p: torch.jit.save(scripted, p))
        report["torchscript"], report["torchscript_method"] = "model.torchscript.pt", "script"
    except Exception as e:
        errors.append("script: %s: %s" % (type(e).__name__, first_lines(str(e))))
        if args.example_input:
            try:
                example = read_safetensors(args.example_input)
                if "input" not in example:
                    raise RehostError("%s has no tensor named input" % args.example_input)
                with torch.no_grad():
                    traced = torch.jit.trace(model, (example["input"],), check_trace=False)
                atomic_write(ts, lambda p: torch.jit.save(traced, p))
                report["torchscript"], report["torchscript_method"] = "model.torchscript.pt", "trace"
            except Exception as e2:
                errors.append("trace: %s: %s" % (type(e2).__name__, first_lines(str(e2))))
    if report["torchscript"] is None:
        report["torchscript_error"] = "; ".join(errors) if errors else None
    report["ok"] = bool(report["state_dict_equal"] and not report["missing_tensors"]
                        and not report["unrestorable_attributes"])
    return EXIT_OK


def first_lines(text, n=6):
    lines = [l for l in text.strip().splitlines() if l.strip()]
    return "\n".join(lines[:n]) + ("\n..." if len(lines) > n else "")


def main(argv):
    parser = argparse.ArgumentParser(prog="mlfx_rehost.py", description="Rebuild a recovered model from its classes.")
    parser.add_argument("model_dir")
    parser.add_argument("--out", required=True)
    parser.add_argument("--code-path", action="append", default=[])
    parser.add_argument("--allow-module", action="append", default=[])
    parser.add_argument("--example-input")
    args = parser.parse_args(argv)

    # stdout carries one JSON object: whatever the victim's code prints goes to stderr.
    out_fd = os.dup(1)
    sys.stdout.flush()
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    report = report_base()
    try:
        code = run(args, report)
    except BaseException as e:   # SystemExit from a loaded script included
        report["ok"] = False
        report["error"] = str(e) if isinstance(e, RehostError) else "%s: %s" % (type(e).__name__, e)
        if not isinstance(e, RehostError):
            traceback.print_exc(file=sys.stderr)
        code = EXIT_ERROR
    if not report["warnings"]:
        del report["warnings"]
    if not report["state_dict_differences"]:
        del report["state_dict_differences"]
    with os.fdopen(out_fd, "w") as out:
        out.write(json.dumps(report, sort_keys=False) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
