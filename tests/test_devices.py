"""Device backends: CPU behaviour, the CUDA availability errors, and (on a GPU) graphs and autocast."""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import types
from typing import Any

import flowkit_devices
import pytest
import torch
from conftest import hook_plugin, registering_plugin, tiny_file
from flowkit_devices import backends
from flowkit_devices.backends import AutoBackend, CPUBackend, CUDABackend
from torch import Tensor, nn

from flowkit.engine import build_pipeline, run_pipeline
from flowkit.errors import FlowkitError
from flowkit.interfaces import BuildContext
from flowkit.testing import check_component, make_manager

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_registers_every_backend():
    added = {}

    class Recorder:
        def add(self, kind, name, cls):
            added[(kind, name)] = cls

    flowkit_devices.flowkit_register(Recorder())
    assert added == {
        ("device", "cpu"): CPUBackend,
        ("device", "cuda"): CUDABackend,
        ("device", "auto"): AutoBackend,
    }
    for cls in added.values():
        check_component("device", cls)


# --------------------------------------------------------------------------------------------------
# CPU
# --------------------------------------------------------------------------------------------------


def test_cpu_backend_is_plain_eager_torch():
    backend = CPUBackend()
    assert backend.device == torch.device("cpu")
    generator = backend.generator(7)
    assert generator.device.type == "cpu"
    assert torch.equal(
        torch.rand(4, generator=generator), torch.rand(4, generator=torch.Generator().manual_seed(7))
    )
    module = nn.Linear(2, 2)
    assert backend.prepare_module(module) is module
    assert isinstance(backend.autocast(), contextlib.nullcontext)

    def fn(x):
        return 2 * x

    assert backend.compile_sampler(fn, torch.zeros(3, 2)) is fn


def test_cpu_backend_sets_the_thread_count():
    before = torch.get_num_threads()
    try:
        CPUBackend(CPUBackend.Params(threads=1))
        assert torch.get_num_threads() == 1
        CPUBackend(CPUBackend.Params(threads=2))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def thread_calls(monkeypatch):
    """The arguments of every ``torch.set_num_threads`` call (captured: torch's setting is untouched)."""
    before = torch.get_num_threads()
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 1000)  # the affinity mask, where there is one, wins
    yield calls
    monkeypatch.undo()
    torch.set_num_threads(before)


@pytest.mark.parametrize(("cpus", "threads"), [(1, 1), (2, 1), (3, 1), (4, 2), (16, 8), (64, 32)])
def test_default_threads_is_half_the_usable_cpus(monkeypatch, thread_calls, cpus, threads):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    assert backends.default_threads() == threads
    CPUBackend()
    CPUBackend(CPUBackend.Params(threads=0))
    _no_gpu(monkeypatch, None)
    AutoBackend()
    assert thread_calls == [threads, threads, threads]
    CPUBackend(CPUBackend.Params(threads=3))  # an explicit count is set as given
    AutoBackend(AutoBackend.Params(threads=5))
    assert thread_calls == [threads, threads, threads, 3, 5]


def test_default_threads_without_an_affinity_mask(monkeypatch, thread_calls):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # e.g. macOS, Windows
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert backends.default_threads() == 3
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # unknown
    assert backends.default_threads() == 1
    CPUBackend()
    assert thread_calls == [1]


def test_omp_num_threads_keeps_torchs_setting(monkeypatch, thread_calls):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    CPUBackend()
    assert thread_calls == []  # torch already follows OMP_NUM_THREADS
    CPUBackend(CPUBackend.Params(threads=2))
    assert thread_calls == [2]


# --------------------------------------------------------------------------------------------------
# CUDA requested without a GPU, and the CUDA parameters (simulated availability)
# --------------------------------------------------------------------------------------------------


def _no_gpu(monkeypatch, cuda_version):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", cuda_version)


def test_cuda_without_cuda_build_fails_before_any_work(monkeypatch):
    _no_gpu(monkeypatch, None)
    with pytest.raises(FlowkitError) as error:
        CUDABackend.from_params(CUDABackend.Params(), BuildContext())
    assert str(error.value) == (
        "device 'cuda' was requested but torch.cuda.is_available() is False "
        f'(torch {torch.__version__} was built without CUDA); use device = "cpu" or "auto"'
    )


