"""``record -- CMD``: the exit status says when the target failed, and a SIGKILLed recorder does not
leave its target running (PR_SET_PDEATHSIG set in the child just before exec, after the credential
change that would clear it; the race where the recorder died before that is checked too)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from autoglm_trace.analysis.reader import Recording
from tests.cli_helpers import clean_env, one_error_line


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("script,code,what", [
    ("exit 0", 0, None), ("exit 3", 7, "exited with status 3"), ("kill -SEGV $$", 7, "killed by SIGSEGV"),
])
def test_exit_status_says_the_target_failed(cli: list[str], tmp_path: Path, script: str, code: int,
                                            what: str | None) -> None:
    out = tmp_path / "rec"
    r = subprocess.run([*cli, "record", "-q", "--no-bpf", "--no-gpu", "-o", str(out), "--", "/bin/sh", "-c", script],
                       capture_output=True, text=True, env=clean_env(), timeout=60)
    assert r.returncode == code, r.stderr
    if what:
        assert what in one_error_line(r.stderr)
    assert Recording(out).complete  # the recording is whole either way


def test_sigkilled_recorder_takes_its_target_along(cli: list[str], tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    p = subprocess.Popen([*cli, "record", "-q", "--no-bpf", "--no-gpu", "-o", str(tmp_path / "rec"), "--",
                          "/bin/sh", "-c", f"echo $$ > {pidfile}; exec sleep 60"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=clean_env())
    try:
        deadline = time.monotonic() + 30
        while not (pidfile.exists() and pidfile.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.05)
        target = int(pidfile.read_text())
        assert _alive(target)
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        deadline = time.monotonic() + 5
        while _alive(target) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(target), "the target outlived the SIGKILLed recorder"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        if pidfile.exists() and pidfile.read_text().strip():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_child_of_a_dead_parent_does_not_exec() -> None:
    """The race: the recorder died between fork and prctl; the child sees a new parent and exits."""
    from autoglm_trace.tracer import spawn

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # stands in for the child, with a "parent" that is not its parent
        os.close(r)
        try:
            spawn._die_with_parent(os.getppid() + 1_000_000, spawn._libc())
            os.write(w, b"survived")
        finally:
            os._exit(0)
    os.close(w)
    _, st = os.waitpid(pid, 0)
    data = os.read(r, 100)
    os.close(r)
    assert data == b"" and os.WEXITSTATUS(st) == 126
