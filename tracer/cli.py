"""``autoglm-trace``: dispatch to one module per subcommand (tracer/commands/<name>.py).

Errors a user can cause are ``TraceError``s: printed as one line on stderr with the error's exit
code, never a traceback. Ctrl-C outside a recording exits 130 quietly.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
from types import ModuleType

from autoglm_trace import __version__
from autoglm_trace.errors import TraceError
from autoglm_trace.printable import printable
from autoglm_trace.tracer import commands

PROG = "autoglm-trace"


def _commands() -> dict[str, ModuleType]:
    found: dict[str, ModuleType] = {}
    for info in pkgutil.iter_modules(commands.__path__):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{commands.__name__}.{info.name}")
        if hasattr(mod, "NAME") and hasattr(mod, "main"):
            found[mod.NAME] = mod
    return dict(sorted(found.items(), key=lambda kv: (getattr(kv[1], "ORDER", 100), kv[0])))


def _usage(cmds: dict[str, ModuleType]) -> str:
    width = max((len(n) for n in cmds), default=8)
    lines = [
        f"usage: {PROG} <command> [options]",
        "",
        "A low-level system tracer for LLM inference servers: kernel probes (bcc), GPU (NVML) and",
        "process sampling into Arrow recordings, and analysis that names the culprit.",
        "",
        "commands:",
    ]
    lines += [f"  {n.ljust(width)}  {getattr(m, 'SUMMARY', '')}" for n, m in cmds.items() if not getattr(m, "HIDDEN", False)]
    lines += [
        "",
        "examples:",
        f"  sudo {PROG} record -o rec -- python3 server.py     # record a server and its children",
        f"  sudo {PROG} record -p 4242 --duration 60 -o rec     # attach to a running process",
        f"  {PROG} summary rec --json",
        f"  {PROG} analyze rec                 # ranked causes of latency spikes, named culprits",
        f"  {PROG} oom rec                     # OOM post-mortem (host, memcg, CUDA)",
        f"  {PROG} diff base.rec new.rec       # what regressed",
        f"  {PROG} report rec -o report.html",
        f"  sudo {PROG} top -p 4242 --prometheus 9464",
        f"  sudo {PROG} record --ring 5m --host -o /var/lib/autoglm-trace   # flight recorder",
        f"  sudo {PROG} doctor",
        "",
        f"Run '{PROG} <command> --help' for a command's options and examples.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cmds = _commands()
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage(cmds))
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"{PROG} {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    mod = cmds.get(name)
    if mod is None:
        print(f"{PROG}: error: unknown command {name!r} (see '{PROG} --help')", file=sys.stderr)
        return 2
    try:
        return int(mod.main(rest) or 0)
    except TraceError as e:
        print(f"{PROG}: error: {printable(e)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `autoglm-trace summary rec | head`: stop quietly.
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        except OSError:
            pass
        return 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
