"""Which kernel headers bcc compiles against, and why (doctor prints the reason).

bcc's loader (src/cc/frontends/clang/loader.cc) takes ``$BCC_KERNEL_SOURCE`` when it is set, else
``/lib/modules/$(uname -r)/build`` (+ ``source``), else unpacks ``/sys/kernel/kheaders.tar.xz``.
scripts/kernel-headers.sh never installs a headers package (Debian's depends on a kernel image): it
unpacks the nearest one into a private cache, and :func:`apply` points bcc at it before a compile.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("AUTOGLM_TRACE_HEADERS_CACHE", "/var/cache/autoglm-trace/kernel-headers"))


@dataclass(frozen=True)
class Headers:
    path: str | None  # None: none found
    how: str          # "env", "modules", "kheaders", "cache", "missing"
    detail: str       # one line for doctor / error messages


def _version_key(name: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", name)]


def _cached_trees(cache: Path) -> list[Path]:
    try:
        trees = [d / "tree" for d in cache.iterdir() if (d / "tree" / ".complete").exists()]
    except OSError:
        return []
    return sorted(trees, key=lambda t: _version_key(t.parent.name), reverse=True)


def find(release: str | None = None, cache: Path = CACHE) -> Headers:
    release = release or os.uname().release
    env = os.environ.get("BCC_KERNEL_SOURCE")
    if env:
        ok = (Path(env) / "include").is_dir()
        return Headers(env if ok else None, "env" if ok else "missing",
                       f"BCC_KERNEL_SOURCE={env}" + ("" if ok else " has no include/ directory"))
    build = Path("/lib/modules") / release / "build"
    if (build / "include").exists():
        target = os.path.realpath(build)
        exact = release in os.path.basename(target)
        return Headers(str(build), "modules", f"{build} -> {target}" + (
            "" if exact else " (nearest version: fine for tracepoint programs, which read their layout from tracefs)"))
    if Path("/sys/kernel/kheaders.tar.xz").exists():
        return Headers(None, "kheaders", "in-kernel headers (/sys/kernel/kheaders.tar.xz, CONFIG_IKHEADERS)")
    trees = _cached_trees(cache)
    if trees:
        t = trees[0]
        return Headers(str(t), "cache", f"{t} (unpacked Debian headers {t.parent.name}, nearest to {release}; "
                       "no package installed; bcc is given BCC_KERNEL_SOURCE)")
    return Headers(None, "missing", f"no kernel headers for {release} (bcc compiles programs against them)")


def apply() -> Headers:
    """Point bcc at the cached tree when that is where the headers are (no-op otherwise)."""
    h = find()
    if h.how == "cache" and h.path:
        os.environ["BCC_KERNEL_SOURCE"] = h.path
    return h


def present() -> bool:
    return find().how != "missing"
