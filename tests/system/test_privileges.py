"""Privileges, with a real unprivileged user (``autoglm-test``, created here if absent and left).

- ``record`` run as that user: a clear message that kernel probes need root, and a recording made
  by the /proc sampler alone;
- ``record -- CMD`` as root under sudo semantics (SUDO_UID / SUDO_GID in the environment, what sudo
  sets): the child runs as the invoking user (its own getuid() says so, and so does the recording),
  it is the recorder's direct child (no shell in between; arguments with shell syntax arrive
  verbatim), and the recording is owned by that user and not world-writable;
- a recording path that is a symlink planted by that user is refused, not followed.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from autoglm_trace.analysis.reader import Recording
from autoglm_trace.errors import WriteError
from tests.foreign_user import SYSTEM_PYTHON, can_execute

pytestmark = pytest.mark.root

USER = "autoglm-test"
# What the test user runs must not come from the checkout or its venv (they may sit in a directory
# that user cannot enter): targets are stdlib scripts run by the system interpreter.
PY = SYSTEM_PYTHON


@pytest.fixture(scope="module")
def user() -> tuple[int, int]:
    if os.geteuid() != 0:
        pytest.skip("needs root to create and switch to an unprivileged user")
    try:
        pw = pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
                       check=True, capture_output=True)
        pw = pwd.getpwnam(USER)
    return pw.pw_uid, pw.pw_gid


@pytest.fixture
def shared_dir(user: tuple[int, int]) -> Path:
    """A directory both root and the test user can reach (pytest's tmp_path is root-only)."""
    d = Path(tempfile.mkdtemp(prefix="autoglm-priv-"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SUDO_UID", "SUDO_GID", "SUDO_USER", "SUDO_COMMAND")}
    env.update(extra)
    return env


def _as_user(uid: int, gid: int) -> list[str]:
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]


def test_non_root_records_with_proc_sampler_only(user: tuple[int, int], shared_dir: Path, cli: list[str]) -> None:
    uid, gid = user
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    # The recorder itself needs the venv (pyarrow, numpy): when the checkout is in a directory the
    # user cannot enter, there is nothing to run as that user.
    if not can_execute(uid, gid, sys.executable):
        pytest.skip(f"the venv ({sys.executable}) is inside a directory {USER} cannot enter: "
                    "the recorder cannot run as that user from this checkout")
    probe = subprocess.run([*_as_user(uid, gid), *cli, "--version"], capture_output=True, text=True,
                           env=_env(HOME=str(shared_dir)))
    if probe.returncode != 0:
        pytest.skip(f"the venv is not usable by an unprivileged user here: {probe.stderr.strip()[-200:]}")
    work = shared_dir / "user"
    work.mkdir()
    os.chown(work, uid, gid)
    out = work / "rec"
    r = subprocess.run([*_as_user(uid, gid), *cli, "record", "--no-gpu", "-o", str(out), "--",
                        PY, "-c", "import time; [sum(range(10000)) for _ in range(300)]; time.sleep(0.5)"],
                       capture_output=True, text=True, env=_env(HOME=str(work)), timeout=120, cwd=work)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 0, r.stderr
    assert "root" in r.stderr and "kernel" in r.stderr, r.stderr  # the message, said to the user
    rec = Recording(out)
    assert rec.complete
    k = rec.collectors["kernel"]
    assert k["status"] == "unavailable" and "root" in k["reason"]
    assert rec.collectors["proc"]["status"] == "ok"
    samples = rec.table("proc_samples")
    assert samples.num_rows >= 3
    assert os.stat(out).st_uid == uid
    procs = rec.table("processes")
    assert procs.column("uid").to_pylist()[0] == uid


CHILD = textwrap.dedent(
    """
    import json, os, sys
    json.dump({"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups(),
               "ppid": os.getppid(), "argv": sys.argv[1:]}, open(os.environ["OUT_FILE"], "w"))
    import time; time.sleep(0.5)
    """
)


def test_sudo_child_runs_as_invoking_user_without_shell(user: tuple[int, int], shared_dir: Path,
                                                        cli: list[str]) -> None:
    uid, gid = user
    drop = shared_dir / "drop"
    drop.mkdir()
    os.chown(drop, uid, gid)
    out = shared_dir / "rec"
    tricky = ["$(id -u)", "; touch /tmp/autoglm-pwned", "*", "a b", "`whoami`", "x|y"]
    env = _env(SUDO_UID=str(uid), SUDO_GID=str(gid), SUDO_USER=USER, OUT_FILE=str(drop / "who.json"))
    r = subprocess.run([*cli, "record", "-q", "--json", "--no-gpu", "-o", str(out), "--", PY, "-c", CHILD, *tricky],
                       capture_output=True, text=True, env=env, timeout=120, cwd=shared_dir)
    assert r.returncode == 0, r.stderr
    who = json.loads((drop / "who.json").read_text())
    assert who["uid"] == uid and who["euid"] == uid and who["gid"] == gid
    assert 0 not in who["groups"]
    assert who["argv"] == tricky  # verbatim: no shell interpreted them
    assert not Path("/tmp/autoglm-pwned").exists()
    rec = Recording(out)
    assert who["ppid"] == rec.manifest["recorder"]["pid"]  # exec'd directly by the recorder
    root_rows = [r for r in rec.table("processes").to_pylist() if r["pid"] == rec.target["pid"]]
    assert root_rows and root_rows[0]["uid"] == uid
    assert root_rows[0]["comm"].startswith("python")
    # Owned by the invoking user, nothing world-writable.
    for p in [out, *out.iterdir()]:
        st = os.lstat(p)
        assert (st.st_uid, st.st_gid) == (uid, gid), p
        assert not st.st_mode & stat.S_IWOTH, f"{p} is world-writable ({oct(st.st_mode)})"


def test_planted_symlink_is_not_followed(user: tuple[int, int], shared_dir: Path, cli: list[str]) -> None:
    uid, gid = user
    pub = shared_dir / "pub"
    pub.mkdir()
    os.chmod(pub, 0o1777)  # like /tmp
    victim = shared_dir / "victim"
    victim.mkdir()
    (victim / "keep").write_text("root's file\n")
    # The user plants links where root is about to record: to an existing directory and dangling.
    for name, target in (("rec", victim), ("rec2", shared_dir / "would-be-created")):
        subprocess.run([*_as_user(uid, gid), "ln", "-s", str(target), str(pub / name)], check=True)
        assert os.lstat(pub / name).st_uid == uid
        r = subprocess.run([*cli, "record", "-q", "--no-gpu", "-o", str(pub / name), "--", "true"],
                           capture_output=True, text=True, env=_env(), timeout=120)
        assert "Traceback" not in r.stderr, r.stderr
        assert r.returncode == WriteError.exit_code, r.stderr
        assert "symbolic link" in r.stderr
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1, r.stderr
    assert sorted(p.name for p in victim.iterdir()) == ["keep"]
    assert not (shared_dir / "would-be-created").exists()
