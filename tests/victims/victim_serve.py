"""What every test victim does once its models are built: write the ground truth the tests
compare against, then serve until told to stop.

Ground truth (GROUND_TRUTH_DIR): NAME.pt (each model's state_dict), models.json (name, class,
state_dict file) and outputs_before.pt. The serving loop writes `ready` (the pid) and a
`heartbeat`; when the test creates `check` it writes outputs_after.pt (the outputs after the
capture, to show the capture left the process intact) and `checked`; `stop` ends it.
For the armed daemon's tests: `crash` makes it die of a real fault (SIGSEGV reading address 8),
and `anomaly` makes it raise an anomaly through packaging/examples/mlfx_anomaly.py with the
socket path the file holds (the agent's reply goes to `anomaly_reply`).
"""
import ctypes, json, os, sys, threading, time

import torch


def save_models(gt, named_models, outputs_before):
    listing = []
    for name, m in named_models:
        torch.save(m.state_dict(), os.path.join(gt, name + ".pt"))
        cls = type(m)
        listing.append({"name": name, "class": cls.__module__ + "." + cls.__qualname__,
                        "state_dict": name + ".pt"})
    with open(os.path.join(gt, "models.json"), "w") as f:
        json.dump(listing, f)
    torch.save(outputs_before, os.path.join(gt, "outputs_before.pt"))


def serve(gt, outputs):
    """Serves until `stop`; `outputs()` gives the dict saved as outputs_after.pt on `check`."""
    stop = threading.Event()

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
        if os.path.exists(os.path.join(gt, "check")) and not os.path.exists(os.path.join(gt, "checked")):
            torch.save(outputs(), os.path.join(gt, "outputs_after.pt"))
            with open(os.path.join(gt, "checked"), "w") as f:
                f.write("1")
        time.sleep(0.05)
    stop.set()
