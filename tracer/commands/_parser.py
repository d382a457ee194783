"""The argument parser every subcommand uses: argparse, but a usage error is a ``UsageError``
(one line on stderr, exit 2, through the CLI's error path) instead of argparse's own exit.

The value types below check a number when it is parsed -- finite, inside a range -- so every option
is refused before anything starts (a recording never begins with a value a collector dies on).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any, NoReturn
from urllib.parse import urlsplit

from autoglm_trace.errors import UsageError


class CommandParser(argparse.ArgumentParser):
    def __init__(self, name: str, summary: str = "", epilog: str = "", **kw: Any) -> None:
        kw.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        kw.setdefault("prog", f"autoglm-trace {name}")
        kw.setdefault("description", summary)
        super().__init__(epilog=epilog or kw.pop("epilog", ""), **kw)
        self.command = name

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.command}: {message}")


def _typed(convert: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    convert.__name__ = name  # argparse names the type in "invalid <name> value"
    return convert


def int_in(lo: int, hi: int, unit: str = "") -> Callable[[str], int]:
    """An integer option between ``lo`` and ``hi`` inclusive."""
    def convert(text: str) -> int:
        try:
            v = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo} and {hi}{unit}, got {v}")
        return v
    return _typed(convert, "integer")


def float_in(lo: float, hi: float, unit: str = "", lo_open: bool = False) -> Callable[[str], float]:
    """A finite number between ``lo`` and ``hi`` (``lo`` excluded with ``lo_open``): nan, inf and
    1e12 are refused here, not by a collector after the recording started."""
    def convert(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
        low_ok = v > lo if lo_open else v >= lo
        if not math.isfinite(v) or not low_ok or v > hi:
            side = f"more than {lo:g}" if lo_open else f"at least {lo:g}"
            raise argparse.ArgumentTypeError(f"must be {side} and at most {hi:g}{unit}, got {text}")
        return v
    return _typed(convert, "number")


def http_url(text: str) -> str:
    """An http:// or https:// URL with a host (file://, ftp://, a bare path are refused)."""
    try:
        u = urlsplit(text)
        u.port  # noqa: B018 - raises ValueError on a port out of range
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a valid URL: {text!r}") from None
    if u.scheme not in ("http", "https") or not u.hostname:
        raise argparse.ArgumentTypeError(f"wants an http:// or https:// URL with a host, not {text!r}")
    return text
