#!/usr/bin/env python3
"""Fails when a tracked file of the repository (the argument, default: the current folder)
refers to a path outside it; `--self-test` checks that it catches one.

A relative reference (`../name…`) passes when, resolved from the file's folder or from one of its
parent folders inside the repository (code resolves from its crate, scripts from the root), it
names something the repository holds. An absolute path into the folder around the repository
never passes. The one exception: the benchmarks may compare with the reference's step timer in
`../shared/bench` where it exists.
"""
import re
import subprocess
import sys
import tempfile
from pathlib import Path

RELATIVE = re.compile(r"(?<![\w.])((?:\.\./)+)([\w][\w.-]*)")
SELF = Path(__file__).resolve()


def allowed(rel: str, reference: str) -> bool:
    return rel.startswith("benches/") and reference.lstrip("./").startswith("shared/bench")


def inside(root: Path, path: Path) -> bool:
    return path == root or root in path.parents


def resolves_inside(root: Path, file: Path, ups: str, name: str) -> bool:
    base = file.parent
    while inside(root, base):
        target = (base / ups / name).resolve()
        if inside(root, target) and target.exists():
            return True
        base = base.parent
    return False


def problems(root: Path) -> list[str]:
    files = subprocess.check_output(["git", "ls-files", "-z"], cwd=root).split(b"\0")
    outside = str(root.parent).rstrip("/") + "/"
    found = []
    for rel in filter(None, (f.decode() for f in files)):
        path = root / rel
        if path.resolve() == SELF:
            continue  # names the patterns it looks for
        try:
            text = path.read_bytes().decode("utf-8")
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue  # binary files (weights, audio) name no paths
        for n, line in enumerate(text.splitlines(), 1):
            for m in RELATIVE.finditer(line):
                ups, name = m.group(1), m.group(2)
                reference = line[m.start():].split()[0]
                if not allowed(rel, reference) and not resolves_inside(root, path, ups, name):
                    found.append(f"{rel}:{n}: `{m.group(0)}` is outside the repository")
            if outside != "/" and outside in line and str(root) not in line:
                found.append(f"{rel}:{n}: absolute path into {outside}")
    return found


def self_test() -> None:
    """The check must catch a reference out of a crate and pass one within the repository."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "repo"
        (root / "node" / "tests").mkdir(parents=True)
        (root / "fixtures").mkdir()
        (root / "fixtures" / "README.md").write_text("fixtures\n")
        (root / "node" / "tests" / "a.rs").write_text('let f = "../fixtures/x";\n')
        (root / "node" / "tests" / "b.rs").write_text('let f = "../../shared/fixtures/x";\n')
        subprocess.run(["git", "init", "-q", str(root)], check=True)
        subprocess.run(["git", "add", "."], cwd=root, check=True)
        found = problems(root)
        assert len(found) == 1 and found[0].startswith("node/tests/b.rs:1"), found


def main() -> int:
    if sys.argv[1:] == ["--self-test"]:
        self_test()
        print("check-paths self-test passed")
        return 0
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
    found = problems(root)
    for p in found:
        print(p, file=sys.stderr)
    if found:
        print(f"{len(found)} reference(s) to paths outside the repository", file=sys.stderr)
        return 1
    print("every path the project names is inside the repository")
    return 0


if __name__ == "__main__":
    sys.exit(main())
