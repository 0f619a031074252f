#!/usr/bin/env python3
"""Keeps docs/outputs.md honest: JSON that mlfx writes may hold only the members it documents.

    outputs_spec_test.py [--spec docs/outputs.md] [OUTPUT...]

Without OUTPUT: checks the spec itself (every table row well formed, every schema reference
resolves) and every tagged example against its document's table. With OUTPUT, real files too:

    a directory  - `mlfx recover` output (report.json, models/*/architecture.json,
                   tensors/loose.json), `mlfx report` output (report.json), a `mlfx rehost`
                   directory (rehost.json) or a scan directory (*.json of `mlfx scan`)
    DOC=FILE     - FILE as document DOC, e.g. bundle/verify.json=verify.json

For every object member: its path must match a row of the document's table (`*` matches any
member name, `[]` any array element), or a row of the table a `(schema: D)` type points to; its
JSON type must be one the row's type allows. For real outputs, every row whose presence is
"always" must be present in each object that holds it. Values under a "free-form" row are not
looked into. Exit 0 when everything matches; else 1, one line per mismatch.

The table format is specified in docs/outputs.md §2.4.
"""
import json
import os
import re
import sys

TYPE_WORDS = {"string", "integer", "number", "boolean", "null", "object", "array", "any"}


# ---- reading the spec ----------------------------------------------------------------------

class Row:
    def __init__(self, doc, path, type_text, presence, line):
        self.doc, self.path, self.type_text, self.presence, self.line = doc, path, type_text, presence, line
        self.segments = parse_path(path)
        self.required = presence.startswith("always")
        self.free_form = "free-form" in type_text
        self.types = parse_types(type_text)
        self.schemas = parse_schemas(type_text)


def parse_path(path):
    """`a.b[].*` -> [("key", "a"), ("key", "b"), ("item",), ("any",)]; None when malformed."""
    segments, rest = [], path
    while rest:
        if rest.startswith("[]"):
            segments.append(("item",))
            rest = rest[2:]
        else:
            if segments:
                if not rest.startswith("."):
                    return None
                rest = rest[1:]
            m = re.match(r"\*|[A-Za-z_][A-Za-z0-9_]*", rest)
            if not m:
                return None
            segments.append(("any",) if m.group(0) == "*" else ("key", m.group(0)))
            rest = rest[m.end():]
    return segments


def parse_types(type_text):
    """`string or null`, `array of string`, `object (schema: X)` -> {"string", "null"} etc.;
    None (do not check) when a word is not a JSON type."""
    main = type_text.split("(")[0]
    kinds = set()
    for alternative in main.split(" or "):
        words = alternative.split()
        if not words or words[0] not in TYPE_WORDS:
            return None
        kinds.add(words[0])
    return None if "any" in kinds else kinds


def parse_schemas(type_text):
    """`(schema: A | B#p[])` -> [("A", segments), ("B", segments of p[])]."""
    m = re.search(r"schema:\s*([^)]*)\)", type_text.replace("\\|", "|"))
    if not m:
        return []
    out = []
    for ref in m.group(1).split("|"):
        doc, _, sub = ref.strip().partition("#")
        out.append((doc, parse_path(sub) if sub else []))
    return out


def unquote(cell):
    cell = cell.strip()
    return cell[1:-1] if len(cell) >= 2 and cell[0] == "`" and cell[-1] == "`" else None


def split_row(line):
    """The cells of a markdown table row; `|` inside backticks or escaped stays in its cell."""
    cells, cell, in_code, i = [], "", False, 0
    body = line.strip()[1:-1] if line.strip().endswith("|") else line.strip()[1:]
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            cell += body[i:i + 2]
            i += 2
            continue
        if c == "`":
            in_code = not in_code
        if c == "|" and not in_code:
            cells.append(cell)
            cell = ""
        else:
            cell += c
        i += 1
    cells.append(cell)
    return [x.strip() for x in cells]


