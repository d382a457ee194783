"""``autoglm-trace``: dispatch to one module per subcommand (tracer/commands/<name>.py).

Errors a user can cause are ``TraceError``s: printed as one line on stderr with the error's exit
code, never a traceback. Ctrl-C outside a recording exits 130 quietly.
"""

from __future__ import annotations

import errno
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
    try:
        code = _dispatch(list(sys.argv[1:] if argv is None else argv))
        sys.stdout.flush()  # a full or closed stdout fails here, inside the error handling below
        return code
    except TraceError as e:
        print(f"{PROG}: error: {printable(e)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `autoglm-trace summary rec | head`: stop quietly.
        _discard_stdout()
        return 0
    except OSError as e:
        # Not one of our errors but still the user's environment (stdout on a full disk, a path the
        # kernel refuses): one line, never a traceback.
        if e.filename is not None:
            where = f": {printable(e.filename)}"
        else:
            writing = e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO) or _stdout_broken()
            where = " (writing output)" if writing else ""
        print(f"{PROG}: error: {printable(e.strerror or e)}{where}", file=sys.stderr)
        _discard_stdout()
        return 1


def _dispatch(argv: list[str]) -> int:
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
        print(f"{PROG}: error: unknown command {printable(name)!r} (see '{PROG} --help')", file=sys.stderr)
        return 2
    return int(mod.main(rest) or 0)


def _stdout_broken() -> bool:
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        return True
    return False


def _discard_stdout() -> None:
    """Point fd 1 at /dev/null, so the interpreter's last flush of what is still buffered cannot
    fail again (and print 'Exception ignored ...') on the way out."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, 1)
        os.close(fd)
    except OSError:
        pass


def entry() -> None:
    from autoglm_trace.tracer.commands import record_report

    record_report.IN_ENTRY = True  # this process is the program: record may exec its report (see there)
    sys.exit(main())


if __name__ == "__main__":
    entry()
