#!/usr/bin/env python3
"""A victim for test_mlfx_mem_vm.py, run inside the VM lab guest (root): memory whose physical
frames the test knows, so it can check what /dev/mlfx_mem returns for them.

    guest_victim.py OUT_DIR PAGES TOKEN

Writes to OUT_DIR (the lab's /mnt/out):
  pattern_pfns.txt  PAGES locked pages, page i = page_content(TOKEN, i); one hex PFN a line
  secret_pfns.txt   pages of a memfd_secret mapping (taken out of the kernel's direct map), or
                    the line "unsupported ERRNO" when the kernel has no secret memory
  poison_pfns.txt   one page soft-poisoned with madvise(MADV_HWPOISON), or "unsupported ERRNO"
  ready             last, when all of the above are in place
then sleeps until killed, keeping everything mapped.
"""
import ctypes
import mmap
import os
import struct
import sys
import time

PAGE = os.sysconf("SC_PAGE_SIZE")
SYS_MEMFD_SECRET = 447  # x86-64
MADV_HWPOISON = 100


_RAMP = bytes(range(256)) * (PAGE // 256 + 1)


def page_content(token: bytes, index: int) -> bytes:
    """Page INDEX of the pattern: TOKEN (at the page start, what scan counts), the index, then
    a byte ramp shifted by the index, so that every page differs."""
    head = token + struct.pack("<Q", index)
    shift = index % 256
    return head + _RAMP[shift + len(head):shift + PAGE]


def pfns_of(buf_address: int, pages: int):
    """Frame numbers of mapped pages, from /proc/self/pagemap (root sees them)."""
    found = []
    with open("/proc/self/pagemap", "rb") as f:
        for i in range(pages):
            f.seek((buf_address // PAGE + i) * 8)
            entry = struct.unpack("<Q", f.read(8))[0]
            if not entry >> 63 & 1:
                raise SystemExit(f"page {i} of the victim is not present")
            found.append(entry & ((1 << 55) - 1))
    return found


def address_of(m: mmap.mmap) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(m))


def write_lines(path, lines):
    with open(path, "w") as f:
        f.write("".join(f"{line}\n" for line in lines))


def main(out_dir, pages, token):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]

    pattern = mmap.mmap(-1, pages * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for i in range(pages):
        pattern[i * PAGE:(i + 1) * PAGE] = page_content(token, i)
    base = address_of(pattern)
    if libc.mlock(ctypes.c_void_p(base), ctypes.c_size_t(pages * PAGE)) != 0:
        raise SystemExit(f"mlock: {os.strerror(ctypes.get_errno())}")
    write_lines(os.path.join(out_dir, "pattern_pfns.txt"), [f"{p:x}" for p in pfns_of(base, pages)])

    fd = libc.syscall(SYS_MEMFD_SECRET, 0)
    if fd < 0:
        write_lines(os.path.join(out_dir, "secret_pfns.txt"), [f"unsupported {ctypes.get_errno()}"])
    else:
        os.ftruncate(fd, 4 * PAGE)
        secret = mmap.mmap(fd, 4 * PAGE)
        secret[:] = b"S" * (4 * PAGE)
        write_lines(os.path.join(out_dir, "secret_pfns.txt"),
                    [f"{p:x}" for p in pfns_of(address_of(secret), 4)])

    poison = mmap.mmap(-1, PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    poison[:] = b"P" * PAGE
    poison_address = address_of(poison)
    poison_pfn = pfns_of(poison_address, 1)[0]
    if libc.madvise(poison_address, PAGE, MADV_HWPOISON) != 0:
        write_lines(os.path.join(out_dir, "poison_pfns.txt"), [f"unsupported {ctypes.get_errno()}"])
    else:
        write_lines(os.path.join(out_dir, "poison_pfns.txt"), [f"{poison_pfn:x}"])
        # Never touch `poison` again: that would be SIGBUS.

    open(os.path.join(out_dir, "ready"), "w").close()
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3].encode())