def read_spec(path):
    """({doc: [Row]}, [(doc, example text, line)], [problems])."""
    rows, examples, problems = {}, [], []
    lines = open(path, encoding="utf-8").read().splitlines()
    fields_doc, example_doc, i = None, None, 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"<!--\s*(fields|example):\s*(\S+)\s*-->", line.strip())
        if m:
            if m.group(1) == "fields":
                fields_doc = m.group(2)
                rows.setdefault(fields_doc, [])
            else:
                example_doc = m.group(2)
            i += 1
            continue
        if example_doc and line.strip().startswith("```"):
            start, body = i + 1, []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                body.append(lines[i])
                i += 1
            examples.append((example_doc, "\n".join(body), start + 1))
            example_doc = None
            i += 1
            continue
        if fields_doc and line.startswith("|"):
            cells = split_row(line)
            field = unquote(cells[0]) if cells else None
            if field is not None:
                if len(cells) != 4:
                    problems.append("%s:%d: a field row has %d cells, not 4" % (path, i + 1, len(cells)))
                else:
                    row = Row(fields_doc, field, cells[1], cells[2], i + 1)
                    if row.segments is None:
                        problems.append("%s:%d: malformed field path `%s`" % (path, i + 1, field))
                    else:
                        rows[fields_doc].append(row)
        elif fields_doc and not line.startswith("|") and line.strip() and rows[fields_doc]:
            fields_doc = None  # the table ended
        i += 1
    for doc, doc_rows in rows.items():
        seen = {}
        for r in doc_rows:
            if r.path in seen:
                problems.append("%s:%d: `%s` is documented twice in %s (line %d)" % (path, r.line, r.path, doc, seen[r.path]))
            seen[r.path] = r.line
            for ref, segments in r.schemas:
                if ref not in rows or segments is None:
                    problems.append("%s:%d: `%s` refers to unknown schema %s" % (path, r.line, r.path, ref))
            if r.types is None and "any" not in r.type_text.split("(")[0].split():
                problems.append("%s:%d: `%s` has type %r, not JSON types joined by 'or'" % (path, r.line, r.path, r.type_text))
    return rows, examples, problems


# ---- checking JSON -------------------------------------------------------------------------

def matches(pattern, segments):
    if len(pattern) != len(segments):
        return False
    for p, s in zip(pattern, segments):
        if p == ("any",):
            if s[0] != "key":
                return False
        elif p != s:
            return False
    return True


