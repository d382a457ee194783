"""Writing an output file (report, export) without ever leaving half of one, following a link, or
destroying what is being read.

``check_output`` runs before any work: the target must be a plain file name in an existing directory,
not an existing device, FIFO, socket or directory (``report -o /dev/null`` as root used to replace the
device node with a regular file), and not inside a recording being read (``report REC -o
REC/manifest.json`` used to overwrite the recording). Real paths are compared, so a link or ``..``
does not hide the recording. ``atomic_file`` checks the target's type again just before the rename.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from autoglm_trace.errors import UsageError


def _existing_kind(path: Path) -> str | None:
    """What non-regular thing sits at ``path`` (not following a final link), or None."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise UsageError(f"cannot use {path}: {e.strerror or e}") from None
    if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
        return None  # a regular file is replaced; a link is replaced, never followed
    if stat.S_ISDIR(st.st_mode):
        return "a directory"
    if stat.S_ISFIFO(st.st_mode):
        return "a FIFO"
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        return "a device"
    return "not a regular file"


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_output(command: str, path: str | Path, reading: Iterable[str | Path] = ()) -> Path:
    """``path`` when it is safe to write as a new output file; a one-line ``UsageError`` otherwise."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    kind = _existing_kind(path)
    if kind == "a directory":
        raise UsageError(f"{command}: {path} is a directory; give a file name (e.g. {path / 'out'})")
    if kind is not None:
        raise UsageError(f"{command}: {path} exists and is {kind}; refusing to replace it (give a new file name)")
    try:
        if not parent.is_dir():
            raise UsageError(f"{command}: directory {parent} does not exist")
        real_parent = parent.resolve(strict=True)
    except OSError as e:
        raise UsageError(f"{command}: cannot use directory {parent}: {e.strerror or e}") from None
    for rec in reading:
        try:
            real_rec = Path(rec).resolve(strict=True)
        except OSError:
            continue  # the reader reports a missing recording itself
        if _inside(real_parent, real_rec):
            raise UsageError(f"{command}: {path} is inside the recording {rec} being read; "
                             "write the output elsewhere")
    return path


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file that becomes ``path`` only when the block succeeds: written as a new temp file in
    the same directory, then renamed -- a link planted at ``path`` is replaced, never followed, and a
    device, FIFO or directory found there is left alone (``OSError``)."""
    path = Path(path)
    d = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:200]}.", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.chmod(tmp, 0o644)
        kind = _existing_kind(path)
        if kind is not None:
            raise IsADirectoryError(0, f"{path} exists and is {kind}; not replaced")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
