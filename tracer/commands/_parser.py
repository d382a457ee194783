"""The argument parser every subcommand uses: argparse, but a usage error is a ``UsageError``
(one line on stderr, exit 2, through the CLI's error path) instead of argparse's own exit.

The value types (autoglm_trace/options.py) check a number when it is parsed -- finite, inside a range --
so every option is refused before anything starts.
"""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

from autoglm_trace.errors import UsageError
from autoglm_trace.options import float_in, http_url, int_in

__all__ = ["CommandParser", "float_in", "http_url", "int_in"]


class CommandParser(argparse.ArgumentParser):
    def __init__(self, name: str, summary: str = "", epilog: str = "", **kw: Any) -> None:
        kw.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        kw.setdefault("prog", f"autoglm-trace {name}")
        kw.setdefault("description", summary)
        super().__init__(epilog=epilog or kw.pop("epilog", ""), **kw)
        self.command = name

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.command}: {message}")
