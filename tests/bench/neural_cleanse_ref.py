"""Neural Cleanse for one target class in plain PyTorch: the reference that mlfx's C++
implementation (`mlfx scan neural-cleanse`) is checked and benchmarked against.

    /usr/bin/python3 neural_cleanse_ref.py MODEL.pt CLEAN.safetensors --target T --epochs E
        [--batch 32] [--threads N] [--no-early-stop] [--input-range LO,HI]

MODEL.pt is a TorchScript file (torch.jit.load); CLEAN.safetensors holds `inputs` (F32
[N,C,H,W]) and optionally `labels`. Prints one JSON line:
  target, epochs_run, seconds (the optimisation loop's wall time: loading not counted),
  mask_l1 (sum |mask| of the mask returned), attack_success and loss_ce (the epoch means of
  the epoch that mask comes from), reg_best (the epoch-mean |mask| sum that made it best;
  null when no epoch reached the threshold and the last mask is returned), found (whether
  one did), cost (the final cost).

The algorithm (bolunwang/backdoor visualizer.py, the settings of its examples):
  x in [lo, hi] (default: min and max of the clean inputs)
  mask_tanh (1,1,H,W) and pattern_tanh (1,C,H,W), float32 zeros
  mask    = tanh(mask_tanh) / (2 - 2 eps) + 0.5                        eps = 1e-7
  pattern = (tanh(pattern_tanh) / (2 - 2 eps) + 0.5) * (hi - lo) + lo
  x_adv   = (1 - mask) * x + mask * pattern
  loss    = cross_entropy(model(x_adv), target) (mean) + cost * sum |mask|
  Adam(lr 0.1, betas (0.5, 0.9)) over [mask_tanh, pattern_tanh]; mini-batches of B over the
  clean set in order, the last partial one included; an epoch is one pass. Per epoch: mean
  loss_ce, mean loss_reg, mean attack success (argmax of the same forward pass == target),
  each the mean of the per-batch figures.
  init_cost 1e-3 (the starting cost), threshold 0.99, patience 5, up x2, down /2**1.5, early
  stop threshold 1.0 and patience 25; the best mask and the cost schedule as visualizer.py.
"""
import argparse, json, math, struct, sys, time

import torch
import torch.nn.functional as F

EPS = 1e-7
INIT_COST = 1e-3
LR = 0.1
BETAS = (0.5, 0.9)
THRESHOLD = 0.99
PATIENCE = 5
MULT_UP = 2.0
MULT_DOWN = 2.0 ** 1.5
EARLY_STOP_THRESHOLD = 1.0
EARLY_STOP_PATIENCE = 5 * PATIENCE


def load_safetensors(path):
    dtypes = {"F32": torch.float32, "F64": torch.float64, "I64": torch.int64, "I32": torch.int32,
              "U8": torch.uint8, "I8": torch.int8, "F16": torch.float16, "BF16": torch.bfloat16,
              "BOOL": torch.bool, "I16": torch.int16}
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack_from("<Q", blob, 0)
    header = json.loads(blob[8:8 + n])
    data = memoryview(blob)[8 + n:]
    out = {}
    for name, h in header.items():
        if name == "__metadata__":
            continue
        b, e = h["data_offsets"]
        t = torch.frombuffer(bytearray(data[b:e]), dtype=dtypes[h["dtype"]]) if e > b else \
            torch.empty(0, dtype=dtypes[h["dtype"]])
        out[name] = t.reshape(h["shape"])
    return out


