#!/usr/bin/env python3
"""Debian version-matrix chroots: a real python3 + python3-torch of another Debian release.

    chroots.py build [SUITE...]     build the missing chroots (default: all suites)
    chroots.py path SUITE           print the chroot's directory (building it if missing)
    chroots.py missing SUITE...     print the suites not built yet; exit 0 if any, 1 if none
    chroots.py info SUITE           print what the chroot holds (JSON)
    chroots.py run SUITE [--work DIR] -- ARGV...   run ARGV inside (e.g. python3 -c ...)
    chroots.py command SUITE [--work DIR] -- ARGV...   print the shell command line that runs it
                                                   (execs down to ARGV: its pid is the program's)

Each chroot is `debootstrap --variant=minbase --include=python3-torch SUITE DIR MIRROR`, cached
outside the repository in $MLFX_MATRIX_CACHE (default /var/cache/mlfx-matrix, or
~/.cache/mlfx-matrix when that is not writable), one directory per suite named SUITE-KEY, where
KEY hashes everything the build depends on (so a change of the package list rebuilds it). It is
built into a temporary directory and renamed into place only when complete; SUITE-KEY.lock
serialises builders (a second process waits for the first). MIRROR is the Debian archive of this
machine's apt sources ($MLFX_MATRIX_MIRROR overrides it).

Programs run inside through `chroot_command()`: a private mount namespace (so nothing stays
mounted in the cached chroot) with /proc, /sys, /dev, a private /dev/shm and /tmp, the caller's
work directory at /mnt/work and tests/victims at /mnt/victims; the command line execs down to
the program, so the pid of the process started is the pid of the program. Root only.
Python 3 standard library only.
"""
import fcntl, glob, hashlib, json, os, platform, re, shlex, shutil, subprocess, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))
VICTIMS = os.path.normpath(os.path.join(HERE, "..", "victims"))

# Suite -> the Python and torch it ships (major.minor), which the tests check.
SUITES = {
    "bookworm": {"python": "3.11", "torch": "1.13"},
    "trixie": {"python": "3.13", "torch": "2.6"},
    "sid": {"python": "3.14", "torch": "2.14"},
}
VARIANT = "minbase"
PACKAGES = ["python3-torch"]
WORK_MOUNT = "/mnt/work"        # the caller's work directory inside the chroot
VICTIMS_MOUNT = "/mnt/victims"  # tests/victims inside the chroot
INFO_FILE = "mlfx-matrix.json"  # written last, inside the chroot's root
LAYOUT = 1                      # bump when what build() adds to the chroot changes


class ChrootError(Exception):
    pass


# ---- where ----

def cache_root():
    """$MLFX_MATRIX_CACHE, else /var/cache/mlfx-matrix when writable, else ~/.cache/mlfx-matrix."""
    env = os.environ.get("MLFX_MATRIX_CACHE")
    if env:
        return env
    system = "/var/cache/mlfx-matrix"
    try:
        os.makedirs(system, exist_ok=True)
        if os.access(system, os.W_OK | os.X_OK):
            return system
    except OSError:
        pass
    return os.path.join(os.path.expanduser("~"), ".cache", "mlfx-matrix")


def architecture():
    try:
        return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return platform.machine()


def key(suite):
    """Hash of everything the chroot's content depends on (not the mirror: any mirror of the archive will do)."""
    recipe = json.dumps({"suite": suite, "variant": VARIANT, "packages": sorted(PACKAGES),
                         "arch": architecture(), "layout": LAYOUT}, sort_keys=True)
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def check_suite(suite):
    if suite not in SUITES:
        raise ChrootError("unknown suite %r: the matrix has %s" % (suite, ", ".join(SUITES)))


def chroot_dir(suite):
    check_suite(suite)
    return os.path.join(cache_root(), "%s-%s" % (suite, key(suite)))


def is_built(suite):
    d = chroot_dir(suite)
    return os.path.isfile(os.path.join(d, INFO_FILE)) and os.path.exists(os.path.join(d, "usr/bin/python3"))


def info(suite):
    with open(os.path.join(get(suite), INFO_FILE)) as f:
        return json.load(f)


# ---- the mirror, from apt's sources ----

def _one_line_entries(text):
    """deb [options] URI SUITE COMPONENT... lines of a sources.list file."""
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        line = re.sub(r"\[[^\]]*\]", " ", line[4:])
        words = line.split()
        if len(words) >= 3:
            yield {"uris": [words[0]], "suites": [words[1]], "components": words[2:]}


def _deb822_entries(text):
    """Stanzas of a deb822 .sources file (Types/URIs/Suites/Components/Enabled)."""
    for stanza in re.split(r"\n\s*\n", text):
        fields, last = {}, None
        for line in stanza.splitlines():
            if line.startswith("#"):
                continue
            if line[:1] in (" ", "\t") and last:
                fields[last] += " " + line.strip()
            elif ":" in line:
                last, value = line.split(":", 1)
                last = last.strip().lower()
                fields[last] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
            continue
        yield {"uris": fields.get("uris", "").split(), "suites": fields.get("suites", "").split(),
               "components": fields.get("components", "").split()}