def json_kind(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def type_allowed(types, value):
    kind = json_kind(value)
    if kind in types:
        return True
    if kind == "integer" and "number" in types:
        return True
    # A NaN or infinite double is written as null (docs/outputs.md §2.1).
    return kind == "null" and "number" in types


class Checker:
    def __init__(self, rows, strict_presence):
        self.rows, self.strict_presence, self.errors = rows, strict_presence, []

    def check(self, value, doc, where):
        self.walk(value, [(doc, [])], where, "")

    def rows_at(self, contexts, segment):
        """The contexts reached by one more path segment, and the rows that matched it."""
        reached, matched = [], []
        for doc, path in contexts:
            here = path + [segment]
            for r in self.rows.get(doc, []):
                if matches(r.segments, here):
                    matched.append(r)
                    reached.append((doc, here))
                    for ref, sub in r.schemas:
                        reached.append((ref, sub))
        return reached, matched

    def walk(self, value, contexts, where, shown):
        if isinstance(value, list):
            reached, matched = self.rows_at(contexts, ("item",))
            if any(r.free_form for r in matched):
                return
            # An element's path is its array's plus [], whether or not a row names the elements.
            items = [(doc, path + [("item",)]) for doc, path in contexts]
            items += [c for c in reached if c not in items]
            for n, item in enumerate(value):
                self.walk(item, items, where, "%s[%d]" % (shown, n))
            return
        if not isinstance(value, dict):
            return
        self.check_required(value, contexts, where, shown)
        for key, member in value.items():
            name = shown + "." + key if shown else key
            reached, matched = self.rows_at(contexts, ("key", key))
            if not matched:
                self.errors.append("%s: `%s` is not documented (in %s)" %
                                   (where, name, ", ".join(sorted({d for d, _ in contexts}))))
                continue
            typed = [r for r in matched if r.types is not None]
            if typed and not any(type_allowed(r.types, member) for r in typed):
                self.errors.append("%s: `%s` is %s, documented as %s" %
                                   (where, name, json_kind(member), " / ".join(sorted({r.type_text for r in typed}))))
            if not any(r.free_form for r in matched):
                self.walk(member, reached, where, name)

    def check_required(self, obj, contexts, where, shown):
        if not self.strict_presence:
            return
        missing = set()
        for doc, path in contexts:
            for r in self.rows.get(doc, []):
                last = r.segments[-1]
                if r.required and last[0] == "key" and len(r.segments) == len(path) + 1 and \
                        matches(r.segments[:-1], path) and last[1] not in obj:
                    missing.add(last[1])
        for key in sorted(missing):
            name = shown + "." + key if shown else key
            self.errors.append("%s: `%s` is documented as always present but is missing" % (where, name))


# ---- finding outputs -------------------------------------------------------------------------

SCANS = {"neural_cleanse.json": "scan/neural_cleanse.json", "weight_diff.json": "scan/weight_diff.json",
         "differential.json": "scan/differential.json"}


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def documents_in(target):
    """[(doc, file)] for one command-line argument."""
    if "=" in target and not os.path.exists(target):
        doc, _, path = target.partition("=")
        return [(doc, path)]
    if not os.path.isdir(target):
        raise SystemExit("%s is neither a directory nor DOC=FILE" % target)
    found = []
    report = os.path.join(target, "report.json")
    if os.path.isfile(report) and "processes" in load(report):  # a whole-memory recovery's summary
        found.append(("recover/summary.json", report))
        processes = os.path.join(target, "processes")
        for d in sorted(os.listdir(processes)) if os.path.isdir(processes) else []:
            found.extend(documents_in(os.path.join(processes, d)))
    elif os.path.isfile(report):
        found.append(("report/report.json" if "generated_utc" in load(report) else "recover/report.json", report))
        models = os.path.join(target, "models")
        if os.path.isdir(models):
            for d in sorted(os.listdir(models)):
                arch = os.path.join(models, d, "architecture.json")
                if os.path.isfile(arch):
                    found.append(("recover/architecture.json", arch))
        loose = os.path.join(target, "tensors", "loose.json")
        if os.path.isfile(loose):
            found.append(("recover/loose.json", loose))
    if os.path.isfile(os.path.join(target, "rehost.json")):
        found.append(("rehost/rehost.json", os.path.join(target, "rehost.json")))
    for name, doc in SCANS.items():
        if os.path.isfile(os.path.join(target, name)):
            found.append((doc, os.path.join(target, name)))
    if not found:
        raise SystemExit("%s holds no output of mlfx that docs/outputs.md specifies" % target)
    return found


def main(argv):
    here = os.path.dirname(os.path.abspath(__file__))
    spec = os.path.normpath(os.path.join(here, "..", "..", "docs", "outputs.md"))
    targets = []
    i = 0
    while i < len(argv):
        if argv[i] == "--spec" and i + 1 < len(argv):
            spec = argv[i + 1]
            i += 2
            continue
        if argv[i] in ("-h", "--help"):
            print(__doc__)
            return 0
        targets.append(argv[i])
        i += 1

    rows, examples, problems = read_spec(spec)
    if not rows:
        problems.append("%s has no field tables (<!-- fields: DOC --> before a table)" % spec)
    examples_checker = Checker(rows, strict_presence=False)
    for doc, text, line in examples:
        if doc not in rows:
            problems.append("%s:%d: example of unknown document %s" % (spec, line, doc))
            continue
        try:
            value = json.loads(text)
        except ValueError as e:
            problems.append("%s:%d: example is not JSON: %s" % (spec, line, e))
            continue
        examples_checker.check(value, doc, "%s:%d (example of %s)" % (spec, line, doc))
    problems += examples_checker.errors

    outputs_checker = Checker(rows, strict_presence=True)
    checked = 0
    for target in targets:
        for doc, path in documents_in(target):
            if doc not in rows:
                problems.append("%s: no table for document %s in %s" % (path, doc, spec))
                continue
            try:
                value = load(path)
            except (OSError, ValueError) as e:
                problems.append("%s: cannot read JSON: %s" % (path, e))
                continue
            outputs_checker.check(value, doc, path)
            checked += 1
    problems += outputs_checker.errors

    for p in problems:
        print(p)
    if problems:
        print("FAILED: %d mismatch(es) between the outputs and %s" % (len(problems), spec))
        return 1
    print("ok: %d fields in %d documents, %d examples, %d output file(s) match %s" %
          (sum(len(v) for v in rows.values()), len(rows), len(examples), checked, spec))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
