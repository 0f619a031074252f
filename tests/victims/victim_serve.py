"""What every test victim does once its models are built: write the ground truth the tests
compare against, then serve until told to stop.

Ground truth (GROUND_TRUTH_DIR): NAME.pt (each model's state_dict), NAME.modules.json (each
module's path, class and hyperparameters: its plain attributes in the analyzer's JSON
conventions, and the names of the others), models.json (name, class, state_dict file) and
outputs_before.pt. The serving loop writes `ready` (the pid) and a
`heartbeat`; when the test creates `check` it writes outputs_after.pt (the outputs after the
capture, to show the capture left the process intact) and `checked`; `stop` ends it.
For the armed daemon's tests: `crash` makes it die of a real fault (SIGSEGV reading address 8),
and `anomaly` makes it raise an anomaly through packaging/examples/mlfx_anomaly.py with the
socket path the file holds (the agent's reply goes to `anomaly_reply`).
"""
import ctypes, json, math, os, sys, threading, time

import torch

# Instance attributes every nn.Module has (analyzer/frontends/torch/module_walker.cc).
MODULE_INTERNAL = {
    "training", "_parameters", "_buffers", "_non_persistent_buffers_set", "_modules", "_backward_hooks",
    "_backward_pre_hooks", "_is_full_backward_hook", "_forward_hooks", "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called", "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_state_dict_hooks",
    "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks"}


class NotPlain(Exception):
    pass


def plain(v, depth=0):
    """A hyperparameter as the analyzer writes it (ObjectReader::plain_value): None, bool, int
    (60 bits or more as a decimal string), float (non-finite as "nan"/"inf"/"-inf"), str, and
    tuples/lists of those (as lists); anything else is not plain."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if type(v) is int:
        return str(v) if abs(v) >= 1 << 60 else v
    if type(v) is float:
        return v if math.isfinite(v) else ("nan" if math.isnan(v) else "inf" if v > 0 else "-inf")
    if type(v) in (tuple, list) and depth < 8:
        return [plain(x, depth + 1) for x in v]
    raise NotPlain()


def module_truth(model):
    """{path: {"class", "attributes", "other_attributes"}} for every module of the model."""
    out = {}
    for path, m in model.named_modules():
        attrs, other = {}, []
        for k, v in vars(m).items():
            if k in MODULE_INTERNAL:
                continue
            try:
                attrs[k] = plain(v)
            except NotPlain:
                other.append(k)
        cls = type(m)
        out[path] = {"class": cls.__module__ + "." + cls.__qualname__, "attributes": attrs,
                     "other_attributes": other}
    return out


def save_models(gt, named_models, outputs_before):
    listing = []
    for name, m in named_models:
        torch.save(m.state_dict(), os.path.join(gt, name + ".pt"))
        with open(os.path.join(gt, name + ".modules.json"), "w") as f:
            json.dump(module_truth(m), f)
        cls = type(m)
        listing.append({"name": name, "class": cls.__module__ + "." + cls.__qualname__,
                        "state_dict": name + ".pt"})
    with open(os.path.join(gt, "models.json"), "w") as f:
        json.dump(listing, f)
    torch.save(outputs_before, os.path.join(gt, "outputs_before.pt"))


def serve(gt, outputs):
    """Serves until `stop`; `outputs()` gives the dict saved as outputs_after.pt on `check`."""
    stop = threading.Event()
    if os.environ.get("MLFX_FAKE_CUDA_DUMP"):  # armed for GPU core dumps, with no GPU (tests/recovery)
        import cuda_driver_stub  # a stand-in for the driver's pipe; imported only then
        cuda_driver_stub.start()

    def worker():  # a second thread, as serving processes have
        while not stop.is_set():
            time.sleep(0.05)
    threading.Thread(target=worker, daemon=True).start()

    with open(os.path.join(gt, "ready"), "w") as f:
        f.write(str(os.getpid()))
    beat = 0
    while not os.path.exists(os.path.join(gt, "stop")):
        beat += 1
        with open(os.path.join(gt, "heartbeat"), "w") as f:
            f.write(str(beat))
        if os.path.exists(os.path.join(gt, "crash")):
            ctypes.string_at(8)  # a real segmentation fault, in the interpreter's own code
        anomaly = os.path.join(gt, "anomaly")
        if os.path.exists(anomaly) and not os.path.exists(os.path.join(gt, "anomaly_reply")):
            sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "packaging", "examples"))
            import mlfx_anomaly
            with open(anomaly) as f:
                reply = mlfx_anomaly.raise_anomaly("victim says: outputs drifted", socket_path=f.read().strip())
            with open(os.path.join(gt, "anomaly_reply"), "w") as f:
                json.dump(reply, f)
        if os.path.exists(os.path.join(gt, "bench_d2h")) and not os.path.exists(os.path.join(gt, "bench_d2h.json")):
            import cuda_truth  # the GPU benchmark's reference copy (tests/gpu)
            cuda_truth.bench_d2h(gt)
        if os.path.exists(os.path.join(gt, "check")) and not os.path.exists(os.path.join(gt, "checked")):
            torch.save(outputs(), os.path.join(gt, "outputs_after.pt"))
            with open(os.path.join(gt, "checked"), "w") as f:
                f.write("1")
        time.sleep(0.05)
    stop.set()
