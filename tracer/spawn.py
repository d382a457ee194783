"""Starting the target of ``record -- CMD``: held at the starting line, then released.

The child is forked before any recorder thread exists and waits on a pipe, so the probes are
attached (and the child's pid is in the kernel filter) before its first instruction runs. When
released it takes the environment the collectors announce (the span socket), drops to the user who
ran sudo (``SUDO_UID``/``SUDO_GID``) and execs the command directly -- no shell, so arguments are
never re-interpreted. An exec failure comes back over a close-on-exec pipe as a one-line error.

The child's stderr is teed through a pipe: every line still reaches the user's terminal, and the
last lines are kept for the manifest (a CUDA OOM message is the evidence the OOM post-mortem reads).
"""

from __future__ import annotations

import ctypes
import json
import os
import pwd
import shutil
import signal
import sys
import threading
from collections import deque
from dataclasses import dataclass, field

from autoglm_trace.errors import TargetError


@dataclass
class ExitStatus:
    exit_code: int | None = None
    signal: int | None = None
    rusage: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = str(self.signal)
            return f"killed by {name}"
        return f"exited with status {self.exit_code}"


def user_env(uid: int, pw: pwd.struct_passwd | None) -> dict[str, str]:
    """HOME, USER, LOGNAME and SHELL of the user the target runs as, from the passwd entry, as
    ``sudo -u USER`` sets them (root's must not leak into the dropped target: a tool writing to
    ``$HOME`` would write into /root as that user, or fail)."""
    if pw is None:  # a uid without a passwd entry: no root home either
        return {"HOME": "/", "USER": str(uid), "LOGNAME": str(uid)}
    return {"HOME": pw.pw_dir or "/", "USER": pw.pw_name, "LOGNAME": pw.pw_name,
            "SHELL": pw.pw_shell or "/bin/sh"}


_PR_SET_PDEATHSIG = 1  # include/uapi/linux/prctl.h


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _die_with_parent(parent: int, libc: ctypes.CDLL | None) -> None:
    """PR_SET_PDEATHSIG(SIGKILL): the kernel kills us when the thread that forked us exits -- a
    SIGKILLed recorder cannot leave its target running unwatched. The parent may already have died
    between fork and here (we would then be re-parented and never get the signal): check for that."""
    if libc is not None:
        try:
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except AttributeError:
            pass
    if os.getppid() != parent:
        os._exit(126)


def sudo_user() -> tuple[int, int] | None:
    """(uid, gid) of the user who ran sudo, when we are root because of sudo."""
    if os.geteuid() != 0:
        return None
    try:
        uid, gid = int(os.environ["SUDO_UID"]), int(os.environ["SUDO_GID"])
    except (KeyError, ValueError):
        return None
    return (uid, gid) if uid != 0 else None


