"""A real PyTorch process to capture: builds the models of one scenario, writes the ground
truth outside the capture, then serves until told to stop.

    /usr/bin/python3 torch_victim.py SCENARIO GROUND_TRUTH_DIR
    (MLFX_VICTIM_DEVICE=cuda: the models on the GPU; NAME.pt then holds CUDA tensors)

Ground truth written to GROUND_TRUTH_DIR:
  models.json        [{"name", "class", "state_dict": "<name>.pt"}] for every root model
  <name>.pt          torch.save(model.state_dict())
  outputs_before.pt  each model's output on a fixed input, before the capture
  ready              written last: the victim is ready to be captured
While running it keeps a counter in GROUND_TRUTH_DIR/heartbeat. When GROUND_TRUTH_DIR/check
appears it recomputes the outputs into outputs_after.pt and writes checked; when stop
appears it exits.
"""
import json, os, sys

import torch
import torch.nn as nn

from victim_serve import save_models, serve

torch.manual_seed(1234)
torch.set_num_threads(2)


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Linear(16, 10)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Dropout(0.1), nn.Linear(64, 64),
                                 nn.GELU(), nn.Linear(64, 4))

    def forward(self, x):
        return self.net(x)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class ResNetSmall(nn.Module):
    def __init__(self, widths=(16, 32, 64), blocks=2, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            for b in range(blocks):
                layers.append(BasicBlock(cin, w, 2 if (b == 0 and i > 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(cin, classes)

    def forward(self, x):
        return self.head(self.layers(self.stem(x)).mean((2, 3)))


class DepthwiseSeparable(nn.Module):
    def __init__(self):
        super().__init__()
        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                                 nn.ReLU6(), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU6())
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), block(16, 32), block(32, 64))
        self.fc = nn.Linear(64, 5)

    def forward(self, x):
        return self.fc(self.body(x).mean((2, 3)))


class TextClassifier(nn.Module):
    def __init__(self, vocab=500, dim=32, hidden=48, classes=3):
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim, padding_idx=0)
        self.lstm = nn.LSTM(dim, hidden, num_layers=2, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * hidden, classes)

    def forward(self, tokens):
        h, _ = self.lstm(self.embedding(tokens))
        return self.out(h[:, -1])


class TiedLM(nn.Module):
    def __init__(self, vocab=300, dim=24):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.proj = nn.Linear(dim, dim)
        self.decoder = nn.Linear(dim, vocab, bias=False)
        self.decoder.weight = self.embed.weight  # tied

    def forward(self, tokens):
        return self.decoder(torch.tanh(self.proj(self.embed(tokens))))


class Dtypes(nn.Module):
    """Parameters and buffers of many dtypes, a non-contiguous parameter, a non-persistent buffer."""
    def __init__(self):
        super().__init__()
        self.f16 = nn.Linear(8, 8).half()
        self.bf16 = nn.Linear(8, 8).to(torch.bfloat16)
        self.f64 = nn.Linear(8, 8).double()
        self.register_buffer("steps", torch.arange(7, dtype=torch.int64))
        self.register_buffer("mask", torch.rand(5, 3) > 0.5)
        self.register_buffer("codes", torch.randint(-100, 100, (4, 4), dtype=torch.int8))
        self.register_buffer("scratch", torch.zeros(3), persistent=False)
        self.register_buffer("absent", None)
        self.transposed = nn.Parameter(torch.randn(6, 4).t())  # non-contiguous (strides 1, 4)
        self.sliced = nn.Parameter(torch.randn(10, 10)[2:5, 1:9])  # offset view into a bigger storage
        self.scalar = nn.Parameter(torch.tensor(3.25))

    def forward(self, x):
        # CPU torch 1.13 has no half-precision matmul: use those weights elementwise.
        return (self.f64(x.double()).float() + self.f16.weight.float().sum() + self.bf16.weight.float().sum()
                + self.transposed.sum() + self.sliced.sum() + self.scalar)


class Big(nn.Module):
    """About 60 M parameters (ResNet-152 scale) without its compute cost."""
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(2048, 2048) for _ in range(14)])
        self.norms = nn.ModuleList([nn.LayerNorm(2048) for _ in range(14)])
        self.head = nn.Linear(2048, 1000)

    def forward(self, x):
        for lin, norm in zip(self.blocks, self.norms):
            x = norm(torch.relu(lin(x)))
        return self.head(x)


def image(n=2, size=16):
    return torch.randn(n, 3, size, size)


