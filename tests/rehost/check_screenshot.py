"""Checks a headless-Chromium screenshot of a mlfx report: that the page rendered, not just
that a file was written.

    /usr/bin/python3 check_screenshot.py SHOT.png alert|clear

Decodes the PNG itself (zlib + the five row filters; 8-bit RGB or RGBA) and requires:
  - the header bar (#1f3a5f) across the top of the page;
  - the verdict banner in the expected colour (#b3261e alert, #1e7b34 clear), a wide block;
  - the reversed-trigger pictures: large areas of black, which only they draw on this page;
  - for alert, a flagged row's highlight (#fbe3e1).
"""
import struct, sys, zlib


def decode(path):
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and ctype in (2, 6) and interlace == 0, "unsupported PNG layout"
            bpp = 3 if ctype == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1: line[i] = (line[i] + a) & 255
            elif f == 2: line[i] = (line[i] + b) & 255
            elif f == 3: line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, bpp, rows


def count(rows, bpp, rgb, tol=6, y0=0, y1=None):
    n = 0
    for line in rows[y0:y1]:
        for i in range(0, len(line), bpp):
            if abs(line[i] - rgb[0]) <= tol and abs(line[i + 1] - rgb[1]) <= tol and abs(line[i + 2] - rgb[2]) <= tol:
                n += 1
    return n


def main():
    path, verdict = sys.argv[1], sys.argv[2]
    w, h, bpp, rows = decode(path)
    problems = []
    if count(rows, bpp, (0x1f, 0x3a, 0x5f), y1=40) < w * 20:
        problems.append("no header bar at the top")
    banner = (0xb3, 0x26, 0x1e) if verdict == "alert" else (0x1e, 0x7b, 0x34)
    if count(rows, bpp, banner, y1=300) < w * 25:
        problems.append("no %s verdict banner near the top" % verdict)
    black = count(rows, bpp, (0, 0, 0), tol=4)
    if black < 20 * 96 * 96 // 2:
        problems.append("reversed-trigger pictures not rendered (%d black pixels)" % black)
    if verdict == "alert" and count(rows, bpp, (0xfb, 0xe3, 0xe1), tol=3) < 2000:
        problems.append("no flagged row highlighted")
    if problems:
        print("screenshot check FAILED: " + "; ".join(problems))
        sys.exit(1)
    print("screenshot ok: %dx%d, %d black pixels of trigger pictures" % (w, h, black))


if __name__ == "__main__":
    main()
