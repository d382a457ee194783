"""``autoglm-trace demo``: the subcommand's entry; the demo itself lives in demo/ (autoglm_trace.demo)."""

from __future__ import annotations

from autoglm_trace.demo import command

NAME = "demo"
SUMMARY = "run the bundled demo inference server under load, with an injected incident"
ORDER = 80


def main(argv: list[str]) -> int:
    return command.main(argv)