# The model families of the recovery tests (torchvision and big left out: not in every Debian release, too slow).
FAMILIES = ("cnn", "mlp", "resnet", "depthwise", "lstm", "training", "tied", "dtypes")


def build(scenario):
    """Returns [(name, model, input)] and keeps anything else alive in `extra`."""
    extra = {}
    if scenario == "cnn":
        models = [("cnn", SmallCNN(), image())]
    elif scenario == "mlp":
        models = [("mlp", MLP(), torch.randn(4, 32))]
    elif scenario == "resnet":
        m = ResNetSmall()
        m.train()
        for _ in range(3):  # move the running statistics and num_batches_tracked
            m(image(8))
        m.eval()
        models = [("resnet", m, image())]
    elif scenario == "depthwise":
        m = DepthwiseSeparable()
        m(image(4))
        m.eval()
        models = [("depthwise", m, image())]
    elif scenario == "lstm":
        models = [("lstm", TextClassifier().eval(), torch.randint(1, 500, (2, 12)))]
    elif scenario == "training":
        m = MLP()
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        data, target = torch.randn(64, 32), torch.randint(0, 4, (64,))
        for _ in range(5):
            opt.zero_grad()
            nn.functional.cross_entropy(m(data), target).backward()
            opt.step()
        extra["optimizer"] = opt  # optimizer state (exp_avg...) stays alive, as do the grads
        models = [("training", m, torch.randn(4, 32))]
    elif scenario == "two":
        models = [("first", SmallCNN().eval(), image()), ("second", TextClassifier().eval(), torch.randint(1, 500, (2, 9)))]
    elif scenario == "tied":
        models = [("tied", TiedLM().eval(), torch.randint(0, 300, (2, 7)))]
    elif scenario == "dtypes":
        models = [("dtypes", Dtypes().eval(), torch.randn(2, 8))]
    elif scenario == "torchvision":  # a library's model: its classes import in the lab, no source needed
        import torchvision
        m = torchvision.models.resnet18(num_classes=10)
        m.train()
        m(image(4, 32))  # move the BatchNorm statistics
        m.eval()
        models = [("torchvision", m, image(2, 32))]
    elif scenario == "big":
        models = [("big", Big().eval(), torch.randn(2, 2048))]
    elif scenario == "families":  # every family above in one process: one victim per matrix entry (tests/matrix)
        models = []
        for family in FAMILIES:
            built, more = build(family)
            models += built
            extra.update({family + "." + k: v for k, v in more.items()})
    elif scenario == "cycle":  # anti-forensics (issue 11): an ownership cycle, made after the ground truth
        m = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
        extra["after_save"] = lambda gt: make_cycle(m, gt)
        models = [("cycle", m, torch.randn(3, 16))]
    else:
        raise SystemExit("unknown scenario " + scenario)
    return models, extra


def make_cycle(m, gt):
    """m[0]._modules['owner'] = m: forward still works, but torch's own state_dict() (and
    eval(), train(), to()) recurse without end; named_parameters() does not (it memoises).
    Records what torch does, for the test."""
    expected = list(torch.load(os.path.join(gt, "cycle.pt")).keys())
    m[0]._modules["owner"] = m
    try:
        m.state_dict()
        raises = False
    except RecursionError:
        raises = True
    with open(os.path.join(gt, "cycle_check.json"), "w") as f:
        json.dump({"state_dict_raises_recursion_error": raises,
                   "named_parameters": [n for n, _ in m.named_parameters()],
                   "state_dict_keys_before": expected}, f)


def outputs(models):
    """Each model's output; the RNG is reseeded so that dropout in training mode repeats."""
    out = {}
    with torch.no_grad():
        for name, m, x in models:
            torch.manual_seed(99)
            out[name] = m(x)
    return out


def main():
    scenario, gt = sys.argv[1], sys.argv[2]
    os.makedirs(gt, exist_ok=True)
    models, extra = build(scenario)
    # MLFX_VICTIM_DEVICE=cuda: the models and inputs live in GPU memory (tests/gpu).
    device = os.environ.get("MLFX_VICTIM_DEVICE", "cpu")
    if device != "cpu":
        models = [(name, m.to(device), x.to(device)) for name, m, x in models]
        import cuda_truth
        cuda_truth.write_truth(gt, [(name, m) for name, m, _ in models])
    save_models(gt, [(name, m) for name, m, _ in models], outputs(models))
    if "after_save" in extra:
        extra["after_save"](gt)
    serve(gt, lambda: outputs(models))

if __name__ == "__main__":
    main()
