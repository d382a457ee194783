"""autoglm-trace: a low-level system tracer for LLM inference servers.

This root package is the contract every room shares (schema, errors, clock, collector and sink
protocols, the /proc root, the target tree, the span client). Importing the package itself costs
nothing beyond the standard library, so a server can ``from autoglm_trace import span`` without
pulling in the recorder's dependencies (the span client is standard-library only).
"""

from __future__ import annotations

from autoglm_trace.span_client import mark_first_token, span, traced

__all__ = ["__version__", "mark_first_token", "span", "traced"]

__version__ = "0.1.0"
