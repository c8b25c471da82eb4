"""Type-check the package with mypy ([tool.mypy] in pyproject.toml): python scripts/typecheck.py [mypy args].

The repository is not laid out as the package it installs: ``findial.training`` is ``training/``,
``findial.data`` is ``data/`` ([tool.setuptools.package-dir]), and the editable install maps the names with
an import hook that mypy does not run. So this builds the installed layout as symlinks under
``build/typecheck/<hash of the links>/findial`` (a new file in findial/ makes a new one), runs mypy on it there
(its cache in ``build/typecheck/.mypy_cache``), and writes its report with the repository's paths
(``findial/training/tasks.py`` -> ``training/tasks.py``).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYOUT = REPO / "build" / "typecheck"  # build/ is git-ignored; mypy's cache lands here too
PACKAGE = "findial"


def package_dirs(pyproject: Path = REPO / "pyproject.toml") -> dict[str, Path]:
    """Import name -> source directory, from [tool.setuptools.package-dir]."""
    config = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    return {name: REPO / path for name, path in config["tool"]["setuptools"]["package-dir"].items()}


def layout_links(dirs: dict[str, Path]) -> list[tuple[str, Path]]:
    """``(path inside the layout, what it links to)``: the top package's files and one link per subpackage."""
    links = [(f"{PACKAGE}/{e.name}", e) for e in sorted(dirs[PACKAGE].iterdir()) if e.name != "__pycache__"]
    for name, source in sorted(dirs.items()):
        parts = name.split(".")
        if name == PACKAGE:
            continue
        parent = dirs.get(".".join(parts[:-1]))
        if parent is not None and source == parent / parts[-1]:
            continue  # already inside its parent's directory (findial.data.kb is data/kb)
        link = "/".join(parts)
        if any(existing == link for existing, _ in links):
            raise SystemExit(f"typecheck: {name} ({source}) would shadow findial/{link}")
        links.append((link, source))
    return links


def build_layout(dirs: dict[str, Path], root: Path = LAYOUT) -> Path:
    """The installed layout as links under ``root/<key>/findial``, the key a hash of the links: a run never
    changes a layout another run (another test session in the same tree) is reading."""
    links = layout_links(dirs)
    key = hashlib.sha256(repr([(a, str(b)) for a, b in links]).encode()).hexdigest()[:12]
    target = root / key
    if (target / PACKAGE).is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    for link, source in links:
        (tmp / link).parent.mkdir(parents=True, exist_ok=True)
        (tmp / link).symlink_to(source, target_is_directory=source.is_dir())
    try:
        os.rename(tmp, target)
    except OSError:  # another run built the same layout first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def repo_paths(report: str, dirs: dict[str, Path]) -> str:
    """mypy's ``findial/<sub>/...`` paths as the repository's ``<sub>/...``."""
    subs = {name.split(".")[1]: src for name, src in dirs.items() if name.count(".") == 1}
    pattern = re.compile(rf"^{PACKAGE}/({'|'.join(map(re.escape, subs))})/", re.MULTILINE)
    report = pattern.sub(lambda m: f"{subs[m.group(1)].relative_to(REPO)}/", report)
    return report


def main(argv: list[str]) -> int:
    dirs = package_dirs()
    root = build_layout(dirs)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(REPO / "pyproject.toml"),
            "--cache-dir",
            str(LAYOUT / ".mypy_cache"),
            *argv,
        ],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, "MYPY_FORCE_COLOR": "0"},
    )
    sys.stdout.write(repo_paths(done.stdout, dirs))
    sys.stderr.write(done.stderr)
    return done.returncode


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
