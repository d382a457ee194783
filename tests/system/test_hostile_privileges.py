"""Root recording on behalf of a sudo user gives nothing away (a real unprivileged user, ``autoglm-test``).

- The target (running as that user) swaps the recording directory for a symlink to a root-only
  directory while recording: root keeps writing into the directory it created (held by fd), and
  nothing in the symlink's target is written or handed to the user (the issue's reproduction).
- An existing directory given as ``-o`` keeps its owner and mode; only directories the recorder
  created are given away.
- The dropped target gets HOME, USER, LOGNAME and SHELL from the user's passwd entry, as ``sudo -u``.
- Reading a mode-000 recording as that user is a one-line error.

What runs as the user is /bin/sh (never the checkout: it may sit in a 0700 directory); the reading test
forks this process and drops to the user's credentials after every module it needs is imported.
"""

from __future__ import annotations

import io
import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from autoglm_trace.analysis.reader import Recording
from tests.cli_helpers import clean_env
from tests.system.test_privileges import USER, user  # noqa: F401 - the fixture

pytestmark = pytest.mark.root


@pytest.fixture
def sticky_tmp(user: tuple[int, int]) -> Path:  # noqa: F811
    """A world-writable sticky directory like /tmp (root and the user can both create entries)."""
    d = Path(tempfile.mkdtemp(prefix="autoglm-hostile-"))
    os.chmod(d, 0o1777)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _sudo_env(uid: int, gid: int, **extra: str) -> dict[str, str]:
    env = clean_env()
    env.update(SUDO_UID=str(uid), SUDO_GID=str(gid), SUDO_USER=USER, HOME="/root", USER="root",
               LOGNAME="root", SHELL="/bin/bash", **extra)
    return env


def test_symlink_swap_of_the_recording_dir_gives_nothing_away(user: tuple[int, int], sticky_tmp: Path,  # noqa: F811
                                                              cli: list[str]) -> None:
    uid, gid = user
    victim = sticky_tmp / "v"
    victim.mkdir(mode=0o700)
    secret = victim / "secret"
    secret.write_text("x\n")
    os.chmod(secret, 0o600)
    s = sticky_tmp / "s"
    s.mkdir()
    os.chmod(s, 0o1777)
    rec, old = s / "rec", s / "old"
    swap = f"sleep 1.5; mv {rec} {old} && ln -s {victim} {rec}; sleep 1.5"
    r = subprocess.run([*cli, "record", "-q", "--no-bpf", "--no-gpu", "-i", "50", "-o", str(rec), "--",
                        "/bin/sh", "-c", swap], capture_output=True, text=True, env=_sudo_env(uid, gid), timeout=120)
    assert "Traceback" not in r.stderr, r.stderr
    assert rec.is_symlink() and old.is_dir(), "the target did not manage the swap"
    # Nothing in the symlink's target was written or given away.
    st = os.stat(secret)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o600)
    assert os.stat(victim).st_uid == 0 and sorted(p.name for p in victim.iterdir()) == ["secret"]
    # The recording carried on in the directory the recorder created, now at old/, complete.
    got = Recording(old)
    assert got.complete and got.table("proc_samples").num_rows > 0
    for p in [old, *old.iterdir()]:
        assert os.stat(p, follow_symlinks=False).st_uid == uid, p


def test_existing_output_dir_keeps_its_owner_and_mode(user: tuple[int, int], sticky_tmp: Path,  # noqa: F811
                                                      cli: list[str]) -> None:
    uid, gid = user
    out = sticky_tmp / "rootdir"
    out.mkdir(mode=0o700)
    r = subprocess.run([*cli, "record", "-q", "--no-bpf", "--no-gpu", "-o", str(out), "--", "/bin/sh", "-c", "sleep 0.3"],
                       capture_output=True, text=True, env=_sudo_env(uid, gid), timeout=120)
    assert r.returncode == 0, r.stderr
    st = os.stat(out)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o700), "an existing directory was given away"
    assert Recording(out).complete
    created = sticky_tmp / "new" / "rec"
    r = subprocess.run([*cli, "record", "-q", "--no-bpf", "--no-gpu", "-o", str(created), "--", "/bin/sh", "-c", "sleep 0.3"],
                       capture_output=True, text=True, env=_sudo_env(uid, gid), timeout=120)
    assert r.returncode == 0, r.stderr
    st = os.stat(created)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, gid, 0o755)


def test_dropped_target_gets_the_users_environment(user: tuple[int, int], sticky_tmp: Path,  # noqa: F811
                                                   cli: list[str]) -> None:
    uid, gid = user
    pw = pwd.getpwuid(uid)
    drop = sticky_tmp / "env.txt"
    r = subprocess.run([*cli, "record", "-q", "--no-bpf", "--no-gpu", "-o", str(sticky_tmp / "rec"), "--",
                        "/bin/sh", "-c", f'echo "$HOME|$USER|$LOGNAME|$SHELL|$(id -u)" > {drop}'],
                       capture_output=True, text=True, env=_sudo_env(uid, gid), timeout=120)
    assert r.returncode == 0, r.stderr
    assert drop.read_text().strip() == f"{pw.pw_dir}|{pw.pw_name}|{pw.pw_name}|{pw.pw_shell}|{uid}"