def test_cuda_without_visible_gpu_names_the_cause(monkeypatch):
    _no_gpu(monkeypatch, "12.4")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(FlowkitError) as error:
        CUDABackend()
    assert str(error.value) == (
        "device 'cuda' was requested but torch.cuda.is_available() is False "
        f"(torch {torch.__version__} is built with CUDA 12.4 but no GPU is visible); "
        'use device = "cpu" or "auto"'
    )
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(FlowkitError) as error:
        CUDABackend()
    assert "but no GPU is visible, CUDA_VISIBLE_DEVICES=''); use device" in str(error.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_on_this_machine_gives_the_exact_message():
    with pytest.raises(FlowkitError) as error:
        CUDABackend()
    reason = (
        f"torch {torch.__version__} was built without CUDA"
        if torch.version.cuda is None
        else f"torch {torch.__version__} is built with CUDA {torch.version.cuda} but no GPU is visible"
    )
    assert str(error.value).startswith(
        f"device 'cuda' was requested but torch.cuda.is_available() is False ({reason}"
    )
    assert str(error.value).endswith('; use device = "cpu" or "auto"')


def test_auto_falls_back_to_the_cpu(monkeypatch):
    _no_gpu(monkeypatch, None)
    backend = AutoBackend(AutoBackend.Params(threads=0))
    assert isinstance(backend.backend, CPUBackend)
    assert backend.device == torch.device("cpu")
    assert backend.generator(0).device.type == "cpu"


def _fake_gpus(monkeypatch, count=2, bf16=True):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args, **kwargs: "Fake GPU")


def test_cuda_index_out_of_range_is_refused(monkeypatch):
    _fake_gpus(monkeypatch, count=1)
    with pytest.raises(FlowkitError) as error:
        CUDABackend(CUDABackend.Params(index=2))
    assert str(error.value) == (
        "device 'cuda' index 2 was requested but only 1 GPU(s) are visible (indices 0 to 0); "
        "set index to one of those"
    )


def test_cuda_bf16_needs_support(monkeypatch):
    _fake_gpus(monkeypatch, bf16=False)
    with pytest.raises(FlowkitError) as error:
        CUDABackend(CUDABackend.Params(precision="bf16"))
    assert str(error.value) == (
        'precision "bf16" was requested but Fake GPU does not support bfloat16; '
        'use precision = "fp32" or "tf32"'
    )


def test_cuda_precision_settings(monkeypatch):
    _fake_gpus(monkeypatch)
    calls = []
    monkeypatch.setattr(backends, "enable_tf32", lambda: calls.append("tf32"))
    backend = CUDABackend(CUDABackend.Params(index=1))
    assert backend.device == torch.device("cuda", 1)
    assert isinstance(backend.autocast(), contextlib.nullcontext)
    assert calls == []  # fp32 leaves the global setting alone
    CUDABackend(CUDABackend.Params(precision="tf32"))
    assert calls == ["tf32"]
    autocast = CUDABackend(CUDABackend.Params(precision="bf16")).autocast()
    assert isinstance(autocast, torch.autocast)
    assert (autocast.device, autocast.fast_dtype) == ("cuda", torch.bfloat16)
    assert calls == ["tf32"]
    assert CUDABackend(CUDABackend.Params(cuda_graph=False)).compile_sampler(abs, torch.zeros(1)) is abs


def _namespace(**kwargs):
    return types.SimpleNamespace(**kwargs)


def test_enable_tf32_uses_the_precision_api_where_torch_has_it():
    # torch >= 2.9: fp32_precision on cuda.matmul and cudnn.conv; allow_tf32 must not be touched.
    matmul, conv = _namespace(fp32_precision="none"), _namespace(fp32_precision="none")
    cudnn = _namespace(conv=conv)
    settings = backends.enable_tf32(_namespace(cuda=_namespace(matmul=matmul), cudnn=cudnn))
    assert settings == {"cuda.matmul.fp32_precision": "tf32", "cudnn.conv.fp32_precision": "tf32"}
    assert matmul.fp32_precision == "tf32" and conv.fp32_precision == "tf32"
    assert not hasattr(matmul, "allow_tf32") and not hasattr(cudnn, "allow_tf32")


