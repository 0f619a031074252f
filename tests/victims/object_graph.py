"""A pure-Python victim (no torch) for the CPython object-model tests: instances of `Probe`
whose attributes cover every dict layout an interpreter uses (shared-key values, inline
values, a materialized __dict__, combined tables of every index width, general keys, an
OrderedDict reordered with move_to_end) and every plain value type (str of each character
size, int of every size and sign, bool, float with non-finite values, None, tuples, lists).

    PYTHON object_graph.py GROUND_TRUTH_DIR

Runs on CPython 3.6 and later. Writes GROUND_TRUTH_DIR/truth.json (what each probe holds, in
the analyzer's JSON conventions: tuples as lists, ints of 60 bits or more as decimal strings,
non-finite floats as "nan"/"inf"/"-inf"), then GROUND_TRUTH_DIR/ready, and waits until
GROUND_TRUTH_DIR/stop appears.
"""
import collections, gc, json, math, os, sys, time


class Probe:
    def __init__(self, name):
        self.name = name


def plain(v):
    """The JSON the analyzer gives for a plain value (ObjectReader::plain_value)."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, int):
        return str(v) if abs(v) >= 1 << 60 else v
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return v
    if isinstance(v, (tuple, list)):
        return [plain(x) for x in v]
    raise TypeError(type(v))


def make_probes():
    probes = []

    # Shared-key values in the class's cached keys (3.11+: values without a dict; 3.13: inline).
    p = Probe("values")
    p.ascii = "hello"
    p.latin1 = "caf\xe9"
    p.ucs2 = "\u65e5\u672c\u8a9e"
    p.ucs4 = "emoji \U0001F600!"
    p.zero, p.small, p.negative = 0, 7, -12345
    p.big = 2 ** 62 + 3
    p.huge_negative = -(2 ** 100) - 1
    p.yes, p.no, p.nothing = True, False, None
    p.real, p.not_a_number, p.infinite = 3.25, float("nan"), float("-inf")
    p.nested = (1, ("two", [3.5, None]), [])
    probes.append(p)

    # The same names in another order: a second instance of the class (still shared keys, its
    # own insertion order) and one whose __dict__ was asked for (a real dict object).
    q = Probe("reordered")
    q.nested, q.small, q.ascii = [9], 8, "world"
    probes.append(q)
    r = Probe("materialized")
    r.ascii, r.small = "dict", 1
    r.__dict__["added_through_dict"] = 2.5
    probes.append(r)

    # A deleted attribute (a hole in the entries), then new ones.
    d = Probe("deleted")
    d.a, d.b, d.c = 1, 2, 3
    del d.b
    d.e = "after"
    probes.append(d)

    # Dicts held by a probe: combined tables with 1-, 2- and 4-byte indices, general (non-str)
    # keys, an OrderedDict reordered.
    h = Probe("dicts")
    h.tiny = {"x": 1, "y": "two"}
    h.wide = {"k%03d" % i: i for i in range(300)}          # > 255 slots: 2-byte indices
    h.huge = {"n%06d" % i: i for i in range(50000)}         # > 65535 slots: 4-byte indices
    h.general = {1: "one", 2.5: "two and a half", "three": 3}
    od = collections.OrderedDict((k, i) for i, k in enumerate("abcdef"))
    od.move_to_end("b")
    od.move_to_end("e", last=False)
    h.ordered = od
    probes.append(h)

    # Many attributes: past the shared-keys limit the instance gets a combined dict.
    m = Probe("many")
    for i in range(40):
        setattr(m, "attr%02d" % i, i * i)
    probes.append(m)
    return probes


def truth(probes):
    out = {}
    for p in probes:
        attrs = {}
        dicts = {}
        for k, v in vars(p).items():
            if isinstance(v, dict):
                dicts[k] = [[plain(a), plain(b)] for a, b in v.items()]
            else:
                attrs[k] = plain(v)
        out[p.name] = {"attributes": attrs, "order": list(vars(p).keys()), "dicts": dicts}
    return out


def main():
    gt = sys.argv[1]
    probes = make_probes()
    # The truth is computed without touching the probes' __dict__ (vars() would materialize
    # it): from a copy made the same way as the originals.
    shadow = make_probes()
    data = {"version": list(sys.version_info[:3]), "hexversion": sys.hexversion, "probes": truth(shadow)}
    gc.collect()
    with open(os.path.join(gt, "truth.json"), "w") as f:
        json.dump(data, f)
    with open(os.path.join(gt, "ready"), "w") as f:
        f.write(str(os.getpid()))
    while not os.path.exists(os.path.join(gt, "stop")):
        time.sleep(0.1)
    probes.clear()


if __name__ == "__main__":
    main()
