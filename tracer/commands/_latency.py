"""``--latency FILE``: one definition of the option every command that reads request timings takes
(``analyze``, ``oom``), and one loader, so the commands cannot drift apart in what they accept."""

from __future__ import annotations

import argparse
from typing import Any

from autoglm_trace.errors import UsageError

HELP = "request latency log (JSONL or CSV) to analyse with the recording (docs/analysis.md)"


def add_latency_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--latency", metavar="FILE", help=HELP)


def load_latency(command: str, path: str | None, wall_offset_ns: int) -> tuple[list[dict[str, Any]] | None, list[str]]:
    """The log's requests as ``spans``-table rows on the recording's clock, and the lines skipped.
    ``(None, [])`` without a log; an unreadable or empty log is a one-line usage error."""
    if not path:
        return None, []
    from autoglm_trace.probes.latency_log import parse_latency_file, to_spans

    try:
        rows, errors = parse_latency_file(path)
    except OSError as e:
        raise UsageError(f"{command}: cannot read --latency {path}: {e.strerror or e}") from None
    if not rows and errors:
        raise UsageError(f"{command}: --latency {path} has no usable requests ({errors[0]})")
    return to_spans(rows, wall_offset_ns), errors


def skipped_finding(errors: list[str]) -> dict[str, str] | None:
    if not errors:
        return None
    return {"kind": "latency_log", "severity": "warning",
            "message": f"{len(errors)} latency-log lines skipped (first: {errors[0]})"}
