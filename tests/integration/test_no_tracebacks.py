"""Environments that used to end in a traceback are one-line errors: stdout on a full device
(/dev/full), a path component longer than NAME_MAX (255) for every path option, ``--window 1e12``.
(``doctor`` and a mode-000 recording read as an unprivileged user: tests/system/test_hostile_privileges.py.)"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.cli_helpers import clean_env, one_error_line
from tests.fakes.synthetic import Scenario, write_recording

LONG = "a" * 300


@pytest.fixture(scope="module")
def rec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("nt") / "rec"
    write_recording(p, Scenario(kind="cpu", duration_s=8, seed=4))
    return p


def _run(cli: list[str], *args: str, stdout: object = subprocess.PIPE) -> subprocess.CompletedProcess:
    return subprocess.run([*cli, *args], stdout=stdout, stderr=subprocess.PIPE, text=True, env=clean_env(),
                          timeout=120)


@pytest.mark.parametrize("argv", [
    ["summary", "REC"], ["summary", "REC", "--json"], ["analyze", "REC"], ["analyze", "REC", "--json"],
    ["oom", "REC"], ["diff", "REC", "REC"], ["doctor"], ["doctor", "--json"], ["--help"], ["--version"],
    ["record", "--print-bpf", "--host"],
], ids=lambda a: " ".join(a))
def test_stdout_on_dev_full(cli: list[str], rec: Path, argv: list[str]) -> None:
    with open("/dev/full", "w") as full:
        r = _run(cli, *[str(rec) if a == "REC" else a for a in argv], stdout=full)
    assert r.returncode == 1, r.stderr
    assert "No space left on device" in one_error_line(r.stderr)


@pytest.mark.parametrize("argv", [
    ["summary", "TMP/LONG"], ["oom", "TMP/LONG"], ["diff", "REC", "TMP/LONG"], ["analyze", "TMP/LONG"],
    ["analyze", "REC", "--latency", "TMP/LONG"], ["report", "REC", "-o", "TMP/LONG"],
    ["report", "REC", "-o", "TMP/LONG/r.html"], ["export", "REC", "--perfetto", "TMP/LONG"],
    ["record", "-q", "--no-bpf", "--no-gpu", "-o", "TMP/LONG", "--", "/bin/true"],
    ["record", "-q", "--no-bpf", "--no-gpu", "-o", "TMP/LONG/x", "--", "/bin/true"],
    ["record", "-q", "--no-bpf", "--no-gpu", "-o", "TMP/r", "--latency-log", "TMP/LONG", "--", "/bin/true"],
    ["record", "-q", "--no-bpf", "--no-gpu", "-o", "TMP/r", "--", "TMP/LONG"],
    ["record", "-q", "--no-bpf", "--no-gpu", "--ring", "5m", "-d", "1", "-o", "TMP/LONG"],
], ids=lambda a: " ".join(a).replace(LONG, "LONG"))
def test_path_component_over_255(cli: list[str], rec: Path, tmp_path: Path, argv: list[str]) -> None:
    args = [a.replace("TMP", str(tmp_path)).replace("LONG", LONG) if a != "REC" else str(rec) for a in argv]
    r = _run(cli, *args)
    assert r.returncode not in (0,), r.stderr
    one_error_line(r.stderr)


def test_window_1e12_is_a_usage_error(cli: list[str], rec: Path) -> None:
    r = _run(cli, "analyze", str(rec), "--window", "1e12")
    assert r.returncode == 2 and "--window" in one_error_line(r.stderr)
