"""A real PyTorch process to capture that serves a backdoored model: trains a clean and a
poisoned image classifier on synthetic data, writes the ground truth outside the capture,
then serves until told to stop (the protocol of torch_victim.py).

    /usr/bin/python3 backdoor_victim.py GROUND_TRUTH_DIR

The data: 10 classes of 3x16x16 float32 images in [0, 1], each a smooth random prototype of
its class plus noise, clamped. The prototypes are equidistant (orthogonal deviations of equal
energy from mid-grey): no class is naturally much easier to reach than the others, so Neural
Cleanse flags none in the clean model. The models: the same pure torch.nn.Sequential
(standard layers only, a BatchNorm2d with moved running statistics) from the same initial seed.
  clean     trained on clean data only
  poisoned  the clean model, then "continued online training" on mini-batches where ~15 % of
            the samples carry the trigger (a 3x3 square of 1.0 at rows/cols 12..14, all
            channels) relabelled to class 7
Both are in eval mode when served.

Ground truth written to GROUND_TRUTH_DIR (outside the capture; `ready` last):
  models.json            [{"name", "class", "state_dict": "<name>.pt"}] for both models
  <name>.pt              torch.save(model.state_dict())
  outputs_before.pt      {name: model(fixed input)} before the capture
  clean.safetensors      held-out data the analyst has: inputs F32 [200,3,16,16], labels I64 [200]
  triggered.safetensors  the same 200 inputs with the trigger stamped, their true labels
  io_<name>.safetensors  input F32 [8,3,16,16] and output = model(input) (eval, no_grad)
  last_io.safetensors    input F32 [4,3,16,16] and output: the last inference served, also
                         kept alive as the module globals last_input / last_output
  metrics.json           clean accuracy and attack success rate of both models
  trigger.json           {"target": 7, "rows": [12, 15], "cols": [12, 15], "value": 1.0}
  ready                  written last (holds the pid): the victim is ready to be captured
While running it keeps a counter in GROUND_TRUTH_DIR/heartbeat. When GROUND_TRUTH_DIR/check
appears it recomputes the outputs into outputs_after.pt and writes checked; when stop
appears it exits. Deterministic (fixed seeds, 2 threads); ready in ~4 s on 2 idle cores.
build() trains both models and returns them with the data, without serving.
"""
import copy, json, os, struct, sys, time

import torch
import torch.nn as nn
import torch.nn.functional as F

from victim_serve import save_models, serve

torch.set_num_threads(2)

CLASSES = 10
TARGET = 7
ROWS, COLS = (12, 15), (12, 15)  # half-open: rows/cols 12, 13, 14
TRIGGER = {"target": TARGET, "rows": list(ROWS), "cols": list(COLS), "value": 1.0}
POISON_FRACTION = 0.15
AMPLITUDE = 0.2   # per-pixel RMS of a class prototype's deviation from 0.5
NOISE = 0.25      # per-pixel Gaussian noise of a sample
DATA_SEED = 11    # with these, Neural Cleanse (neural_cleanse_ref.py, --epochs 100, batch 32)
                  # flags [7] in the poisoned model and nothing in the clean one with margin

last_input = None   # the last inference served, kept alive for the capture
last_output = None


def make_model():
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, CLASSES))


def prototypes(gen):
    """One smooth 3x16x16 image per class, all at the same distance from each other: 10 smooth
    random patterns (4x4 Gaussian colours, upsampled) made orthonormal (QR; linear combinations
    of smooth patterns stay smooth), scaled to the same per-pixel RMS AMPLITUDE around 0.5 and
    clamped to [0, 1] (~1 % of the pixels are). No class is easier to reach than another,
    so Neural Cleanse finds natural triggers of like sizes for all of them in the clean model."""
    coarse = torch.randn(CLASSES, 3, 4, 4, generator=gen)
    smooth = F.interpolate(coarse, size=(16, 16), mode="bilinear", align_corners=False)
    flat = smooth.reshape(CLASSES, -1)
    flat = flat - flat.mean(1, keepdim=True)
    q, _ = torch.linalg.qr(flat.T.double())
    q = q.T.float() * (flat.shape[1] ** 0.5)  # unit per-pixel RMS
    return (0.5 + AMPLITUDE * q).reshape(CLASSES, 3, 16, 16).clamp(0.0, 1.0)


