"""Shared fixtures and the capability checks behind the root / bpf / gpu markers.

Tests that need a capability skip with the exact reason only where it is truly absent; CI runs as
root with BPF working, so there they all run. The session footer prints how many ran / skipped.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def autoglm_trace_cmd() -> list[str]:
    exe = VENV_BIN / "autoglm-trace"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("autoglm-trace")
    return [found] if found else [sys.executable, "-m", "autoglm_trace.tracer.cli"]


@functools.lru_cache(maxsize=1)
def bpf_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (BPF)"
    try:
        from bcc import BPF
    except Exception as e:  # noqa: BLE001
        return f"bcc not importable: {e}"
    try:
        from autoglm_trace.probes import headers

        headers.apply()
        b = BPF(text="int f(void *ctx) { return 0; }", cflags=["-w"])
        b.load_func("f", BPF.SOCKET_FILTER)
        b.cleanup()
    except Exception as e:  # noqa: BLE001
        return f"bcc cannot compile/load programs here: {str(e).strip().splitlines()[-1:]}"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("root") and os.geteuid() != 0:
            item.add_marker(pytest.mark.skip(reason="needs root"))
        if item.get_closest_marker("bpf"):
            reason = bpf_unavailable_reason()
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))
        if item.get_closest_marker("gpu"):
            try:
                import pynvml

                pynvml.nvmlInit()
                n = pynvml.nvmlDeviceGetCount()
                pynvml.nvmlShutdown()
                if n == 0:
                    raise RuntimeError("no devices")
            except Exception as e:  # noqa: BLE001
                item.add_marker(pytest.mark.skip(reason=f"no NVIDIA GPU / driver here: {e}"))


@pytest.fixture
def cli() -> list[str]:
    return autoglm_trace_cmd()
