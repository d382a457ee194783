"""The collector registry: one module here per collector, each declaring ``SPEC``
(autoglm_trace.collector.CollectorSpec: name, tables, options, how it starts).

The session, the record / top parsers and the manifest loop over ``registry()``. Adding a collector
is one new module here (its implementation may sit in the same file) and its tests: it is found by
walking this package, so no list elsewhere names it. A module that fails to import fails loudly --
a broken collector is a bug, not an optional part (optional *system* packages such as bcc or pynvml
are imported by the collector when it starts, and their absence is its stated reason).
"""

from __future__ import annotations

import functools
import importlib
import pkgutil

from autoglm_trace.collector import CollectorSpec


@functools.cache
def registry() -> tuple[CollectorSpec, ...]:
    specs: list[CollectorSpec] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        # The module name comes from this package's own directory, never from a string we wrote.
        mod = importlib.import_module(f"{__name__}.{info.name}")
        spec = getattr(mod, "SPEC", None)
        if isinstance(spec, CollectorSpec):
            specs.append(spec)
    specs.sort(key=lambda s: (s.order, s.name))
    _check(specs)
    return tuple(specs)


def _check(specs: list[CollectorSpec]) -> None:
    names: set[str] = set()
    dests: dict[str, str] = {}
    flags: dict[str, str] = {}
    for s in specs:
        if s.name in names:
            raise RuntimeError(f"two collectors named {s.name!r}")
        names.add(s.name)
        for o in s.options:
            if o.dest in dests:
                raise RuntimeError(f"option {o.dest!r} declared by {dests[o.dest]} and {s.name}")
            dests[o.dest] = s.name
            for f in o.flags:
                if f in flags:
                    raise RuntimeError(f"flag {f} declared by {flags[f]} and {s.name}")
                flags[f] = s.name


def option_defaults() -> dict[str, object]:
    """Every declared option's default, by dest (what a RecordOptions built in code starts from)."""
    out: dict[str, object] = {}
    for s in registry():
        for o in s.options:
            out[o.dest] = list(o.default) if isinstance(o.default, (list, tuple)) else o.default
    return out


def owner_of(table: str) -> list[str]:
    """The collectors that declare ``table`` (spans has several sources)."""
    return [s.name for s in registry() if table in s.tables]
