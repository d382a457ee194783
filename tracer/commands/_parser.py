"""The argument parser every subcommand uses: argparse, but a usage error is a ``UsageError``
(one line on stderr, exit 2, through the CLI's error path) instead of argparse's own exit."""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

from autoglm_trace.tracer.errors import UsageError


class CommandParser(argparse.ArgumentParser):
    def __init__(self, name: str, summary: str = "", epilog: str = "", **kw: Any) -> None:
        kw.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        kw.setdefault("prog", f"autoglm-trace {name}")
        kw.setdefault("description", summary)
        super().__init__(epilog=epilog or kw.pop("epilog", ""), **kw)
        self.command = name

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.command}: {message}")
