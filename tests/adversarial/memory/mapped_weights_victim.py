"""A torch process whose model weight lives in a file it maps shared (torch.from_file), as
memory-mapped checkpoints do. gcore and kernel cores leave such file-backed mappings out, so
the core names the file (NT_FILE) but holds none of its bytes.

    mapped_weights_victim.py DIR     writes DIR/weights.bin and DIR/ready (the pid); runs until DIR/stop
"""
import os
import sys
import time

import torch

gt = sys.argv[1]
os.makedirs(gt, exist_ok=True)
path = os.path.join(gt, "weights.bin")
n = 64 * 64
torch.arange(n, dtype=torch.float32).numpy().tofile(path)
model = torch.nn.Linear(64, 64)
model.weight = torch.nn.Parameter(torch.from_file(path, shared=True, size=n, dtype=torch.float32).view(64, 64))
with open(os.path.join(gt, "ready"), "w") as f:
    f.write(str(os.getpid()))
while not os.path.exists(os.path.join(gt, "stop")):
    time.sleep(0.1)
