"""Errors that reach the user as one line and an exit code (never a traceback).

Every subcommand's ``main(argv) -> int`` lets these propagate to ``cli.entry``, which prints
``autoglm-trace: error: <message>`` on stderr and exits with ``exit_code``.
"""

from __future__ import annotations


class TraceError(Exception):
    """Base of the errors a user can cause; the message is the whole explanation."""

    exit_code = 1


class UsageError(TraceError):
    """Bad arguments (argparse uses 2 as well)."""

    exit_code = 2


class RecordingError(TraceError):
    """A path that is not a readable recording: missing, empty, corrupt, not ours."""

    exit_code = 3


class NewerSchemaError(RecordingError):
    """A recording written by a newer autoglm-trace than this one."""

    exit_code = 4


class TargetError(TraceError):
    """The target process cannot be traced: unknown pid, exited, command not startable."""

    exit_code = 5


class WriteError(TraceError):
    """The recording could not be written (disk full, permission); what was flushed stays."""

    exit_code = 6


class TargetFailed(TraceError):
    """``record -- CMD``: the recording is complete, but the target exited non-zero or was killed by a
    signal. A distinct status so that ``record -- ./bench.sh && ...`` does not carry on after a failure."""

    exit_code = 7