def test_enable_tf32_falls_back_to_allow_tf32_on_older_torch():
    # torch < 2.9 (flowkit supports >= 2.4): only the allow_tf32 flags exist.
    matmul, cudnn = _namespace(allow_tf32=False), _namespace(allow_tf32=False)
    settings = backends.enable_tf32(_namespace(cuda=_namespace(matmul=matmul), cudnn=cudnn))
    assert settings == {"cuda.matmul.allow_tf32": True, "cudnn.allow_tf32": True}
    assert matmul.allow_tf32 is True and cudnn.allow_tf32 is True
    assert not hasattr(matmul, "fp32_precision")


ENABLE_TF32 = """
import json, warnings
import torch
from flowkit_devices.backends import enable_tf32
with warnings.catch_warnings():
    warnings.simplefilter("error")  # a deprecated flag would warn
    settings = enable_tf32()
    read = {}
    for name in settings:
        target = torch.backends
        for part in name.split("."):
            target = getattr(target, part)
        read[name] = target
print(json.dumps({"settings": settings, "read": read}))
"""


def test_enable_tf32_on_the_installed_torch():
    # In a subprocess: the setting is process-wide, and once the new API is used the old one raises.
    done = subprocess.run([sys.executable, "-c", ENABLE_TF32], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["read"] == result["settings"]
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch >= 2.9
        assert result["settings"] == {
            "cuda.matmul.fp32_precision": "tf32",
            "cudnn.conv.fp32_precision": "tf32",
        }
    else:
        assert result["settings"] == {"cuda.matmul.allow_tf32": True, "cudnn.allow_tf32": True}


# --------------------------------------------------------------------------------------------------
# On a GPU
# --------------------------------------------------------------------------------------------------


def _velocity(device):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 64), nn.SiLU(), nn.Linear(64, 2)).to(device)


def _euler(net, ts, generator=None, sigma=0.0):
    """Fixed-step Euler (Euler–Maruyama when sigma > 0) over the grid ``ts`` (on the GPU)."""

    def run(x):
        for i in range(ts.numel() - 1):
            t = ts[i].expand(x.shape[0])
            h = ts[i + 1] - ts[i]
            x = x + h * net(torch.cat([x, t[:, None]], dim=1))
            if sigma > 0:
                noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x = x + sigma * h.sqrt() * noise
        return x

    return run


@pytest.mark.cuda
@CUDA
def test_graph_captured_euler_equals_eager():
    backend = CUDABackend()
    device = backend.device
    net = backend.prepare_module(_velocity(device))
    ts = torch.linspace(0, 1, 21, device=device)
    euler = _euler(net, ts)
    x0 = torch.randn(512, 2, device=device)
    sampler = backend.compile_sampler(euler, x0)
    with torch.no_grad():
        first = sampler(x0)
        expected = euler(x0)
        assert torch.allclose(first, expected, atol=1e-5, rtol=1e-5)
        other = torch.randn(512, 2, device=device)
        assert torch.allclose(sampler(other), euler(other), atol=1e-5, rtol=1e-5)
        assert torch.equal(first, sampler(x0))  # replays are deterministic; outputs are not aliased
        smaller = torch.randn(100, 2, device=device)  # another shape: captured anew
        assert torch.allclose(sampler(smaller), euler(smaller), atol=1e-5, rtol=1e-5)


def _no_drift(z):
    return torch.zeros_like(z[:, :2])


@pytest.mark.cuda
@CUDA
def test_sde_graph_draws_fresh_noise_each_replay_reproducibly_from_a_seed():
    backend = CUDABackend()
    device = backend.device
    ts = torch.linspace(0, 1, 11, device=device)
    generator = backend.generator(0)  # made before the capture: registered with the graph
    x0 = torch.zeros(4096, 2, device=device)
    sampler = backend.compile_sampler(_euler(_no_drift, ts, generator, sigma=1.0), x0)
    generator.manual_seed(123)
    a, b = sampler(x0), sampler(x0)
    generator.manual_seed(123)
    a2, b2 = sampler(x0), sampler(x0)
    assert torch.equal(a, a2) and torch.equal(b, b2)  # the same sequence of replays from the seed
    # With zero drift X_1 = W_1 ~ N(0, I): each replay is a fresh Brownian endpoint, independent of
    # the last (8192 values: the sd of the std is 0.008, that of the correlation 0.011).
    for endpoint in (a, b):
        assert abs(endpoint.std().item() - 1.0) < 0.05
        assert endpoint.mean().abs().item() < 0.05
    correlation = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()
    assert abs(correlation) < 0.05


