"""Text that came from outside -- a process's comm and cmdline, a scraped endpoint's status line, a
span's name, an error's text, a recorded path -- made safe to print on a terminal.

``printable`` is the one sanitizer: every C0/C1 control character (ESC starts a terminal escape
sequence: colours, cursor moves, window-title and clipboard writes), every invisible or
direction-changing format character (bidi overrides that make text read backwards, zero-width
characters) and lone surrogates are shown as a visible ``\\xNN`` / ``\\uNNNN`` escape, so the text
can neither drive the terminal nor hide what it says. ``escape_markup`` does that and then escapes
rich markup (a comm of ``[red]`` or ``[link=...]`` must print as itself, not style our output).
"""

from __future__ import annotations

import re

_UNPRINTABLE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb"
    "\ud800-\udfff\U000e0000-\U000e007f]"
)


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}" if c < 0x10000 else f"\\U{c:08x}"


def printable(value: object, limit: int | None = None) -> str:
    """``str(value)`` with every control / format character visibly escaped, cut to ``limit``
    characters (with an ellipsis) when given."""
    s = value if isinstance(value, str) else str(value)
    if limit is not None and len(s) > limit:
        s = s[: max(limit - 1, 0)] + "…"
    return _UNPRINTABLE.sub(_escape, s)


def printable_lines(text: str) -> str:
    """Like ``printable`` but keeps line breaks: for multi-line output we compose ourselves."""
    return "\n".join(printable(line) for line in text.split("\n"))


def escape_markup(value: object, limit: int | None = None) -> str:
    """``printable`` and then rich-markup escaped, for text placed inside rich markup."""
    from rich.markup import escape

    return escape(printable(value, limit))
