"""The NVML backend: real and simulated behind one interface, chosen at start; the sampler never
asks which one it has."""

from __future__ import annotations

import ast
import inspect
from types import SimpleNamespace

from autoglm_trace.probes import nvml as nvml_mod
from autoglm_trace.probes import nvml_sim
from autoglm_trace.probes.nvml_backend import NvmlBackend, PynvmlBackend, as_backend


def test_real_module_is_wrapped_and_passed_through():
    calls = []
    module = SimpleNamespace(nvmlInit=lambda: calls.append("init"), NVML_ERROR_NOT_SUPPORTED=3)
    b = as_backend(module)
    assert isinstance(b, PynvmlBackend) and b.backend_kind == "pynvml" and b.backend_notice == ""
    b.nvmlInit()
    assert calls == ["init"] and b.NVML_ERROR_NOT_SUPPORTED == 3
    assert getattr(b, "nvmlDeviceGetNoSuchCall", None) is None  # an old binding's missing call
    b.set_target(lambda: [1])  # accepted, ignored
    assert b.backend_info() == {}


def test_simulated_driver_is_a_backend_itself():
    sim = nvml_sim.SimulatedNvml()
    assert as_backend(sim) is sim and isinstance(sim, NvmlBackend)
    sim.set_target(lambda: [4242])
    assert sim.main_pid(0) == 4242
    info = sim.backend_info()["simulation"]
    assert info["scenario"] == "default" and info["t0_ns"] == sim.t0_ns
    assert "SIMULATED" in sim.backend_notice


def test_sampler_has_no_simulation_hooks():
    """No name of the simulation in the sampler's code (its docstrings may mention it)."""
    tree = ast.parse(inspect.getsource(nvml_mod))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {a.name for a in node.names} | {getattr(node, "module", None) or ""}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("sim"):
            names.add(node.value)
    assert not {n for n in names if "sim" in n.lower()}, sorted(n for n in names if "sim" in n.lower())
