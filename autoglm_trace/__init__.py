"""autoglm-trace: a low-level system tracer for LLM inference servers.

Importing this package costs nothing beyond the standard library, so a server can
``from autoglm_trace import span`` without pulling in the recorder's dependencies.
"""

from __future__ import annotations

__version__ = "0.1.0"

try:  # the client API lands with the spans work; keep the package importable before it.
    from autoglm_trace.probes.span_client import mark_first_token, span, traced  # noqa: F401
except ImportError:  # pragma: no cover
    pass
