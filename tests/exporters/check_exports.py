"""Checks mlfx's exported files against a ground truth, independently of mlfx's C++ code.

  check_exports.py --truth T.json [--safetensors F] [--pt F] [--zip-only]

T.json (written by the C++ test) lists each tensor (key, torch dtype, safetensors dtype,
itemsize, shape, stride, storage_offset, requires_grad, storage index) and each storage's
whole bytes (base64). The expected logical contents are computed here from the storage bytes
with numpy's as_strided, not taken from mlfx.

--safetensors: parsed with json + struct (the `safetensors` package is not in Debian 12).
--pt: checked as a ZIP (names, CRCs, 64-byte payload alignment), then loaded with torch.load
(with weights_only=True where this torch supports it, as torch >= 2.6 does by default).
Exit 0: all checks passed. Exit 77: torch is not importable (the caller skips). Else: failure.
"""
import argparse
import base64
import collections
import json
import struct
import sys
import zipfile

import numpy as np


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def logical_bytes(storage, itemsize, shape, stride, offset):
    """Row-major contiguous bytes of a strided view, computed with numpy only."""
    n = 1
    for s in shape:
        n *= s
    if n == 0:
        return b""
    elems = np.frombuffer(storage, dtype=np.dtype("V%d" % itemsize))
    view = np.lib.stride_tricks.as_strided(
        elems[offset:], shape=tuple(shape), strides=tuple(s * itemsize for s in stride))
    return np.ascontiguousarray(view).tobytes()


def load_truth(path):
    with open(path) as f:
        truth = json.load(f, object_pairs_hook=collections.OrderedDict)
    storages = [base64.b64decode(s) for s in truth["storages"]]
    for t in truth["tensors"]:
        t["expected"] = logical_bytes(storages[t["storage"]], t["itemsize"], t["shape"],
                                      t["stride"], t["storage_offset"])
    return truth, storages


def check_safetensors(path, truth):
    with open(path, "rb") as f:
        data = f.read()
    check(len(data) >= 8, "safetensors file shorter than 8 bytes")
    (n,) = struct.unpack("<Q", data[:8])
    check(8 + n <= len(data), "header length %d past end of file" % n)
    check(n % 8 == 0, "header length %d is not a multiple of 8" % n)
    raw = data[8:8 + n]
    text = raw.decode("utf-8")
    check(text.rstrip(" ") == text.rstrip(" ").strip() and text.startswith("{"),
          "header must be JSON padded with trailing spaces only")

    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        check(len(keys) == len(set(keys)), "duplicate keys in header")
        return collections.OrderedDict(pairs)

    header = json.loads(text, object_pairs_hook=no_duplicates)
    metadata = header.pop("__metadata__", {})
    check(metadata == truth.get("metadata", {}),
          "metadata %r != %r" % (metadata, truth.get("metadata", {})))
    buf = data[8 + n:]
    expected = [t for t in truth["tensors"] if t["safetensors_dtype"]]
    check(list(header.keys()) == [t["key"] for t in expected],
          "key order %r != %r" % (list(header.keys()), [t["key"] for t in expected]))
    pos = 0
    for t in expected:
        h = header[t["key"]]
        check(set(h.keys()) == {"dtype", "shape", "data_offsets"}, "fields of %s" % t["key"])
        check(h["dtype"] == t["safetensors_dtype"], "%s dtype %s" % (t["key"], h["dtype"]))
        check(h["shape"] == t["shape"], "%s shape %r != %r" % (t["key"], h["shape"], t["shape"]))
        begin, end = h["data_offsets"]
        check(begin == pos, "%s data does not follow the previous tensor" % t["key"])
        check(end - begin == len(t["expected"]), "%s data size %d" % (t["key"], end - begin))
        check(buf[begin:end] == t["expected"], "%s bytes differ" % t["key"])
        pos = end
    check(pos == len(buf), "%d trailing bytes after the last tensor" % (len(buf) - pos))
    print("OK safetensors: %d tensors, %d data bytes" % (len(expected), len(buf)))


