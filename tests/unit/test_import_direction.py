"""The rooms and their one-way arrows (docs/architecture.md), checked on the source's imports.

    contract (autoglm_trace/*.py)  <-  probes/, analysis/  <-  tracer/   (demo/: a client of the tool)

Every import counts, also one inside a function. No module imports one of ours by a string
(``importlib.import_module("autoglm_trace...")``, ``__import__``), and no import of ours hides in a
``try/except ImportError``: only the optional system packages below may be missing.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = "autoglm_trace"
ROOMS = {"tracer": "tracer", "probes": "probes", "analysis": "analysis", "demo": "demo"}  # package -> folder

# Optional system / third-party packages whose absence is a stated reason, not a bug: bcc (Debian's
# python3-bpfcc, root hosts only) and pynvml (nvidia-ml-py; the GPU sampler says so when missing).
# pyspark: the optional `spark` extra (fleet --engine spark), installed only where Java exists.
OPTIONAL_THIRD_PARTY = frozenset({"bcc", "pynvml", "pyspark"})

# What the demo may use besides the contract: the CLI's argument parser and the sudo-user lookup.
DEMO_MAY_IMPORT = frozenset({f"{PKG}.tracer.commands._parser", f"{PKG}.tracer.spawn"})

# The one subcommand module that hands over to the demo.
DEMO_ENTRY = "tracer/commands/demo.py"

# Known exceptions, each with its reason. analysis/report.py imports the diagnosis and OOM modules by
# name so the report survives without them, which tests/unit/test_report.py's ``no_analysis``
# fixture asserts; it goes when that test's expectation does.
STRING_IMPORT_ALLOWED = {"analysis/report.py": "report degrades without diagnosis/oom (test_report no_analysis)"}

IMPORT_ERRORS = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}
IMPORT_CALLS = {"import_module", "__import__", "find_spec"}


def room_of(rel: str) -> str:
    """'contract', 'tracer', 'probes', 'analysis' or 'demo' for a path relative to the checkout."""
    top = rel.split("/", 1)[0]
    if top == PKG:
        return "contract"
    return top


def module_of(rel: str) -> str:
    parts = rel[:-3].split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    if parts[0] == PKG:
        return ".".join(parts)
    return ".".join([PKG, *parts])


def _targets(node: ast.AST, here: str, is_pkg: bool) -> list[str]:
    """The modules an import statement reaches (``from autoglm_trace import tracer`` reaches the
    tracer package)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    assert isinstance(node, ast.ImportFrom)
    base = node.module or ""
    if node.level:
        pkg = here.split(".") if is_pkg else here.split(".")[:-1]
        pkg = pkg[: len(pkg) - (node.level - 1)]
        base = ".".join([*pkg, base] if base else pkg)
    # ``from pkg import name``: the module pkg.name when there is one, else pkg itself.
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in _known_modules() else base for a in node.names]


@functools.cache
def _known_modules() -> frozenset[str]:
    return frozenset(module_of(p.relative_to(ROOT).as_posix()) for p in _sources())


def _in_room(target: str, room: str) -> bool:
    return target == f"{PKG}.{room}" or target.startswith(f"{PKG}.{room}.")


def _is_contract(target: str) -> bool:
    if not (target == PKG or target.startswith(PKG + ".")):
        return False
    return not any(_in_room(target, r) for r in ROOMS)


def _catches_import_errors(handlers: list[ast.ExceptHandler]) -> bool:
    for h in handlers:
        if h.type is None:
            return True
        names = h.type.elts if isinstance(h.type, ast.Tuple) else [h.type]
        for n in names:
            if isinstance(n, ast.Name) and n.id in IMPORT_ERRORS:
                return True
            if isinstance(n, ast.Attribute) and n.attr in IMPORT_ERRORS:
                return True
    return False


def _literal_prefix(arg: ast.AST) -> str | None:
    """The literal text a module-name argument starts with (None: computed, e.g. from __name__)."""
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        return str(arg.values[0].value)
    if isinstance(arg, ast.BinOp) and isinstance(arg.left, ast.Constant) and isinstance(arg.left.value, str):
        return arg.left.value
    return None


