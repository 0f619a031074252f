"""Raise an anomaly from a model application: the armed mlfx-agent captures this process now,
with the rules that name `app-anomaly` for it (packaging/mlfx-agent.toml).

One line in the application:

    import mlfx_anomaly; mlfx_anomaly.raise_anomaly("confidence collapsed on camera 2")

Or, without this file (the same request):

    import json, socket; s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); s.connect("/run/mlfx-agent/anomaly.sock"); s.send(json.dumps({"op": "anomaly", "reason": "drift"}).encode()); s.recv(65536)

The agent knows the caller from the kernel (SO_PEERCRED): a process can raise an anomaly for
itself only, and only an armed target is captured. The call returns at once with the agent's
answer (the trigger's outcome: "queued", or "suppressed" with the reason, e.g. a cooldown); the
capture itself freezes the process for the time its memory is read. It never raises: a missing
agent must not take the application down.
"""
import json
import socket

DEFAULT_SOCKET = "/run/mlfx-agent/anomaly.sock"


def raise_anomaly(reason, socket_path=DEFAULT_SOCKET, timeout=5.0):
    """Asks the agent to capture this process. Returns the agent's reply (a dict), or
    {"ok": False, "error": ...} when there is no agent or it did not answer."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
            s.settimeout(timeout)
            s.connect(socket_path)
            s.send(json.dumps({"op": "anomaly", "reason": str(reason)[:1024]}).encode())
            return json.loads(s.recv(65536).decode())
    except (OSError, ValueError) as e:
        return {"ok": False, "error": "no answer from the mlfx agent at %s: %s" % (socket_path, e)}