def _as_user_in_fork(uid: int, gid: int, argv: list[str]) -> tuple[int, str]:
    """Run ``cli.main(argv)`` in a forked child with the user's credentials (no exec: the code is
    already imported, so the checkout need not be readable by the user)."""
    import autoglm_trace.analysis.diagnosis  # noqa: F401 - everything the commands import lazily
    import autoglm_trace.analysis.oom  # noqa: F401
    import autoglm_trace.analysis.render  # noqa: F401
    import autoglm_trace.analysis.summary  # noqa: F401
    from autoglm_trace.tracer import cli

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        code = 99
        err = io.StringIO()
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            with redirect_stderr(err), redirect_stdout(io.StringIO()):
                code = cli.main(argv)
        except BaseException as e:  # noqa: BLE001 - a traceback for the user
            err.write(f"Traceback: {type(e).__name__}: {e}")
            code = 98
        finally:
            os.write(w, json.dumps([code, err.getvalue()]).encode())
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    code, err = json.loads(data)
    return code, err


@pytest.mark.parametrize("what", ["directory", "manifest", "table"])
def test_mode_000_recording_as_unprivileged_user(user: tuple[int, int], sticky_tmp: Path, what: str) -> None:  # noqa: F811
    from tests.fakes.synthetic import Scenario, write_recording

    uid, gid = user
    rec = sticky_tmp / "rec"
    write_recording(rec, Scenario(kind="clean", duration_s=4, seed=1))
    os.chmod(rec, 0o755)
    for p in rec.iterdir():
        os.chmod(p, 0o644)
    target = {"directory": rec, "manifest": rec / "manifest.json", "table": rec / "proc_samples.arrow"}[what]
    os.chmod(target, 0)
    for argv in (["summary", str(rec)], ["analyze", str(rec)]):
        code, err = _as_user_in_fork(uid, gid, argv)
        assert "Traceback" not in err, err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 3 and len(lines) == 1 and "Permission denied" in lines[0], (argv, code, err)


def test_doctor_as_unprivileged_user(user: tuple[int, int]) -> None:  # noqa: F811
    """tracefs is root-only: doctor as a user says so in its rows instead of a traceback."""
    from autoglm_trace.tracer.commands import doctor

    doctor.run_checks()  # as root first: every lazy import done before dropping privileges
    uid, gid = user
    for argv in (["doctor"], ["doctor", "--json"]):
        code, err = _as_user_in_fork(uid, gid, argv)
        assert "Traceback" not in err, err
        assert code in (0, 1), (code, err)


def _log_line(latency_ms: float) -> str:
    return json.dumps({"end": time.time(), "latency_ms": latency_ms}) + "\n"


def test_latency_log_is_opened_with_the_users_permissions(user: tuple[int, int], sticky_tmp: Path) -> None:  # noqa: F811
    """``open_regular_as``: the user's own files open; a root-only file behind the user's symlink does
    not (the recorder runs as root and would otherwise read it for them); FIFOs stay refused."""
    from autoglm_trace.safefile import NotRegularFile, open_regular, open_regular_as

    uid, gid = user
    mine = sticky_tmp / "mine.jsonl"
    mine.write_text(_log_line(12.0))
    os.chown(mine, uid, gid)
    os.chmod(mine, 0o600)
    secret = sticky_tmp / "secret.jsonl"
    secret.write_text(_log_line(34.0))
    os.chmod(secret, 0o600)
    link = sticky_tmp / "link.jsonl"
    os.symlink(secret, link)
    fifo = sticky_tmp / "fifo"
    os.mkfifo(fifo, 0o666)

    fd = open_regular_as(mine, (uid, gid))
    with os.fdopen(fd, "rb") as f:
        assert b"12.0" in f.read()
    with pytest.raises(PermissionError):
        open_regular_as(link, (uid, gid))
    with pytest.raises(NotRegularFile):
        open_regular_as(fifo, (uid, gid))
    with pytest.raises(FileNotFoundError):
        open_regular_as(sticky_tmp / "absent", (uid, gid))
    os.close(open_regular(link, follow=True))  # root itself still can: the credentials made the difference


def test_record_refuses_a_latency_log_the_user_cannot_read(user: tuple[int, int], sticky_tmp: Path,  # noqa: F811
                                                           cli: list[str]) -> None:
    uid, gid = user
    secret = sticky_tmp / "secret.jsonl"
    secret.write_text(_log_line(34.0))
    os.chmod(secret, 0o600)
    link = sticky_tmp / "link.jsonl"
    os.symlink(secret, link)
    r = subprocess.run([*cli, "record", "-q", "--no-bpf", "--no-gpu", "--latency-log", str(link), "-o",
                        str(sticky_tmp / "rec"), "--", "/bin/true"],
                       capture_output=True, text=True, env=_sudo_env(uid, gid), timeout=120)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode != 0 and len(lines) == 1, r.stderr
    assert "cannot be read by uid" in lines[0] and "Permission denied" in lines[0], lines
    assert "34.0" not in r.stderr and not (sticky_tmp / "rec").exists()


def test_record_tails_the_users_own_latency_log(user: tuple[int, int], sticky_tmp: Path,  # noqa: F811
                                                cli: list[str]) -> None:
    uid, gid = user
    log = sticky_tmp / "lat.jsonl"
    log.write_text("")
    os.chown(log, uid, gid)
    os.chmod(log, 0o600)
    line = _log_line(55.0).strip()
    script = f"sleep 0.6; echo '{line}' >> {log}; sleep 0.8"
    rec = sticky_tmp / "rec"
    r = subprocess.run([*cli, "record", "-q", "--no-bpf", "--no-gpu", "-i", "100", "--latency-log", str(log),
                        "-o", str(rec), "--", "/bin/sh", "-c", script],
                       capture_output=True, text=True, env=_sudo_env(uid, gid), timeout=120)
    assert r.returncode == 0, r.stderr
    spans = Recording(rec).table("spans")
    assert spans.num_rows == 1, spans