def apt_entries(etc="/etc/apt"):
    entries = []
    files = [os.path.join(etc, "sources.list")] + sorted(glob.glob(os.path.join(etc, "sources.list.d", "*.list")))
    for path in files:
        if os.path.isfile(path):
            with open(path, errors="replace") as f:
                entries += list(_one_line_entries(f.read()))
    for path in sorted(glob.glob(os.path.join(etc, "sources.list.d", "*.sources"))):
        with open(path, errors="replace") as f:
            entries += list(_deb822_entries(f.read()))
    return entries


def mirror(etc="/etc/apt"):
    """The Debian main archive of this machine's apt configuration: an entry with component main,
    a plain release suite (no -security/-updates) and a URI that is not the security archive;
    one whose path ends in /debian first."""
    override = os.environ.get("MLFX_MATRIX_MIRROR")
    if override:
        return override
    candidates = []
    for e in apt_entries(etc):
        if "main" not in e["components"] or not any("-" not in s and "/" not in s for s in e["suites"]):
            continue
        for uri in e["uris"]:
            if "security" in uri or not uri.startswith(("http://", "https://", "file:/", "ftp://")):
                continue
            candidates.append(uri)
    if not candidates:
        raise ChrootError("no Debian archive (component main, a release suite) in %s/sources.list{,.d/*.list,.d/*.sources}: "
                          "add one, or set MLFX_MATRIX_MIRROR=URL" % etc)
    candidates.sort(key=lambda u: 0 if u.rstrip("/").endswith("/debian") else 1)
    return candidates[0]


# ---- building ----

