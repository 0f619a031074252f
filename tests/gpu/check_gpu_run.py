#!/usr/bin/env python3
"""What run_gpu_check.sh measures and checks, with its own reader of the CUDA core dump (the ELF
sections of NVIDIA's public cudacoredump.h, nothing of mlfx's parser), so that the dump itself is
checked, not only mlfx's reading of it.

  check_gpu_run.py ranges --dump DUMP
      the dump's global and managed memory sections as the victim's cudaMemcpy benchmark request
  check_gpu_run.py record --summary SUMMARY.json families|cupti --gt GT --dump DUMP --report REPORT
                   [--context GPU_CONTEXT] [--events EVENTS] [--pid PID]
      every CUDA storage of the victim's truth (cuda_tensors.json) read from the dump's sections
      and hashed; the caching allocator's segments (cuda_snapshot.json) against the sections;
      report.json's gpu part; the victim alive
  check_gpu_run.py record --summary SUMMARY.json bench --contexts CTX... --d2h D2H...
      GPU dump throughput (gpu-context timings) vs the cudaMemcpy of the same ranges, medians
  check_gpu_run.py record --summary SUMMARY.json fixture --name NAME --gt GT --dump DUMP [--context C] --out DIR
      DIR/fixture-NAME.nvcudmp.gz and DIR/fixture-NAME.json (tests/gpu/gpu_fixture_test.cc)
"""
import argparse, gzip, hashlib, json, os, shutil, statistics, struct, sys

GLOBAL, MANAGED = 0x80000002, 0x80000001


def open_dump(path):
    f = open(path, "rb")
    if f.read(2) == b"\x1f\x8b":
        f.close()
        return gzip.open(path, "rb")
    f.seek(0)
    return f


def sections(path):
    """[(type, addr, offset, size)] of a CUDA core dump, extended numbering included."""
    with open_dump(path) as f:
        eh = f.read(64)
        assert eh[:4] == b"\x7fELF" and eh[7] == 0x33 and struct.unpack_from("<H", eh, 18)[0] == 0xBE, "not a CUDA dump"
        shoff, = struct.unpack_from("<Q", eh, 40)
        shentsize, shnum = struct.unpack_from("<HH", eh, 58)
        f.seek(shoff)
        first = f.read(64)
        count = shnum or struct.unpack_from("<Q", first, 32)[0]
        rest = f.read(64 * (count - 1))
        out = []
        for i in range(1, count):
            name, typ, flags, addr, off, size = struct.unpack_from("<IIQQQQ", rest, 64 * (i - 1))
            out.append((typ, addr, off, size))
        return out


def memory(path):
    return sorted((a, s, o) for t, a, o, s in sections(path) if t in (GLOBAL, MANAGED) and s)


def section_of(mem, addr, size):
    for a, s, o in mem:
        if a <= addr and addr + size <= a + s:
            return a, s, o
    return None


def read_at(path, offset, size):
    with open_dump(path) as f:
        f.seek(offset)
        return f.read(size)


def check_storages(gt, dump):
    mem = memory(dump)
    truth = json.load(open(os.path.join(gt, "cuda_tensors.json")))
    ok, bad, absent = 0, [], []
    for e in truth:
        where = section_of(mem, e["data_ptr"], e["storage_bytes"])
        if not where:
            absent.append(e["key"])
            continue
        a, s, o = where
        got = hashlib.sha256(read_at(dump, o + e["data_ptr"] - a, e["storage_bytes"])).hexdigest()
        if got == e["sha256"]:
            ok += 1
        else:
            bad.append(e["key"])
    segs = json.load(open(os.path.join(gt, "cuda_snapshot.json")))
    inside = sum(1 for s in segs if section_of(mem, s["address"], s["total_size"]))
    exact = sum(1 for s in segs if any(a == s["address"] and sz == s["total_size"] for a, sz, _ in mem))
    return {"cuda_storages": len(truth), "bytes_equal": ok, "bytes_differ": bad, "not_in_dump": absent,
            "allocator_segments": len(segs), "segments_inside_a_section": inside, "segments_equal_to_a_section": exact,
            "expandable_segments": sum(1 for s in segs if s.get("is_expandable")),
            "dump_memory_sections": len(mem), "dump_memory_bytes": sum(s for _, s, _ in mem)}


