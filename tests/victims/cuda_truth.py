"""Ground truth of a victim whose models live on a CUDA GPU (MLFX_VICTIM_DEVICE=cuda; tests/gpu),
written outside the capture, and the reference copy of the GPU benchmark.

  cuda_tensors.json  [{"model", "key", "device", "data_ptr", "storage_bytes", "sha256"}]: every
                     CUDA storage of every model's state_dict, its bytes hashed after a copy to
                     the host (what the GPU dump must hold at data_ptr)
  cuda_snapshot.json torch.cuda.memory_snapshot(): the caching allocator's segments and blocks
  cuda_device.json   the device, driver and CUDA versions torch sees

bench_d2h(gt): the plain device-to-host copy the dump is measured against. The test writes
GT/bench_d2h ({"ranges": [[address, size], ...], "rounds": N}); the victim copies each range with
cudaMemcpy into one pinned buffer, N times, and writes GT/bench_d2h.json with each round's seconds.
"""
import ctypes, hashlib, json, os

import torch


def _storages(models):
    for name, m in models:
        for key, t in m.state_dict(keep_vars=True).items():
            if t.is_cuda:
                yield name, key, t


def storage_bytes(t):
    """The bytes of a tensor's whole storage (not only its view), on the host."""
    s = t.untyped_storage()
    whole = torch.empty(0, dtype=torch.uint8, device=t.device).set_(s, 0, (s.nbytes(),))
    return whole.cpu().numpy().tobytes()


def write_truth(gt, models):
    entries, seen = [], set()
    for name, key, t in _storages(models):
        s = t.untyped_storage()
        data = storage_bytes(t)
        entries.append({"model": name, "key": key, "device": str(t.device), "data_ptr": s.data_ptr(),
                        "storage_bytes": s.nbytes(), "sha256": hashlib.sha256(data).hexdigest(),
                        "shared": s.data_ptr() in seen})
        seen.add(s.data_ptr())
    with open(os.path.join(gt, "cuda_tensors.json"), "w") as f:
        json.dump(entries, f, indent=1)
    snapshot = torch.cuda.memory_snapshot()
    keep = ("device", "address", "total_size", "allocated_size", "active_size", "segment_type", "is_expandable", "stream")
    segments = [dict({k: s.get(k) for k in keep},
                     blocks=[{k: b.get(k) for k in ("address", "size", "state")} for b in s.get("blocks", [])])
                for s in snapshot]
    with open(os.path.join(gt, "cuda_snapshot.json"), "w") as f:
        json.dump(segments, f, indent=1)
    p = torch.cuda.get_device_properties(0)
    with open(os.path.join(gt, "cuda_device.json"), "w") as f:
        json.dump({"name": p.name, "torch": torch.__version__, "cuda": torch.version.cuda,
                   "driver": torch._C._cuda_getDriverVersion() if hasattr(torch._C, "_cuda_getDriverVersion") else None,
                   "capability": list(torch.cuda.get_device_capability(0))}, f)


def _cudart():
    """The CUDA runtime torch loaded (the process's own), for cudaMemcpy on raw addresses."""
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1]
            if "libcudart.so" in path:
                return ctypes.CDLL(path)
    raise RuntimeError("libcudart is not loaded")


def bench_d2h(gt):
    with open(os.path.join(gt, "bench_d2h")) as f:
        req = json.load(f)
    rt = _cudart()
    rt.cudaMemcpy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    biggest = max((size for _, size in req["ranges"]), default=1)
    host = torch.empty(biggest, dtype=torch.uint8, pin_memory=True)
    out = {"bytes": sum(size for _, size in req["ranges"]), "ranges": len(req["ranges"]), "seconds": [], "errors": []}
    ev0, ev1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    import time
    for _ in range(req.get("rounds", 3)):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for address, size in req["ranges"]:
            rc = rt.cudaMemcpy(host.data_ptr(), address, size, 2)  # cudaMemcpyDeviceToHost
            if rc != 0 and len(out["errors"]) < 20:
                out["errors"].append([address, size, rc])
        torch.cuda.synchronize()
        out["seconds"].append(time.perf_counter() - t0)
    with open(os.path.join(gt, "bench_d2h.json"), "w") as f:
        json.dump(out, f)
