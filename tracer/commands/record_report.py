"""``record``'s closing report -- the summary of the recording it just closed -- in a fresh process.

Once the recording is closed the recorder has nothing left to do but read it back. Reading costs
memory of its own (the IPC reader and the compute kernels touch ~9 MB of pyarrow's code the
recorder never ran), and on top of a recorder that held probes, samplers and buffers for hours
that made the end of a recording its peak. So ``record`` ends by exec'ing this hidden command in
its own process (same pid, same stdout / stderr, the same exit status rules): the recorder's
memory is gone before the read-back starts. Where that cannot be done (record called as a
library, no interpreter path) the report runs in-process, with the same result.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from autoglm_trace.tracer.commands._parser import CommandParser

NAME = "record-report"
SUMMARY = "record's closing report (run by record itself)"
HIDDEN = True
ORDER = 999

# Set by autoglm_trace.tracer.cli.entry(): this process is the autoglm-trace program itself, so
# replacing it replaces nobody else's interpreter (a test or a library calling record's main()).
IN_ENTRY = False


def hand_off(out: Path, as_json: bool) -> None:
    """exec ``autoglm-trace record-report OUT`` in this process; returns only if it cannot."""
    if not IN_ENTRY or not sys.executable or sys.version_info < (3, 11):
        return
    # -P: no script directory / cwd on sys.path (a root process must not import from wherever it
    # was started); the environment is kept, so the same autoglm_trace is imported.
    argv = [sys.executable, "-P", "-m", "autoglm_trace.tracer.cli", NAME, str(out), *(["--json"] if as_json else [])]
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, argv)
    except OSError:
        return


def main(argv: list[str]) -> int:
    p = CommandParser(NAME, SUMMARY, "")
    p.add_argument("recording", type=Path)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    from autoglm_trace.analysis.reader import Recording

    return report(Recording(args.recording).manifest, args.recording, args.json)


def report(manifest: dict[str, Any], out: Path, as_json: bool) -> int:
    import pyarrow as pa

    from autoglm_trace.analysis.reader import Recording
    from autoglm_trace.analysis.summary import render_summary, summarize

    # The summary reads the closed recording back batch by batch (Recording.scan), each batch freed
    # once totalled. Through the system allocator that memory is reused batch after batch; mimalloc
    # (pyarrow's default) kept ~10 MB more at the end of a 5-minute demo recording.
    pa.set_memory_pool(pa.system_memory_pool())
    summary = summarize(Recording(out))
    if as_json:
        import json

        print(json.dumps(summary, indent=2))
    else:
        render_summary(summary, file=sys.stderr)
        print(f"recording written to {out}", file=sys.stderr)
    if manifest.get("error"):
        from autoglm_trace.errors import WriteError

        raise WriteError(manifest["error"])
    failed = target_failure(manifest)
    if failed:
        from autoglm_trace.errors import TargetFailed

        raise TargetFailed(f"the target {failed} (recording complete at {out})")
    return 0


def target_failure(manifest: dict[str, Any]) -> str | None:
    """How a started target failed -- non-zero exit, killed by a signal -- or None. A target ended by
    the recorder's own stop (Ctrl-C, SIGTERM, SIGHUP to the recorder) has not failed."""
    t = manifest.get("target") or {}
    if t.get("mode") != "command" or manifest.get("stop_reason") != "target exited":
        return None
    if t.get("signal") is not None:
        import signal

        try:
            return f"was killed by {signal.Signals(t['signal']).name}"
        except ValueError:
            return f"was killed by signal {t['signal']}"
    if t.get("exit_code") not in (None, 0):
        return f"exited with status {t['exit_code']}"
    return None