def check_zip(path, truth):
    zf = zipfile.ZipFile(path)
    names = zf.namelist()
    top = names[0].split("/")[0]
    n_storages = len(truth["storages"])
    want = ([top + "/data.pkl", top + "/byteorder"] +
            [top + "/data/%d" % i for i in range(n_storages)] + [top + "/version"])
    check(names == want, "ZIP entries %r != %r" % (names, want))
    check(zf.testzip() is None, "a ZIP entry fails its CRC check")
    with open(path, "rb") as f:
        for info in zf.infolist():
            check(info.compress_type == zipfile.ZIP_STORED, info.filename + " is compressed")
            f.seek(info.header_offset)
            local = f.read(30)
            check(local[:4] == b"PK\x03\x04", info.filename + ": bad local header")
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            start = info.header_offset + 30 + name_len + extra_len
            check(start % 64 == 0, "%s payload at %d, not 64-byte aligned" % (info.filename, start))
    check(zf.read(top + "/version") == b"3\n", "version record")
    check(zf.read(top + "/byteorder") == b"little", "byteorder record")
    print("OK zip: %d entries, CRCs and alignment" % len(names))


def storage_info(torch, t):
    """(data_ptr, raw bytes) of the whole storage under t, on torch 1.13 and 2.x alike."""
    if hasattr(t, "untyped_storage"):
        s = t.untyped_storage()
        whole = torch.empty(0, dtype=torch.uint8).set_(s)
        return s.data_ptr(), whole.numpy().tobytes()
    s = t.storage()
    whole = torch.empty(0, dtype=t.dtype).set_(s)
    return s.data_ptr(), whole.reshape(-1).view(torch.uint8).numpy().tobytes()


def check_pt(path, truth, storages):
    try:
        import torch
    except ImportError as e:
        print("SKIP: torch is not importable: %s" % e)
        sys.exit(77)
    kwargs = {}
    try:
        import inspect
        if "weights_only" in inspect.signature(torch.load).parameters:
            kwargs["weights_only"] = True  # the restricted unpickler must accept our pickle
    except (TypeError, ValueError):
        pass
    sd = torch.load(path, **kwargs)
    check(type(sd) is collections.OrderedDict, "loaded a %s, not an OrderedDict" % type(sd))
    keys = [t["key"] for t in truth["tensors"]]
    check(list(sd.keys()) == keys, "keys %r != %r" % (list(sd.keys()), keys))
    ptr_of_storage = {}
    for t in truth["tensors"]:
        v = sd[t["key"]]
        k = t["key"]
        check(isinstance(v, torch.Tensor), "%s is a %s" % (k, type(v)))
        check(str(v.dtype) == "torch." + t["dtype"], "%s dtype %s != %s" % (k, v.dtype, t["dtype"]))
        check(list(v.shape) == t["shape"], "%s shape %r != %r" % (k, list(v.shape), t["shape"]))
        check(list(v.stride()) == t["stride"], "%s stride %r != %r" % (k, v.stride(), t["stride"]))
        check(v.storage_offset() == t["storage_offset"],
              "%s storage_offset %d != %d" % (k, v.storage_offset(), t["storage_offset"]))
        check(v.requires_grad == t["requires_grad"], "%s requires_grad" % k)
        check(v.device.type == "cpu", "%s on %s" % (k, v.device))
        ptr, whole = storage_info(torch, v)
        check(whole == storages[t["storage"]], "%s storage bytes differ" % k)
        got = v.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        check(got == t["expected"], "%s contents differ" % k)
        if len(whole):
            ptr_of_storage.setdefault(t["storage"], set()).add(ptr)
    for s, ptrs in ptr_of_storage.items():
        check(len(ptrs) == 1, "storage %d was loaded %d times (sharing lost)" % (s, len(ptrs)))
    distinct = [next(iter(p)) for p in ptr_of_storage.values()]
    check(len(distinct) == len(set(distinct)), "distinct storages were merged")
    print("OK pt: torch %s loaded %d tensors, %d storages%s" %
          (torch.__version__, len(sd), len(ptr_of_storage),
           " (weights_only)" if kwargs else ""))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--truth", required=True)
    ap.add_argument("--safetensors")
    ap.add_argument("--pt")
    ap.add_argument("--zip-only", action="store_true", help="check the .pt as a ZIP only")
    args = ap.parse_args()
    truth, storages = load_truth(args.truth)
    if args.safetensors:
        check_safetensors(args.safetensors, truth)
    if args.pt:
        check_zip(args.pt, truth)
        if not args.zip_only:
            check_pt(args.pt, truth, storages)
    print("ALL OK")


if __name__ == "__main__":
    main()