def _mounts_under(path):
    """Mount points at or below `path` (deepest first), from /proc/self/mountinfo."""
    path = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == path or point.startswith(path + "/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def remove_tree(path):
    """Removes a (half-built) chroot: anything mounted inside is unmounted first (debootstrap
    mounts /proc and /sys there and may leave them on failure), and rm stays on one file system."""
    if not os.path.lexists(path):
        return
    for point in _mounts_under(path):
        subprocess.run(["umount", "-l", point], capture_output=True)
    if _mounts_under(path):
        raise ChrootError("cannot remove %s: still mounted: %s" % (path, ", ".join(_mounts_under(path))))
    subprocess.run(["rm", "-rf", "--one-file-system", path], check=True)


def _in_chroot(root, argv):
    return subprocess.run(["chroot", root] + argv, capture_output=True, text=True,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"})


def _describe(root, suite, mirror_url, seconds):
    """What the chroot holds: its python and torch (dpkg-query inside, and the interpreter itself)."""
    py = _in_chroot(root, ["/usr/bin/python3", "-c", "import platform, sys; print(platform.python_version()); "
                                                       "print(sys.executable); print(hex(sys.hexversion))"])
    if py.returncode != 0:
        raise ChrootError("the new %s chroot's /usr/bin/python3 does not run: %s" % (suite, py.stderr.strip()))
    version, executable, hexversion = py.stdout.split()
    def package_version(name):
        q = _in_chroot(root, ["dpkg-query", "-W", "-f=${Version}", name])
        return q.stdout.strip() if q.returncode == 0 else None
    torch_package = package_version("python3-torch")
    if not torch_package:
        raise ChrootError("the new %s chroot has no python3-torch (dpkg-query)" % suite)
    # 2.6.0+dfsg-7 -> 2.6.0; 1:2.1.0-1 -> 2.1.0
    torch_version = re.split(r"[+~-]", torch_package.split(":", 1)[-1])[0]
    real_python = os.path.realpath(os.path.join(root, executable.lstrip("/")))
    return {"suite": suite, "key": key(suite), "variant": VARIANT, "packages": PACKAGES,
            "architecture": architecture(), "mirror": mirror_url, "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(seconds, 1),
            "python": {"version": version, "hexversion": hexversion,
                       "executable": "/" + os.path.relpath(real_python, root),
                       "package": "python3", "package_version": package_version("python3")},
            "torch": {"version": torch_version, "package": "python3-torch", "package_version": torch_package}}


def _build(suite, final):
    parent = os.path.dirname(final)
    tmp = os.path.join(parent, ".%s.tmp.%d" % (os.path.basename(final), os.getpid()))
    url = mirror()
    log_path = final + ".build.log"
    print("chroots: building %s in %s from %s (debootstrap, a few minutes; log %s)" % (suite, final, url, log_path),
          file=sys.stderr, flush=True)
    start = time.monotonic()
    try:
        with open(log_path, "w") as log:
            cmd = ["debootstrap", "--variant=" + VARIANT, "--include=" + ",".join(PACKAGES), suite, tmp, url]
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
        if rc != 0:
            with open(log_path, errors="replace") as f:
                tail = "".join(f.readlines()[-15:])
            raise ChrootError("debootstrap of %s from %s failed (exit %d); the end of %s:\n%s"
                              % (suite, url, rc, log_path, tail))
        for point in (WORK_MOUNT, VICTIMS_MOUNT):
            os.makedirs(tmp + point, exist_ok=True)
        description = _describe(tmp, suite, url, time.monotonic() - start)
        with open(os.path.join(tmp, INFO_FILE), "w") as f:
            json.dump(description, f, indent=1)
        if _mounts_under(tmp):
            raise ChrootError("debootstrap left mounts in %s: %s" % (tmp, _mounts_under(tmp)))
        os.rename(tmp, final)
    except BaseException:
        remove_tree(tmp)
        raise
    print("chroots: %s ready in %.0f s: Python %s, torch %s" % (suite, time.monotonic() - start,
          description["python"]["version"], description["torch"]["version"]), file=sys.stderr, flush=True)


def get(suite):
    """The chroot's directory, built first if missing (or left incomplete). Safe to call from
    concurrent processes: one builds, the others wait for it."""
    final = chroot_dir(suite)
    if is_built(suite):
        return final
    if os.geteuid() != 0:
        raise ChrootError("building the %s chroot needs root (debootstrap, chroot)" % suite)
    if not shutil.which("debootstrap"):
        raise ChrootError("debootstrap is not installed: run packaging/setup-deps.sh (or apt-get install debootstrap)")
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    with open(final + ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("chroots: waiting for another process building %s" % final, file=sys.stderr, flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        if is_built(suite):
            return final
        # Whatever is here now was left by a builder that died: start again.
        for stale in glob.glob(os.path.join(parent, ".%s.tmp.*" % os.path.basename(final))) + [final]:
            remove_tree(stale)
        _build(suite, final)
        # Older keys of this suite (another package list) are not used any more.
        for old in glob.glob(os.path.join(parent, suite + "-" + "[0-9a-f]" * 12)):
            if old != final:
                remove_tree(old)
    return final


# ---- running inside ----

# Runs as: sh -c SCRIPT sh ROOT WORK VICTIMS ARGV... inside `unshare --mount --propagation
# private`; every step execs, so the pid stays the program's.
_ENTER = r'''set -e
root=$1 work=$2 victims=$3; shift 3
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs -o mode=1777,nosuid,nodev shm "$root/dev/shm"
mount -t tmpfs -o mode=1777,nosuid,nodev tmp "$root/tmp"
mount --bind "$work" "$root/mnt/work"
mount --bind "$victims" "$root/mnt/victims"
exec chroot "$root" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin HOME=/root LANG=C.UTF-8 "$@"
'''


def chroot_command(root, work, argv, victims=VICTIMS):
    """argv (paths as seen inside) run in the chroot at `root`, with host directory `work` at
    /mnt/work and `victims` at /mnt/victims, as a list for subprocess. Mounts live in the
    process's own mount namespace and vanish with it."""
    return (["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", _ENTER, "sh",
             root, os.path.realpath(work), os.path.realpath(victims)] + list(argv))


def chroot_shell_command(root, work, argv, victims=VICTIMS):
    """The same as one shell command line (for harnesses that run `sh -c "exec ..."`)."""
    return " ".join(shlex.quote(a) for a in chroot_command(root, work, argv, victims))


def python_command(root, work, script_and_args, victims=VICTIMS):
    """The chroot's /usr/bin/python3 running script_and_args (inside paths)."""
    return chroot_command(root, work, ["/usr/bin/python3"] + list(script_and_args), victims)


def inside(host_path, work, victims=VICTIMS):
    """The path inside the chroot of a host path under `work` or `victims`."""
    p = os.path.realpath(host_path)
    for host, mount in ((os.path.realpath(work), WORK_MOUNT), (os.path.realpath(victims), VICTIMS_MOUNT)):
        if p == host or p.startswith(host + "/"):
            return mount + p[len(host):]
    raise ChrootError("%s is neither under the work directory %s nor under %s: not visible in the chroot"
                      % (host_path, work, victims))


# ---- CLI ----

def main(argv):
    if len(argv) < 1 or argv[0] not in ("build", "path", "missing", "info", "run", "command"):
        print(__doc__, file=sys.stderr)
        return 2
    cmd, rest = argv[0], argv[1:]
    try:
        if cmd == "build":
            for suite in rest or list(SUITES):
                print(get(suite))
        elif cmd == "path" and len(rest) == 1:
            print(get(rest[0]))
        elif cmd == "missing" and rest:
            missing = [s for s in rest if not is_built(s)]
            for s in missing:
                print(s)
            return 0 if missing else 1
        elif cmd == "info" and len(rest) == 1:
            print(json.dumps(info(rest[0]), indent=1))
        elif cmd in ("run", "command") and len(rest) >= 2:
            suite, rest = rest[0], rest[1:]
            work = os.getcwd()
            if rest[0] == "--work":
                work, rest = rest[1], rest[2:]
            if rest[:1] == ["--"]:
                rest = rest[1:]
            if not rest:
                raise ChrootError(cmd + ": no command given")
            if cmd == "command":
                print(chroot_shell_command(get(suite), work, rest))
                return 0
            return subprocess.run(chroot_command(get(suite), work, rest)).returncode
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except ChrootError as e:
        print("chroots: " + str(e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