@pytest.mark.cuda
@CUDA
def test_sde_graph_with_the_default_generator():
    backend = CUDABackend()
    device = backend.device
    ts = torch.linspace(0, 1, 11, device=device)
    sampler = backend.compile_sampler(
        _euler(_no_drift, ts, None, sigma=1.0), torch.zeros(1024, 2, device=device)
    )
    x0 = torch.zeros(1024, 2, device=device)
    torch.cuda.manual_seed(5)
    a, b = sampler(x0), sampler(x0)
    torch.cuda.manual_seed(5)
    assert not torch.equal(a, b)
    assert torch.equal(sampler(x0), a)


@pytest.mark.cuda
@CUDA
def test_bf16_autocast_runs_the_forward_in_bfloat16():
    backend = CUDABackend(CUDABackend.Params(precision="bf16"))
    layer = backend.prepare_module(nn.Linear(8, 8))
    x = torch.randn(4, 8, device=backend.device)
    with backend.autocast():
        assert layer(x).dtype == torch.bfloat16
    assert layer(x).dtype == torch.float32
    assert layer.weight.dtype == torch.float32  # master weights stay fp32


@pytest.mark.cuda
@CUDA
def test_cuda_generator_and_sampling_of_data_on_the_device():
    backend = CUDABackend()
    generator = backend.generator(3)
    assert generator.device.type == "cuda"
    x = torch.randn(10_000, generator=generator, device=backend.device)
    assert x.device.type == "cuda" and abs(x.std().item() - 1) < 0.05
    assert math.isfinite(x.mean().item())


@pytest.mark.cuda
@pytest.mark.slow
@CUDA
def test_compiled_module_matches_eager():
    backend = CUDABackend(CUDABackend.Params(compile=True))
    net = _velocity(backend.device)
    compiled = backend.prepare_module(net)
    x = torch.randn(256, 3, device=backend.device)
    assert torch.allclose(compiled(x), net(x), atol=1e-5, rtol=1e-5)
    assert set(map(id, compiled.parameters())) == set(map(id, net.parameters()))


# ---------------------------------------------------------------------------------------------------
# prepare_module: the module it returns is what every stage calls
# ---------------------------------------------------------------------------------------------------


class CountingModule(nn.Module):
    """Calls the module it wraps and counts the forward calls."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        return self.inner(x, t)


class CountingBackend(CPUBackend):
    """The CPU, with every prepared module wrapped in a :class:`CountingModule`."""

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self.prepared: list[CountingModule] = []

    def prepare_module(self, module: nn.Module) -> nn.Module:
        wrapper = CountingModule(super().prepare_module(module))
        self.prepared.append(wrapper)
        return wrapper


def test_the_prepared_module_is_what_training_and_sampling_call(tmp_path):
    calls_at: dict[str, int] = {}

    def flowkit_stage(run, stage, state):
        calls_at[f"{stage}:{state}"] = run.pipeline.network.calls

    manager = make_manager(
        plugins=[
            registering_plugin("counting", ("device", "counting", CountingBackend)),
            hook_plugin("watch", flowkit_stage=flowkit_stage),
        ]
    )
    path = tiny_file(tmp_path, replace={"seed = 3": 'seed = 3\ndevice = { kind = "counting" }'})
    pipeline = build_pipeline(path, (), manager)
    backend = pipeline.device
    assert isinstance(backend, CountingBackend)
    assert len(backend.prepared) == 1
    wrapper = backend.prepared[0]
    assert pipeline.network is wrapper
    assert wrapper.inner is pipeline.model  # it shares the model's parameters
    assert wrapper.calls == 0  # building calls no forward pass
    run_pipeline(pipeline, manager, out=str(tmp_path / "run"), quiet=True)
    steps = pipeline.train.steps
    trained = calls_at["train:end"] - calls_at["train:start"]
    sampled = calls_at["sample:end"] - calls_at["sample:start"]
    assert trained >= steps
    # euler: one evaluation per step for the samples and again for the recorded trajectories
    assert sampled >= pipeline.sample.steps
    assert wrapper.calls == calls_at["evaluate:end"]
