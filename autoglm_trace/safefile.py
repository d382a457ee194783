"""Opening files that came from someone else: regular files only, bounded reads, no links followed.

A recording, a latency log or a manifest may be planted by another user: a FIFO blocks ``open()``
forever, ``/dev/zero`` never ends, a symlink points at a file the reader may read and the planter may
not. ``open_regular`` opens with O_NONBLOCK (so a FIFO cannot block the open) and O_NOFOLLOW (unless
the caller names the path itself), then checks with fstat -- on the open fd, so nothing can be swapped
between the check and the read -- that it is a regular file. ``read_regular`` reads at most ``limit``
bytes and refuses a larger file rather than growing without bound.

Errors are ``OSError`` subclasses carrying a ``strerror`` (callers already print ``e.strerror``), and
they never quote the file's content.
"""

from __future__ import annotations

import errno
import os
import pwd
import socket
import stat


class NotRegularFile(OSError):
    def __init__(self, path: str, kind: str) -> None:
        super().__init__(errno.EINVAL, f"not a regular file ({kind})", path)


class FileTooLarge(OSError):
    def __init__(self, path: str, size: int, limit: int) -> None:
        super().__init__(errno.EFBIG, f"larger than the {limit:,} bytes read at most ({size:,} bytes)", path)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a plain file"


def open_regular(path: str | os.PathLike[str], *, dir_fd: int | None = None, follow: bool = False) -> int:
    """An O_RDONLY fd on a regular file; ``NotRegularFile`` for anything else (a symbolic link too,
    unless ``follow``). The fd is blocking again when returned (O_NONBLOCK only guards the open)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP and not follow:
            raise NotRegularFile(os.fsdecode(path), "a symbolic link") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(os.fsdecode(path), _kind(st.st_mode))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_regular_as(path: str | os.PathLike[str], run_as: tuple[int, int] | None) -> int:
    """``open_regular(path, follow=True)`` with the permissions of ``run_as`` (uid, gid).

    Root opening a path a sudo user named would let that user read, through a symlink, what only
    root may: the open is made in a forked child that drops to the user's uid, gid and groups first
    (as ``HeldChild`` does for the target) and passes the fd back over a socketpair (SCM_RIGHTS). A
    fork, not a helper program: the interpreter may sit in a directory the user cannot enter. The
    child calls only the few syscalls below and ``_exit``s, so no lock another thread holds matters."""
    if run_as is None or os.geteuid() != 0:
        return open_regular(path, follow=True)
    uid, gid = run_as
    try:
        groups = os.getgrouplist(pwd.getpwuid(uid).pw_name, gid)  # resolved before the fork
    except (KeyError, OSError):
        groups = []
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    pid = os.fork()
    if pid == 0:  # child: always _exit
        code = 0
        try:
            parent_sock.close()
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            fd = open_regular(path, follow=True)
            socket.send_fds(child_sock, [b"0"], [fd])
        except OSError as e:
            try:
                kind = b"N" if isinstance(e, NotRegularFile) else b"E"
                child_sock.send(kind + str(e.errno or errno.EIO).encode() + b" " + (e.strerror or "").encode()[:200])
            except OSError:
                code = 1
        except BaseException:  # noqa: BLE001 - nothing may escape a forked child
            code = 1
        os._exit(code)
    child_sock.close()
    try:
        parent_sock.settimeout(10.0)
        try:
            msg, fds, _flags, _addr = socket.recv_fds(parent_sock, 256, 1)
        except (TimeoutError, OSError):
            msg, fds = b"", []
            os.kill(pid, 9)  # an open stuck on a dead network mount: give up, never hang the recorder
    finally:
        parent_sock.close()
        os.waitpid(pid, 0)
    if fds:
        return fds[0]
    if msg[:1] in (b"N", b"E"):
        num, _, text = msg[1:].decode("utf-8", "replace").partition(" ")
        if msg[:1] == b"N":
            raise NotRegularFile(os.fsdecode(path), text.removeprefix("not a regular file (").removesuffix(")"))
        raise OSError(int(num) if num.isdigit() else errno.EIO, text or "cannot open", os.fsdecode(path))
    raise OSError(errno.EIO, "the opener child failed", os.fsdecode(path))


def read_fd(fd: int, limit: int, name: str = "") -> bytes:
    """Read a whole regular file from ``fd`` (closed afterwards), at most ``limit`` bytes."""
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise FileTooLarge(name, size, limit)
        chunks: list[bytes] = []
        total = 0
        while total <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:  # grew while we read it
            raise FileTooLarge(name, total, limit)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_regular(path: str | os.PathLike[str], limit: int, *, dir_fd: int | None = None,
                 follow: bool = False) -> bytes:
    return read_fd(open_regular(path, dir_fd=dir_fd, follow=follow), limit, os.fsdecode(path))
