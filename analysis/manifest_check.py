"""The manifest's schema, checked once when a recording is opened (``analysis.reader.Recording``).

Everything downstream -- summary, analyze, oom, diff, report, export -- reads manifest fields with the
types this module guarantees, so a hand-edited or hostile manifest is one ``RecordingError`` here
instead of a traceback in whichever view touches the bad field first. Known fields are checked for
type and range (integers are int64 and never booleans, numbers finite, ``start_ns <= end_ns``,
``schema_version`` between 1 and the version this code reads); unknown fields are kept (newer
recorders add some) but bounded in depth and size like the rest.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from autoglm_trace import schema

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
MAX_DEPTH = 32
MAX_NODES = 1_000_000
MAX_STRING = 1 << 20

Check = Callable[[Any, str], None]


class ManifestInvalid(ValueError):
    """``path`` (dotted) and what is wrong with it."""


def _fail(where: str, what: str) -> None:
    raise ManifestInvalid(f"{where or 'the manifest'} {what}")


def _int(lo: int = INT64_MIN, hi: int = INT64_MAX) -> Check:
    def check(v: Any, where: str) -> None:
        if isinstance(v, bool) or not isinstance(v, int):
            _fail(where, f"must be an integer, not {_type(v)}")
        if not lo <= v <= hi:
            _fail(where, f"must be between {lo} and {hi}")
    return check


def _num(lo: float = -math.inf, hi: float = math.inf) -> Check:
    def check(v: Any, where: str) -> None:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            _fail(where, f"must be a number, not {_type(v)}")
        if not (math.isfinite(v) and lo <= v <= hi):
            _fail(where, f"must be a finite number between {lo:g} and {hi:g}")
    return check


def _str(v: Any, where: str) -> None:
    if not isinstance(v, str):
        _fail(where, f"must be a string, not {_type(v)}")


def _bool(v: Any, where: str) -> None:
    if not isinstance(v, bool):
        _fail(where, f"must be true or false, not {_type(v)}")


def _any(v: Any, where: str) -> None:  # shape bounded by _bounded
    pass


def _opt(check: Check) -> Check:
    def opt(v: Any, where: str) -> None:
        if v is not None:
            check(v, where)
    return opt


def _either(*checks: Check) -> Check:
    def check(v: Any, where: str) -> None:
        errors = []
        for c in checks:
            try:
                c(v, where)
                return
            except ManifestInvalid as e:
                errors.append(str(e))
        raise ManifestInvalid(" or ".join(dict.fromkeys(errors)) if len(errors) < 3 else errors[0])
    return check


def _list(item: Check) -> Check:
    def check(v: Any, where: str) -> None:
        if not isinstance(v, list):
            _fail(where, f"must be a list, not {_type(v)}")
        for i, x in enumerate(v):
            item(x, f"{where}[{i}]")
    return check


def _map(value: Check) -> Check:
    def check(v: Any, where: str) -> None:
        if not isinstance(v, dict):
            _fail(where, f"must be an object, not {_type(v)}")
        for k, x in v.items():
            value(x, f"{where}.{k}")
    return check


def _obj(fields: dict[str, Check], required: tuple[str, ...] = ()) -> Check:
    def check(v: Any, where: str) -> None:
        if not isinstance(v, dict):
            _fail(where, f"must be an object, not {_type(v)}")
        for k in required:
            if v.get(k) is None:
                _fail(f"{where}.{k}".lstrip("."), "is missing")
        for k, c in fields.items():
            if k in v:
                c(v[k], f"{where}.{k}".lstrip("."))
    return check


def _type(v: Any) -> str:
    return {type(None): "null", bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(v), type(v).__name__)


NNINT = _int(0)
PID = _int(0, 1 << 22)
O_STR, O_NNINT, O_INT, O_BOOL = _opt(_str), _opt(NNINT), _opt(_int()), _opt(_bool)

_COLLECTOR = _either(_obj({"status": O_STR, "reason": O_STR, "tables": _opt(_list(_str)),
                           "skipped": _opt(_map(_any))}), _str, _bool)
_TRIGGER_EVENT = _obj({"kind": O_STR, "detail": O_STR, "ts_ns": O_INT, "time": O_STR})

MANIFEST = _obj({
    "format": _str,
    "schema_version": _int(1, schema.SCHEMA_VERSION),
    "tool": _opt(_obj({"name": O_STR, "version": O_STR})),
    "host": _opt(_obj({"hostname": O_STR, "kernel": O_STR, "machine": O_STR, "cpus": _opt(_int(0, 1 << 20)),
                       "mem_total_bytes": O_NNINT, "boot_id": O_STR})),
    "target": _opt(_obj({
        "mode": O_STR, "pid": _opt(PID), "root_pid": _opt(PID), "comm": O_STR,
        "command": _opt(_either(_list(_str), _str)), "cmdline": O_STR, "cgroup": O_STR,
        "user": _opt(_either(_int(), _str)), "exit_code": O_INT, "signal": _opt(_int(0, 1024)),
        "rusage": _opt(_map(_opt(_num()))), "stderr_tail": _opt(_list(_str)), "still_running": O_BOOL,
        "target_failed": O_BOOL,
    })),
    "clock": _opt(_obj({"name": O_STR, "monotonic_to_wall_ns": O_INT})),
    "start_ns": O_NNINT, "end_ns": O_NNINT, "start_time": O_STR, "end_time": O_STR,
    "duration_s": _opt(_num(0)), "interval_ns": O_NNINT,
    "options": _opt(_map(_any)),
    "collectors": _opt(_map(_COLLECTOR)),
    "notes": _opt(_list(_str)),
    "complete": O_BOOL, "stop_reason": O_STR, "error": O_STR,
    "tables": _opt(_map(_opt(NNINT))),
    "stats": _opt(_map(_any)),
    "recorder": _opt(_obj({"pid": _opt(PID)})),
    "trigger": _opt(_obj({"kind": O_STR, "detail": O_STR, "ts_ns": O_INT, "time": O_STR,
                          "also": _opt(_list(_TRIGGER_EVENT))})),
    "flight": _opt(_obj({"ring_s": _opt(_num(0)), "ring_bytes": _opt(_num(0)), "tail_s": _opt(_num(0)),
                         "cut_short": O_BOOL, "recorder_start_ns": O_INT, "ring": _opt(_map(_opt(_num())))})),
}, required=("format", "schema_version"))


def _bounded(m: Any) -> None:
    """Depth, node count and string sizes, walked without recursion (a deep manifest must not be
    able to exhaust the stack of whatever renders it later)."""
    stack: list[tuple[Any, int]] = [(m, 0)]
    nodes = 0
    while stack:
        v, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            _fail("", f"has more than {MAX_NODES:,} values")
        if depth > MAX_DEPTH:
            _fail("", f"nests deeper than {MAX_DEPTH} levels")
        if isinstance(v, dict):
            for k, x in v.items():
                if len(k) > MAX_STRING:
                    _fail("", "has a key longer than 1 MiB")
                stack.append((x, depth + 1))
        elif isinstance(v, list):
            stack.extend((x, depth + 1) for x in v)
        elif isinstance(v, str) and len(v) > MAX_STRING:
            _fail("", "has a string longer than 1 MiB")
        elif isinstance(v, float) and not math.isfinite(v):
            _fail("", "holds a NaN or infinite number")
        elif isinstance(v, int) and not isinstance(v, bool) and not INT64_MIN <= v <= INT64_MAX:
            _fail("", "holds an integer outside int64")


def validate(m: Any) -> dict[str, Any]:
    """``m`` when it is a manifest this code reads; ``ManifestInvalid`` saying which field is wrong."""
    if not isinstance(m, dict):
        _fail("", f"must be an object, not {_type(m)}")
    _bounded(m)
    MANIFEST(m, "")
    start, end = m.get("start_ns"), m.get("end_ns")
    if start is not None and end is not None and end < start:
        _fail("end_ns", "is before start_ns")
    return m