class HeldChild:
    """A forked child waiting to exec ``argv`` until ``release()``."""

    def __init__(self, argv: list[str], run_as: tuple[int, int] | None = None, tee_stderr: bool = True,
                 stderr_lines: int = 50) -> None:
        if not argv:
            raise TargetError("no command given after '--'")
        exe = argv[0]
        if os.sep not in exe and shutil.which(exe) is None:
            raise TargetError(f"command not found: {exe}")
        if os.sep in exe and not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
            raise TargetError(f"cannot execute {exe}: not an executable file")
        self.argv = argv
        self.run_as = run_as
        self.stderr_tail: deque[str] = deque(maxlen=stderr_lines)
        self._tee_thread: threading.Thread | None = None
        self.status: ExitStatus | None = None

        parent, libc = os.getpid(), _libc()  # loaded before the fork: the child imports nothing
        go_r, self._go_w = os.pipe()
        self._err_r, err_w = os.pipe2(os.O_CLOEXEC)
        tee_r = tee_w = None
        if tee_stderr:
            tee_r, tee_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: no Python-level cleanup may run here, always _exit
            try:
                os.close(self._go_w)
                os.close(self._err_r)
                if tee_w is not None:
                    os.close(tee_r)  # type: ignore[arg-type]
                    os.dup2(tee_w, 2)
                    os.close(tee_w)
                data = b""
                while True:
                    chunk = os.read(go_r, 65536)
                    if not chunk:
                        break
                    data += chunk
                os.close(go_r)
                if not data:  # the recorder gave up before releasing us
                    os._exit(126)
                env = dict(os.environ)
                env.update(json.loads(data.decode()))
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGPIPE, signal.SIG_DFL)
                if run_as is not None:
                    uid, gid = run_as
                    try:
                        pw = pwd.getpwuid(uid)
                        os.initgroups(pw.pw_name, gid)
                    except (KeyError, OSError):
                        pw = None
                        os.setgroups([])
                    env.update(user_env(uid, pw))
                    for k in ("MAIL", "XAUTHORITY") if pw is None else ():
                        env.pop(k, None)
                    os.setgid(gid)
                    os.setuid(uid)
                # After the credential change (commit_creds clears pdeath_signal when the euid
                # changes, kernel/cred.c): die with the recorder, even when it is SIGKILLed ...
                _die_with_parent(parent, libc)
                os.execvpe(argv[0], argv, env)
            except BaseException as e:  # noqa: BLE001 - report anything, then die
                try:
                    msg = f"cannot start {argv[0]}: {getattr(e, 'strerror', None) or e}"
                    os.write(err_w, msg.encode()[:4000])
                finally:
                    os._exit(127)
        self.pid = pid
        os.close(go_r)
        os.close(err_w)
        if tee_w is not None:
            os.close(tee_w)
            self._tee_thread = threading.Thread(target=self._tee, args=(tee_r,), name="stderr-tee", daemon=True)

    def release(self, env: dict[str, str] | None = None) -> None:
        """Let the child exec; raises TargetError if the exec failed."""
        if self._tee_thread is not None:
            self._tee_thread.start()
        payload = json.dumps(env or {}).encode()
        try:
            os.write(self._go_w, payload)
        finally:
            os.close(self._go_w)
        msg = b""
        while True:
            chunk = os.read(self._err_r, 4096)
            if not chunk:
                break
            msg += chunk
        os.close(self._err_r)
        if msg:
            self.wait()
            raise TargetError(msg.decode(errors="replace"))

    def abandon(self) -> None:
        """Release without exec (recorder set-up failed): the child exits 126."""
        try:
            os.close(self._go_w)
        except OSError:
            pass
        try:
            os.close(self._err_r)
        except OSError:
            pass
        self.wait()

    def poll(self) -> ExitStatus | None:
        if self.status is None:
            self._reap(os.WNOHANG)
        return self.status

    def wait(self) -> ExitStatus:
        while self.status is None:
            self._reap(0)
        assert self.status is not None
        return self.status

    def _reap(self, flags: int) -> None:
        try:
            pid, st, ru = os.wait4(self.pid, flags)
        except ChildProcessError:
            self.status = self.status or ExitStatus()
            return
        except InterruptedError:
            return
        if pid == 0:
            return
        es = ExitStatus(
            exit_code=os.WEXITSTATUS(st) if os.WIFEXITED(st) else None,
            signal=os.WTERMSIG(st) if os.WIFSIGNALED(st) else None,
            # wait4's rusage covers the child and every descendant it reaped: the kernel's own
            # whole-life counters (kernel/exit.c wait_task_zombie accumulates into signal->c*).
            rusage={
                "ctx_switches_voluntary": ru.ru_nvcsw,
                "ctx_switches_involuntary": ru.ru_nivcsw,
                "page_faults_minor": ru.ru_minflt,
                "page_faults_major": ru.ru_majflt,
                "cpu_seconds": ru.ru_utime + ru.ru_stime,
                "peak_rss_bytes": ru.ru_maxrss * 1024,
            },
        )
        if self._tee_thread is not None and self._tee_thread.is_alive():
            self._tee_thread.join(timeout=2.0)
        self.status = es

    def _tee(self, fd: int) -> None:
        out = getattr(sys.stderr, "buffer", None)
        pending = b""
        with os.fdopen(fd, "rb", buffering=0) as f:
            while True:
                try:
                    chunk = f.read(65536)
                except OSError:
                    break
                if not chunk:
                    break
                if out is not None:
                    try:
                        out.write(chunk)
                        out.flush()
                    except (OSError, ValueError):
                        out = None
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self.stderr_tail.append(line.decode(errors="replace")[:500])
        if pending:
            self.stderr_tail.append(pending.decode(errors="replace")[:500])

    def kill(self, sig: int = signal.SIGTERM) -> None:
        if self.status is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
