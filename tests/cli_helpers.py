"""Helpers shared by the tests that run the CLI as a user would."""

from __future__ import annotations

import os

from autoglm_trace.analysis.reader import Recording


def clean_env() -> dict[str, str]:
    """The environment for a recorder run as root-as-itself: a SUDO_UID inherited from `sudo make test`
    would make the target drop privileges (tested on purpose in tests/system/test_privileges.py)."""
    env = {k: v for k, v in os.environ.items() if k not in ("SUDO_UID", "SUDO_GID", "SUDO_USER")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def one_error_line(stderr: str) -> str:
    """The single `autoglm-trace: error:` line of a failed command (and no traceback)."""
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    errs = [ln for ln in lines if ln.startswith("autoglm-trace: error:")]
    assert len(errs) == 1, stderr
    return errs[0]


def read_all(rec: Recording) -> dict[str, int]:
    """Read every table fully (the reader raises on anything it cannot read)."""
    return {name: rec.table(name).num_rows for name in rec.table_names}
