"""Typed values for command-line options: checked when parsed -- finite, inside a range -- so every
option is refused before anything starts (a recording never begins with a value a collector dies on).

Part of the contract because collectors declare their own options (autoglm_trace/collector.py
``Option``) with these types; the CLI's parser (tracer/commands/_parser.py) uses them too.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit


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
