"""What the CUDA driver does with its user-triggered core dump variables, for a CPU-only torch
victim on machines without a GPU (CI): the pipe CUDA_COREDUMP_PIPE names (%p, %h expanded) is
made at start; one byte written to it makes the "driver" stream a GPU core dump into
CUDA_COREDUMP_FILE (an existing FIFO: the agent's), from a thread of the victim itself, as the
real driver's dump thread is. The dump is a file given by the test (MLFX_FAKE_CUDA_DUMP), built
per NVIDIA's public format. Started by victim_serve.serve() when both variables are set.
"""
import os, socket, threading


def _expand(template):
    out, i = "", 0
    while i < len(template):
        c = template[i]
        if c == "%" and i + 1 < len(template):
            i += 1
            out += {"p": str(os.getpid()), "h": socket.gethostname(), "%": "%"}.get(template[i], "%" + template[i])
        else:
            out += c
        i += 1
    return out


def start():
    dump = os.environ.get("MLFX_FAKE_CUDA_DUMP")
    if not dump or os.environ.get("CUDA_ENABLE_USER_TRIGGERED_COREDUMP") != "1":
        return
    pipe = _expand(os.environ["CUDA_COREDUMP_PIPE"])
    os.mkfifo(pipe, 0o600)

    def driver():
        while True:
            with open(pipe, "rb") as p:  # blocks until the agent opens it; a byte asks for a dump
                if not p.read(1):
                    continue
            with open(dump, "rb") as src, open(_expand(os.environ["CUDA_COREDUMP_FILE"]), "wb") as out:
                while True:
                    block = src.read(1 << 20)
                    if not block:
                        break
                    out.write(block)

    threading.Thread(target=driver, daemon=True).start()