def neural_cleanse(model, x, target, epochs, batch, lo, hi, early_stop=True):
    n, c, h, w = x.shape
    mask_tanh = torch.zeros(1, 1, h, w, dtype=torch.float32, requires_grad=True)
    pattern_tanh = torch.zeros(1, c, h, w, dtype=torch.float32, requires_grad=True)
    opt = torch.optim.Adam([mask_tanh, pattern_tanh], lr=LR, betas=BETAS)

    def mask_pattern():
        mask = torch.tanh(mask_tanh) / (2 - 2 * EPS) + 0.5
        pattern = (torch.tanh(pattern_tanh) / (2 - 2 * EPS) + 0.5) * (hi - lo) + lo
        return mask, pattern

    cost = INIT_COST
    best = None  # (mask, pattern, loss_ce, acc)
    reg_best = math.inf
    cost_set_counter = cost_up_counter = cost_down_counter = 0
    cost_up_flag = cost_down_flag = False
    early_stop_counter = 0
    early_stop_reg_best = reg_best
    last = None
    epochs_run = 0

    for _ in range(epochs):
        ce_sum = reg_sum = acc_sum = 0.0
        batches = 0
        for i in range(0, n, batch):
            xb = x[i:i + batch]
            mask, pattern = mask_pattern()
            x_adv = (1 - mask) * xb + mask * pattern
            logits = model(x_adv)
            labels = torch.full((xb.shape[0],), target, dtype=torch.int64)
            loss_ce = F.cross_entropy(logits, labels)
            loss_reg = mask.abs().sum()
            loss = loss_ce + cost * loss_reg
            opt.zero_grad()
            loss.backward()
            opt.step()
            ce_sum += loss_ce.item()
            reg_sum += loss_reg.item()
            acc_sum += (logits.argmax(1) == target).float().mean().item()
            batches += 1
        epochs_run += 1
        avg_ce, avg_reg, avg_acc = ce_sum / batches, reg_sum / batches, acc_sum / batches
        last = (avg_ce, avg_acc)

        if avg_acc >= THRESHOLD and avg_reg < reg_best:
            with torch.no_grad():
                mask, pattern = mask_pattern()
            best = (mask.clone(), pattern.clone(), avg_ce, avg_acc)
            reg_best = avg_reg

        if early_stop:
            if reg_best < math.inf:
                if reg_best >= EARLY_STOP_THRESHOLD * early_stop_reg_best:
                    early_stop_counter += 1
                else:
                    early_stop_counter = 0
            early_stop_reg_best = min(reg_best, early_stop_reg_best)
            if cost_down_flag and cost_up_flag and early_stop_counter >= EARLY_STOP_PATIENCE:
                break

        if cost == 0 and avg_acc >= THRESHOLD:
            cost_set_counter += 1
            if cost_set_counter >= PATIENCE:
                cost = INIT_COST
                cost_up_counter = cost_down_counter = 0
                cost_up_flag = cost_down_flag = False
        else:
            cost_set_counter = 0

        if avg_acc >= THRESHOLD:
            cost_up_counter += 1
            cost_down_counter = 0
        else:
            cost_up_counter = 0
            cost_down_counter += 1
        if cost_up_counter >= PATIENCE:
            cost_up_counter = 0
            cost *= MULT_UP
            cost_up_flag = True
        elif cost_down_counter >= PATIENCE:
            cost_down_counter = 0
            cost /= MULT_DOWN
            cost_down_flag = True

    if best is None:
        with torch.no_grad():
            mask, pattern = mask_pattern()
        best = (mask, pattern, last[0] if last else math.nan, last[1] if last else math.nan)
        found = False
    else:
        found = True
    return {"mask": best[0], "pattern": best[1], "loss_ce": best[2], "attack_success": best[3],
            "reg_best": reg_best if found else None, "found": found, "epochs_run": epochs_run, "cost": cost}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("clean")
    ap.add_argument("--target", type=int, required=True)
    ap.add_argument("--epochs", type=int, required=True)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    ap.add_argument("--no-early-stop", action="store_true")
    ap.add_argument("--input-range", help="LO,HI (default: min,max of the clean inputs)")
    ap.add_argument("--save-mask", help="write the mask and pattern (torch.save) here")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    model = torch.jit.load(args.model, map_location="cpu")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = load_safetensors(args.clean)["inputs"].to(torch.float32).contiguous()
    if args.input_range:
        lo, hi = (float(v) for v in args.input_range.split(","))
    else:
        lo, hi = x.min().item(), x.max().item()

    t0 = time.perf_counter()
    r = neural_cleanse(model, x, args.target, args.epochs, args.batch, lo, hi, not args.no_early_stop)
    seconds = time.perf_counter() - t0

    if args.save_mask:
        torch.save({"mask": r["mask"], "pattern": r["pattern"]}, args.save_mask)
    print(json.dumps({"target": args.target, "epochs_run": r["epochs_run"], "seconds": round(seconds, 6),
                      "mask_l1": r["mask"].abs().sum().item(), "attack_success": r["attack_success"],
                      "loss_ce": r["loss_ce"], "reg_best": r["reg_best"], "found": r["found"],
                      "cost": r["cost"], "input_range": [lo, hi], "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