def violations(rel: str, source: str) -> list[str]:
    """Every broken rule in one file (``rel``: its path from the checkout root)."""
    room = room_of(rel)
    here = module_of(rel)
    is_pkg = rel.endswith("__init__.py")
    tree = ast.parse(source, filename=rel)
    out: list[str] = []

    def bad(node: ast.AST, why: str) -> None:
        out.append(f"{rel}:{getattr(node, 'lineno', '?')}: {why}")

    guarded: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and _catches_import_errors(node.handlers):
            for stmt in node.body:
                for inner in ast.walk(stmt):
                    if isinstance(inner, (ast.Import, ast.ImportFrom)):
                        guarded.add(id(inner))

    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            targets = _targets(node, here, is_pkg)
            if id(node) in guarded:
                tops = {t.split(".")[0] for t in targets if t}
                if not tops <= OPTIONAL_THIRD_PARTY:
                    bad(node, f"import of {sorted(tops - OPTIONAL_THIRD_PARTY)} inside try/except ImportError "
                              f"(only {sorted(OPTIONAL_THIRD_PARTY)} may be missing)")
            for t in targets:
                if room in ("probes", "analysis") and (_in_room(t, "tracer") or _in_room(t, "demo")):
                    bad(node, f"{room}/ imports {t}: {room} must not depend on the recorder or the demo")
                elif room == "contract" and t.startswith(PKG + ".") and not _is_contract(t):
                    bad(node, f"the contract imports {t}: it must import none of the rooms")
                elif room == "tracer" and _in_room(t, "demo") and rel != DEMO_ENTRY:
                    bad(node, f"tracer/ imports {t}: only {DEMO_ENTRY} may hand over to the demo")
                elif (room == "demo" and t.startswith(PKG + ".") and not _is_contract(t)
                      and not _in_room(t, "demo") and t not in DEMO_MAY_IMPORT
                      and not any(t.startswith(m + ".") for m in DEMO_MAY_IMPORT)):
                    bad(node, f"demo/ imports {t}: the demo uses the tool through its CLI and the contract")
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name not in IMPORT_CALLS or not node.args:
                continue
            prefix = _literal_prefix(node.args[0])
            if prefix is None:
                continue  # computed from a package object (registry / command discovery)
            if name == "find_spec" and prefix.split(".")[0] in OPTIONAL_THIRD_PARTY:
                continue
            if rel in STRING_IMPORT_ALLOWED:
                continue
            bad(node, f"{name}({prefix!r}...): a module imported by a string; import it plainly")
    return out


def _sources() -> list[Path]:
    files = sorted((ROOT / PKG).glob("*.py"))
    for folder in ROOMS.values():
        files += sorted(p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)
    return files


def test_the_rooms_exist():
    rels = {p.relative_to(ROOT).as_posix() for p in _sources()}
    assert {f"{PKG}/schema.py", f"{PKG}/collector.py", f"{PKG}/sinks.py", f"{PKG}/procfs.py"} <= rels
    assert any(r.startswith("demo/") for r in rels) and any(r.startswith("probes/collectors/") for r in rels)


def test_imports_go_one_way():
    found = []
    for p in _sources():
        found += violations(p.relative_to(ROOT).as_posix(), p.read_text())
    assert not found, "\n".join(found)


def test_contract_imports_only_the_standard_library_and_its_own():
    """The root package itself (what ``from autoglm_trace import span`` loads) costs nothing."""
    tree = ast.parse((ROOT / PKG / "__init__.py").read_text())
    import sys

    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for t in _targets(node, PKG, True):
                top = t.split(".")[0]
                assert top in (PKG, "__future__") or top in sys.stdlib_module_names, t


# The checker itself: each rule fires on the code it is meant to refuse.
@pytest.mark.parametrize(("rel", "src"), [
    ("probes/x.py", "from autoglm_trace.tracer.session import Recorder\n"),
    ("probes/x.py", "def f():\n    from autoglm_trace.tracer import ring\n"),
    ("analysis/x.py", "import autoglm_trace.tracer.live_status\n"),
    ("analysis/x.py", "from autoglm_trace import tracer\n"),
    ("analysis/x.py", "from ..tracer import ring\n"),
    ("autoglm_trace/x.py", "from autoglm_trace.probes import kernel\n"),
    ("autoglm_trace/x.py", "def f():\n    from autoglm_trace.analysis.reader import Recording\n"),
    ("tracer/session.py", "from autoglm_trace.demo import server\n"),
    ("demo/x.py", "from autoglm_trace.tracer.session import Recorder\n"),
    ("tracer/x.py", "import importlib\nm = importlib.import_module('autoglm_trace.probes.kernel')\n"),
    ("tracer/x.py", "m = __import__(f'autoglm_trace.analysis.{name}')\n"),
    ("tracer/x.py", "try:\n    from autoglm_trace.analysis import spikes\nexcept Exception:\n    spikes = None\n"),
    ("probes/x.py", "try:\n    import numpy\nexcept ImportError:\n    numpy = None\n"),
])
def test_checker_refuses(rel: str, src: str):
    assert violations(rel, src), src


@pytest.mark.parametrize(("rel", "src"), [
    ("tracer/x.py", "from autoglm_trace.analysis import spikes\nfrom autoglm_trace.probes import kernel\n"),
    ("probes/x.py", "from autoglm_trace import schema\nfrom autoglm_trace.collector import Collector\n"),
    ("probes/x.py", "def f():\n    try:\n        import bcc\n    except ImportError:\n        return None\n"),
    ("probes/x.py", "import importlib.util\nok = importlib.util.find_spec('bcc')\n"),
    ("probes/collectors/__init__.py", "import importlib\nm = importlib.import_module(f'{__name__}.{n}')\n"),
    ("tracer/commands/demo.py", "from autoglm_trace.demo import command\n"),
    ("demo/x.py", "from autoglm_trace.errors import UsageError\nfrom autoglm_trace.tracer.commands._parser import CommandParser\n"),
    ("autoglm_trace/x.py", "from autoglm_trace import schema\nfrom autoglm_trace.span_client import span\n"),
])
def test_checker_allows(rel: str, src: str):
    assert not violations(rel, src), violations(rel, src)


def test_every_package_is_installed():
    """pyproject.toml names every package folder (setuptools installs only the listed ones)."""
    import tomllib

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {PKG: PKG}
    for folder in ROOMS.values():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT).as_posix()
            folders[module_of(rel + "/__init__.py")] = rel
    assert set(cfg["packages"]) == set(folders), set(folders) ^ set(cfg["packages"])
    assert cfg["package-dir"] == folders
