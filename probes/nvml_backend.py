"""The NVML backend the GPU sampler talks to, chosen once when it starts: the real driver (``pynvml``)
or the simulated one (probes/nvml_sim.py, ``AUTOGLM_TRACE_NVML=simulated``).

Both offer pynvml's function API (``nvmlInit``, ``nvmlDeviceGetMemoryInfo`` ...) and the small
``NvmlBackend`` interface below, so probes/nvml.py runs the same code against either and never asks
which one it has. The simulated backend is a testing aid for machines without a GPU (CI, demos,
benchmarks): a recording made with it says so in the manifest (``collectors.gpu.backend``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from autoglm_trace.collector import CollectorUnavailable

ENV_BACKEND = "AUTOGLM_TRACE_NVML"
ENV_SCENARIO = "AUTOGLM_TRACE_NVML_SCENARIO"


class NvmlBackend:
    """What the sampler may tell a backend and ask of it, beside pynvml's calls."""

    backend_kind = "pynvml"
    # Appended to doctor's NVML line ("" for the real driver).
    backend_notice = ""

    def set_target(self, pids_fn: Callable[[], list[int]] | None) -> None:  # noqa: B027 - optional
        """The target's pids (root first), for a backend that reports processes of its own making."""

    def backend_info(self) -> dict[str, Any]:
        """Extra facts for the manifest's ``collectors.gpu`` entry."""
        return {}


class PynvmlBackend(NvmlBackend):
    """The real driver: pynvml's module, its calls and constants passed straight through."""

    def __init__(self, module: Any) -> None:
        self._module = module

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._module, name)  # AttributeError for a call an old binding lacks
        self.__dict__[name] = value  # looked up once: the sampler calls these every interval
        return value


def as_backend(api: Any) -> NvmlBackend:
    """A backend as given (the simulated driver, a test's subclass of it), or pynvml's module API
    wrapped as one."""
    return api if isinstance(api, NvmlBackend) else PynvmlBackend(api)


def load_nvml() -> Any:
    """The NVML API: the simulated driver when ``AUTOGLM_TRACE_NVML=simulated``, else ``pynvml``.
    Raises CollectorUnavailable with the fix when neither can be had."""
    mode = os.environ.get(ENV_BACKEND, "").strip().lower()
    if mode in ("sim", "simulated"):
        from autoglm_trace.probes import nvml_sim

        try:
            return nvml_sim.from_env()
        except (OSError, ValueError, KeyError) as e:
            raise CollectorUnavailable(
                f"simulated NVML: cannot load scenario {os.environ.get(ENV_SCENARIO)!r}: {e}"
            ) from None
    if mode in ("off", "none", "0", "no"):
        raise CollectorUnavailable(f"GPU sampling turned off by {ENV_BACKEND}={mode}")
    if mode not in ("", "real", "pynvml", "auto"):
        raise CollectorUnavailable(f"{ENV_BACKEND}={mode!r} is not understood (use 'simulated', or unset it)")
    try:
        import pynvml
    except ImportError:
        raise CollectorUnavailable(
            "the nvidia-ml-py package (pynvml) is not installed: pip install nvidia-ml-py"
        ) from None
    return pynvml