def record(a):
    summary = json.load(open(a.summary)) if os.path.exists(a.summary) else {}
    r = {}
    if a.what in ("families", "cupti"):
        r = check_storages(a.gt, a.dump)
        rep = json.load(open(a.report)) if a.report and os.path.exists(a.report) else {}
        r["report_gpu"] = rep.get("gpu")
        r["models"] = [{k: m.get(k) for k in ("class", "tensors", "complete", "missing_count")} for m in rep.get("models", [])]
        r["python"], r["torch"] = rep.get("python", {}).get("version"), rep.get("torch", {}).get("version")
        if a.context:
            r["gpu_context"] = json.load(open(a.context))
        if a.events:
            kinds = {}
            for line in open(a.events):
                ev = json.loads(line)
                kinds[ev.get("event")] = kinds.get(ev.get("event"), 0) + 1
                if ev.get("event") == "copy-out":
                    r["copy_out"] = ev
            r["events"] = kinds
        if a.pid:
            r["victim_alive"] = os.path.exists("/proc/%d" % a.pid)
        r["passed"] = (r["bytes_equal"] == r["cuda_storages"] > 0 and bool(r["report_gpu"])
                       and r["report_gpu"]["tensors"]["missing"] == 0 and r.get("victim_alive", True))
    elif a.what == "bench":
        dump = []
        for c in a.contexts:
            c = json.load(open(c))
            dump.append((c["dump"]["bytes"], c["timings"]["trigger_to_eof_ms"] / 1000))
        d2h = [(j["bytes"], j["seconds"][0]) for j in map(lambda p: json.load(open(p)), a.d2h)]
        med = lambda xs: statistics.median(xs) if xs else None
        r = {"rounds": len(dump), "dump_bytes": med([b for b, _ in dump]),
             "dump_seconds_median": med([s for _, s in dump]),
             "dump_gb_per_s_median": med([b / s / 1e9 for b, s in dump if s]),
             "d2h_bytes": med([b for b, _ in d2h]), "d2h_seconds_median": med([s for _, s in d2h]),
             "d2h_gb_per_s_median": med([b / s / 1e9 for b, s in d2h if s]),
             "dump_rounds": dump, "d2h_rounds": d2h}
        if r["dump_seconds_median"] and r["d2h_seconds_median"]:
            r["dump_time_over_d2h_time"] = r["dump_seconds_median"] / r["d2h_seconds_median"]
    elif a.what == "fixture":
        gz = os.path.join(a.out, "fixture-%s.nvcudmp.gz" % a.name)
        with open(a.dump, "rb") as src, gzip.open(gz, "wb", 9) as dst:
            shutil.copyfileobj(src, dst)
        truth = {"tensors": json.load(open(os.path.join(a.gt, "cuda_tensors.json"))),
                 "device": json.load(open(os.path.join(a.gt, "cuda_device.json"))),
                 "context": json.load(open(a.context)) if a.context else None,
                 "dump_sha256": hashlib.sha256(open(a.dump, "rb").read()).hexdigest()}
        json.dump(truth, open(os.path.join(a.out, "fixture-%s.json" % a.name), "w"), indent=1)
        r = {"file": os.path.basename(gz), "bytes": os.path.getsize(gz), "storages": check_storages(a.gt, a.dump)}
    summary[a.what if a.what != "fixture" else "fixture-" + a.name] = r
    json.dump(summary, open(a.summary, "w"), indent=1)
    print(json.dumps(r)[:4000])


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    rg = sub.add_parser("ranges")
    rg.add_argument("--dump", required=True)
    rc = sub.add_parser("record")
    rc.add_argument("--summary", required=True)
    rc.add_argument("what", choices=["families", "cupti", "bench", "fixture"])
    for opt in ("--gt", "--dump", "--report", "--context", "--events", "--name", "--out"):
        rc.add_argument(opt)
    rc.add_argument("--pid", type=int)
    rc.add_argument("--contexts", nargs="*", default=[])
    rc.add_argument("--d2h", nargs="*", default=[])
    a = ap.parse_args()
    if a.cmd == "ranges":
        print(json.dumps({"ranges": [[addr, size] for addr, size, _ in memory(a.dump)], "rounds": 1}))
    else:
        record(a)


if __name__ == "__main__":
    main()
