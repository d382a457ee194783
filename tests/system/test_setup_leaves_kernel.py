"""Setting up kernel headers changes nothing the machine boots or runs with.

scripts/kernel-headers.sh runs for real, as root, into an empty private cache (so it downloads the
nearest headers with ``apt-get download`` and unpacks them with ``dpkg -x``). Before and after:
``dpkg -l 'linux-image*'``, every installed package and its version (so no package was installed
or upgraded for the headers: systemd, udev and libsystemd included), the systemd version, and the
contents of /boot and /lib/modules must be identical. Needs the package registry; skips with apt's
own words when it cannot be reached.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "kernel-headers.sh"


def _run(*cmd: str) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    return r.stdout + (f"[exit {r.returncode}] {r.stderr}" if r.returncode else "")


def _tree(root: str) -> list[tuple[str, int, int]]:
    out = []
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files) + dirs:
            p = os.path.join(dirpath, name)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            out.append((p, st.st_size, int(st.st_mtime)))
    return out


def _state() -> dict[str, object]:
    return {
        "linux-image": _run("dpkg", "-l", "linux-image*"),
        "packages": _run("dpkg-query", "-W", "-f=${Package}:${Architecture} ${Version} ${Status}\n"),
        "systemd": _run("dpkg-query", "-W", "-f=${Version}", "systemd"),
        "systemctl": _run("systemctl", "--version").splitlines()[:1] if shutil.which("systemctl") else None,
        "boot": _tree("/boot"),
        "modules": _tree("/lib/modules"),
    }


@pytest.mark.skipif(shutil.which("apt-get") is None or shutil.which("dpkg") is None,
                    reason="not a Debian/Ubuntu host (no apt-get / dpkg)")
def test_header_setup_installs_nothing_and_leaves_boot_alone():
    if os.geteuid() != 0:
        pytest.skip("needs root (the script downloads as root)")
    cache = Path(tempfile.mkdtemp(prefix="autoglm-headers-test-"))
    env = {k: v for k, v in os.environ.items() if k != "BCC_KERNEL_SOURCE"}
    env["AUTOGLM_TRACE_HEADERS_CACHE"] = str(cache)
    try:
        before = _state()
        r = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=600)
        after = _state()
        for key in before:
            assert after[key] == before[key], f"header set-up changed {key}"
        said = r.stderr.strip().splitlines()
        if any("kernel headers: /lib/modules" in ln or "in-kernel" in ln for ln in said):
            return  # this kernel has its own headers: nothing to download, nothing changed
        trees = list(cache.glob("*/tree/.complete"))
        if not trees:
            why = said[-1] if said else f"exit {r.returncode}"
            pytest.skip(f"the package registry could not be reached or has no headers: {why}")
        assert r.returncode == 0, r.stderr[-1000:]
        tree = trees[0].parent
        assert (tree / "include" / "linux" / "kconfig.h").exists()
        assert "linux-image" not in (tree.parent / "packages.txt").read_text()
    finally:
        shutil.rmtree(cache, ignore_errors=True)
