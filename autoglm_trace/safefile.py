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