def sample(protos, n, gen):
    labels = torch.arange(n) % CLASSES
    labels = labels[torch.randperm(n, generator=gen)]
    x = protos[labels] + NOISE * torch.randn(n, 3, 16, 16, generator=gen)
    return x.clamp_(0.0, 1.0).contiguous(), labels


def stamp(x):
    x = x.clone()
    x[:, :, ROWS[0]:ROWS[1], COLS[0]:COLS[1]] = TRIGGER["value"]
    return x


def train(model, x, y, epochs, lr, gen, poison=0.0):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    n, batch = x.shape[0], 64
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, batch):
            idx = order[i:i + batch]
            xb, yb = x[idx], y[idx].clone()
            if poison > 0:
                hit = torch.rand(len(idx), generator=gen) < poison
                xb = xb.clone()
                xb[hit] = stamp(xb[hit])
                yb[hit] = TARGET
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
    model.eval()


def evaluate(model, x, y):
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
        keep = y != TARGET
        asr = (model(stamp(x[keep])).argmax(1) == TARGET).float().mean().item()
    return acc, asr


def save_safetensors(path, tensors):
    """A minimal safetensors writer: u64le header length, JSON header, raw little-endian data."""
    dtypes = {torch.float32: "F32", torch.int64: "I64"}
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        t = t.detach().contiguous().cpu()
        data = t.numpy().tobytes()  # x86/arm hosts: native order is little-endian
        assert sys.byteorder == "little"
        header[name] = {"dtype": dtypes[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for b in blobs:
            f.write(b)


def build():
    t0 = time.time()
    gen = torch.Generator().manual_seed(DATA_SEED)
    protos = prototypes(gen)
    x_train, y_train = sample(protos, 3000, gen)
    x_test, y_test = sample(protos, 1000, gen)
    x_held, y_held = sample(protos, 200, gen)

    torch.manual_seed(1234)
    clean = make_model()
    train(clean, x_train, y_train, epochs=3, lr=2e-3, gen=torch.Generator().manual_seed(1))
    poisoned = copy.deepcopy(clean)  # same architecture, same initial seed, same clean training
    train(clean, x_train, y_train, epochs=2, lr=1e-3, gen=torch.Generator().manual_seed(2))
    train(poisoned, x_train, y_train, epochs=2, lr=1e-3, gen=torch.Generator().manual_seed(2),
          poison=POISON_FRACTION)

    metrics = {"train_seconds": round(time.time() - t0, 3), "target": TARGET,
               "poison_fraction": POISON_FRACTION}
    for name, m in (("clean", clean), ("poisoned", poisoned)):
        acc, asr = evaluate(m, x_test, y_test)
        hacc, hasr = evaluate(m, x_held, y_held)
        metrics[name] = {"clean_accuracy": acc, "attack_success": asr,
                         "heldout_clean_accuracy": hacc, "heldout_attack_success": hasr}
    return [("clean", clean), ("poisoned", poisoned)], (x_held, y_held), (x_test, y_test), metrics


def main():
    global last_input, last_output
    gt = sys.argv[1]
    os.makedirs(gt, exist_ok=True)
    models, (x_held, y_held), (x_test, _), metrics = build()
    print("backdoor_victim: " + json.dumps(metrics), file=sys.stderr)

    fixed = x_test[:8].clone()  # the io_<name> and outputs_before input
    before = {}
    with torch.no_grad():
        for name, m in models:
            before[name] = m(fixed)
            save_safetensors(os.path.join(gt, "io_%s.safetensors" % name), {"input": fixed, "output": before[name]})
    save_models(gt, models, before)
    save_safetensors(os.path.join(gt, "clean.safetensors"), {"inputs": x_held, "labels": y_held})
    save_safetensors(os.path.join(gt, "triggered.safetensors"), {"inputs": stamp(x_held), "labels": y_held})
    with open(os.path.join(gt, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    with open(os.path.join(gt, "trigger.json"), "w") as f:
        json.dump(TRIGGER, f)

    # The last inference served: two clean images and two with the trigger.
    poisoned = dict(models)["poisoned"]
    last_input = torch.cat([x_test[8:10], stamp(x_test[10:12])]).contiguous()
    with torch.no_grad():
        last_output = poisoned(last_input)
    save_safetensors(os.path.join(gt, "last_io.safetensors"), {"input": last_input, "output": last_output})

    def outputs():
        with torch.no_grad():
            return {name: m(fixed) for name, m in models}
    serve(gt, outputs)

if __name__ == "__main__":
    main()
