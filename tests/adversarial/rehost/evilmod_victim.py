"""A real PyTorch process whose model's class is evilmod.Net (module evilmod from the victim's
own folder): a model a compromised device may serve, for the bundle test to capture.

    /usr/bin/python3 evilmod_victim.py MODULE_DIR STATE_DIR

Writes STATE_DIR/ready once the model has run, and exits when STATE_DIR/stop appears.
"""
import os, sys, time

sys.path.insert(0, sys.argv[1])
import torch  # noqa: E402
import evilmod  # noqa: E402

model = evilmod.Net().eval()
with torch.no_grad():
    model(torch.randn(1, 4))
with open(os.path.join(sys.argv[2], "ready"), "w") as f:
    f.write(str(os.getpid()))
while not os.path.exists(os.path.join(sys.argv[2], "stop")):
    time.sleep(0.05)
