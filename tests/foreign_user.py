"""What a test needs to run something as another user.

The checkout may sit in a directory that user cannot enter (a 0700 home, ``mktemp -d``), and so
does its venv: nothing such a test runs as that user may come from either. The system interpreter
(/usr/bin/python3: Debian's, which sees Debian's packages but not the project's dependencies) runs
scripts that need only the standard library, and :func:`package_copy` gives them the package's
sources from a world-readable directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = "/usr/bin/python3"


@contextmanager
def world_dir(prefix: str = "autoglm-user-") -> Iterator[Path]:
    """A fresh directory under the system temp dir that every user can enter and read."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp" if os.path.isdir("/tmp") else None))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def can_execute(uid: int, gid: int, path: str) -> bool:
    """Whether that user can execute ``path`` (every directory above it included)."""
    r = subprocess.run(["/usr/bin/test", "-x", path], user=uid, group=gid, extra_groups=[],
                       capture_output=True, timeout=10)
    return r.returncode == 0


def package_copy(dest: Path) -> Path:
    """The package's sources, laid out as installed (pyproject's package-dir), under ``dest``,
    world-readable; put the returned directory first on sys.path."""
    conf = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    root = dest / "site"
    for pkg, src in sorted(conf.items(), key=lambda kv: kv[0].count(".")):
        target = root.joinpath(*pkg.split("."))
        if not target.exists():
            shutil.copytree(REPO / src, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for p in [root, *root.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    return root
