#!/usr/bin/env python3
"""The two products stay siblings over protocol/ (docs/design.md, "Two products over one protocol").

From the compiler's own dependency records (`ninja -t deps`), for every object built from a
source under agent/, analyzer/ or protocol/: no header it read lies under a folder it must not
see. Header names alone cannot tell (both products have a cli/command.h); the dependency
records name the real files.

usage: product_boundaries_test.py BUILD_DIR SOURCE_DIR
"""
import os
import subprocess
import sys

FORBIDDEN = {
    "agent": ["analyzer"],
    "analyzer": ["agent"],
    "protocol": ["agent", "analyzer"],
}


def main():
    build, source = (os.path.realpath(p) for p in sys.argv[1:3])
    out = subprocess.run(["ninja", "-C", build, "-t", "deps"], check=True, capture_output=True, text=True).stdout
    checked, violations = 0, []
    current = None
    for line in out.splitlines():
        if line and not line.startswith(" "):
            current = None
            obj = line.split(":")[0]
            continue
        dep = line.strip()
        if not dep:
            continue
        path = os.path.realpath(os.path.join(build, dep))
        rel = os.path.relpath(path, source)
        if current is None:  # the first dependency is the source file itself
            top = rel.split(os.sep)[0]
            current = top if top in FORBIDDEN else ""
            if current:
                checked += 1
            continue
        if current and rel.split(os.sep)[0] in FORBIDDEN[current]:
            violations.append(f"{obj}: a {current}/ object includes {rel}")
    if checked == 0:
        print("no objects of agent/, analyzer/ or protocol/ in the dependency records: build first")
        return 1
    for v in violations:
        print(v)
    print(f"{checked} objects checked, {len(violations)} crossing(s)")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
