#!/usr/bin/env python3
"""Fails when modules of the server crate import each other in a cycle.

Why: lib.rs promises that dependencies point one way (edge → session → pubsub → topic/protocol);
this keeps it true. Stdlib only, so CI needs nothing beyond python3.

How: the modules are found by following `mod name;` declarations from `src/lib.rs` (the library
crate; `src/main.rs` and its modules are the binary crate, checked on their own). Every
`use crate::…` / `use super::…` / `use self::…` tree and every inline `crate::a::b` path in code
(comments and string literals are skipped) is an edge from the file's module to the deepest
module file the path names (`crate::a::b::C` → `a::b` when `a/b.rs` exists, else `a`).
`super::` inside an inline `mod tests { … }` that stays in the same file is no edge. The crate
root (lib.rs) is left out: it only declares modules and re-exports paths for the binary and tests.
A file-level cycle (two or more modules) is printed with one source line per edge; exit 1.

    .ci/module-cycles.py [SRC_DIR]     check SRC_DIR (default: src/ next to .ci/)
    .ci/module-cycles.py --self-test   check the checker on small trees built in a temp dir
"""

import os
import re
import sys
import tempfile

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def strip(text):
    """Blank out comments, string and char literals, keeping newlines (for line numbers)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append("\n" * text.count("\n", i, j))
            i = j
        elif c == "r" and re.match(r'r#*"', text[i:i + 10]) and not re.match(r"[A-Za-z0-9_]", text[i - 1:i] or " "):
            m = re.match(r'r(#*)"', text[i:])
            end = '"' + m.group(1)
            j = text.find(end, i + m.end())
            j = n if j < 0 else j + len(end)
            out.append(' ""' + "\n" * text.count("\n", i, j))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j + 1
        elif c == "'":
            # A char literal ('x', '\n', '\u{1F600}') or a lifetime ('a): only the former is skipped.
            m = re.match(r"'(\\u\{[0-9a-fA-F]+\}|\\.|[^\\'])'", text[i:])
            if m:
                out.append("' '")
                i += m.end()
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def find_modules(src, root_file):
    """{module path tuple: file} reachable from root_file through `mod name;` declarations."""
    modules = {}

    def visit(path, file, is_dir_owner):
        modules[path] = file
        code = strip(open(file, encoding="utf-8").read())
        base = os.path.dirname(file) if is_dir_owner else os.path.splitext(file)[0]
        for m in re.finditer(r"(?m)^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(" + IDENT + r")\s*;", code):
            name = m.group(1)
            flat = os.path.join(base, name + ".rs")
            nested = os.path.join(base, name, "mod.rs")
            if os.path.exists(flat):
                visit(path + (name,), flat, False)
            elif os.path.exists(nested):
                visit(path + (name,), nested, True)
            else:
                sys.exit(f"{file}: `mod {name};` has no file {flat} or {nested}")

    visit((), os.path.join(src, root_file), True)
    return modules


def use_trees(code):
    """(offset, [path segments]) for every path a `use` declaration imports (groups expanded)."""
    for m in re.finditer(r"\buse\s+([^;]*);", code):
        body = re.sub(r"\s+as\s+" + IDENT, "", m.group(1))
        body = re.sub(r"\s+", "", body)
        for path in expand(body):
            yield m.start(), path


def expand(tree):
    """`a::{b,c::{self,D}}` → [[a,b],[a,c],[a,c,D]]; `as` renames and globs are dropped."""
    if "{" not in tree:
        segs = [s for s in tree.split("::") if s and s != "*"]
        if segs and segs[-1] == "self":
            segs = segs[:-1]
        return [segs] if segs else []
    head, rest = tree.split("{", 1)
    inner = rest[: rest.rfind("}")]
    prefix = [s for s in head.split("::") if s]
    parts, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    parts.append(cur)
    out = []
    for p in parts:
        if not p:
            continue
        if p == "self":
            out.append(prefix)
        else:
            out.extend(prefix + sub for sub in expand(p))
    return [o for o in out if o]


def inline_mod_depth(code, offset):
    """How many inline `mod name { … }` blocks enclose offset."""
    depth, stack = 0, []
    for m in re.finditer(r"\bmod\s+" + IDENT + r"\s*\{|\{|\}", code[:offset]):
        tok = m.group(0)
        if tok == "}":
            if stack and stack.pop():
                depth -= 1
        else:
            is_mod = tok != "{"
            stack.append(is_mod)
            depth += is_mod
    return depth


def resolve(modules, here, segs, code, offset):
    """The module a path points at, or None when it leaves the crate or stays in the file."""
    if not segs:
        return None
    first = segs[0]
    if first == "crate":
        base, rest = (), segs[1:]
    elif first == "self":
        if inline_mod_depth(code, offset):
            return None  # an inline module's own items: same file
        base, rest = here, segs[1:]
    elif first == "super":
        ups = 0
        while ups < len(segs) and segs[ups] == "super":
            ups += 1
        # The first supers climb out of inline modules (`mod tests { use super::*; }`): same file.
        ups -= inline_mod_depth(code, offset)
        if ups <= 0 or ups > len(here):
            return None
        base, rest = here[: len(here) - ups], segs[ups + inline_mod_depth(code, offset):]
    elif here + (first,) in modules:
        base, rest = here, segs  # a child module named without self:: (uniform paths)
    else:
        return None
    path = base
    for s in rest:
        if path + (s,) in modules:
            path = path + (s,)
        else:
            break
    return path


def graph(src, root_file="lib.rs"):
    modules = find_modules(src, root_file)
    edges = {}  # (from, to) -> "file:line"
    for here, file in modules.items():
        code = strip(open(file, encoding="utf-8").read())
        refs = list(use_trees(code))
        for m in re.finditer(r"(?<![A-Za-z0-9_:])crate((?:::" + IDENT + r")+)", code):
            refs.append((m.start(), ["crate"] + m.group(1).split("::")[1:]))
        for m in re.finditer(r"(?<![A-Za-z0-9_:])((?:super::)+" + IDENT + r"(?:::" + IDENT + r")*)", code):
            refs.append((m.start(), m.group(1).split("::")))
        for offset, segs in refs:
            to = resolve(modules, here, segs, code, offset)
            if to is None or to == here or to == () or here == ():
                continue
            line = code.count("\n", 0, offset) + 1
            edges.setdefault((here, to), f"{os.path.relpath(file)}:{line}")
    return modules, edges


def cycles(modules, edges):
    """One concrete cycle per strongly connected component of two or more modules."""
    succ = {m: sorted(t for (f, t) in edges if f == m) for m in modules}
    index, low, on, stack, comps, counter = {}, {}, set(), [], [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in succ[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(set(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(modules):
        if v not in index:
            strong(v)
    found = []
    for comp in comps:
        start = min(comp)
        # Shortest way back to start inside the component (BFS).
        prev, queue = {start: None}, [start]
        while queue:
            v = queue.pop(0)
            for w in succ[v]:
                if w in comp and w == start:
                    path = [v]
                    while prev[path[-1]] is not None:
                        path.append(prev[path[-1]])
                    found.append((list(reversed(path)) + [start], len(comp)))
                    queue = []
                    break
                if w in comp and w not in prev:
                    prev[w] = v
                    queue.append(w)
    return found


def name(path):
    return "crate::" + "::".join(path) if path else "crate"


def check(src, out=sys.stdout):
    status = 0
    for root in ("lib.rs", "main.rs"):
        if not os.path.exists(os.path.join(src, root)):
            continue
        modules, edges = graph(src, root)
        for cyc, size in cycles(modules, edges):
            status = 1
            print(f"module cycle in {os.path.join(src, root)}'s crate ({size} modules tied together):", file=out)
            for a, b in zip(cyc, cyc[1:]):
                print(f"  {name(a)} -> {name(b)}    ({edges[(a, b)]})", file=out)
    return status


def self_test():
    import io

    cases = {
        "cycle through use groups": (1, {
            "lib.rs": "mod a;\nmod b;\n",
            "a.rs": "use crate::b::X;\npub struct Y;\n",
            "b.rs": "use crate::{a::{self, Y}, c};\npub struct X;\n",
        }),
        "cycle through an inline path": (1, {
            "lib.rs": "pub mod a;\npub(crate) mod b;\n",
            "a.rs": "pub fn f() { crate::b::g() }\n",
            "b.rs": "pub fn g() {}\nfn h() { let _ = crate::a::f; }\n",
        }),
        "cycle through super:: in a folder": (1, {
            "lib.rs": "mod x;\n",
            "x/mod.rs": "mod y;\npub struct W;\nfn f() { crate::x::y::Z; }\n",
            "x/y.rs": "use super::W;\npub struct Z;\n",
        }),
        "one-way folder, tests using super::*, comments and strings": (0, {
            "lib.rs": "mod x;\nmod low;\npub use x::y::Z as Renamed;\n",
            "x/mod.rs": "mod y;\n// crate::x::y in a comment is no edge\npub struct W;\n"
                        "fn f(_: y::Z) {}\n",
            "x/y.rs": "use crate::low::L;\npub struct Z;\nconst S: &str = \"crate::x::W\";\n"
                      "fn l<'a>(s: &'a str) -> char { '\"' }\n"
                      "#[cfg(test)]\nmod tests {\n    use super::*;\n    fn t() { let _ = super::Z; }\n}\n",
            "low.rs": "pub struct L;\n",
        }),
        "the binary crate is checked on its own": (1, {
            "lib.rs": "pub mod a;\n",
            "a.rs": "pub fn f() {}\n",
            "main.rs": "mod cli;\nmod run;\n",
            "cli/mod.rs": "use crate::run::go;\n",
            "run.rs": "pub fn go() { crate::cli::x(); }\n",
        }),
    }
    failed = 0
    for title, (want, files) in cases.items():
        with tempfile.TemporaryDirectory() as tmp:
            for rel, text in files.items():
                path = os.path.join(tmp, rel)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w", encoding="utf-8") as f:
                    f.write(text)
            out = io.StringIO()
            got = check(tmp, out)
            ok = got == want
            failed += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {title}: exit {got}, want {want}")
            if not ok or got:
                print("     " + out.getvalue().strip().replace("\n", "\n     "))
    if failed:
        print(f"module-cycles self-test: {failed} case(s) failed")
        return 1
    print("module-cycles self-test: all cases passed")
    return 0


def main():
    args = sys.argv[1:]
    if args == ["--self-test"]:
        return self_test()
    src = args[0] if args else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    status = check(os.path.normpath(src))
    if status == 0:
        print(f"module-cycles: no module cycle in {os.path.normpath(src)}")
    return status


if __name__ == "__main__":
    sys.exit(main())
