"""Memory budgets on CUDA (run where a GPU is present, reported as skipped otherwise): streamed blocks give the
resident result, the real 1.3B config renders 832x480x81 within 4, 6 and 8 GiB budgets, and renders leave the
device's allocation where they found it."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from tiny import T2V, inputs, random_official_state

import wan_core
from wan_core.models.config import PRESETS
from wan_core.runtime.memory_plan import MemoryPlan, plan_for

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: GPU tests not run")
GIB = 2**30


def _rms_rel(a, b):
    return ((a.float().cpu() - b.float().cpu()).norm() / b.float().cpu().norm()).item()


def test_streamed_blocks_on_cuda_give_the_resident_result(tmp_path):
    save_file(random_official_state(T2V, seed=2), tmp_path / "dit.safetensors")
    host = wan_core.load_dit(tmp_path / "dit.safetensors", storage_dtype=torch.bfloat16,
                             compute_dtype=torch.bfloat16)
    resident = wan_core.load_dit(tmp_path / "dit.safetensors", storage_dtype=torch.bfloat16, device="cuda")
    x, t, context, _, _ = inputs(T2V, batch=2)
    x, t, context = x.cuda(), t.cuda(), context.cuda()
    for streamed in ((0, 1), (1,)):
        plan = MemoryPlan(tuple(i for i in range(2) if i not in streamed), streamed, False, 1, 1, 0, 0)
        with torch.no_grad():
            got = host(x, t, context, render=wan_core.RenderContext(device="cuda", plan=plan))
            want = resident(x, t, context)
        assert got.device.type == "cuda" and _rms_rel(got, want) <= 1e-2
    assert next(host.parameters()).device.type == "cpu"  # the loaded model stayed in host memory


@pytest.fixture(scope="module")
def real_1_3b(tmp_path_factory):
    """The real t2v-1.3B config with random bf16 weights, loaded (memory-mapped) in host memory."""
    path = tmp_path_factory.mktemp("dit") / "dit.safetensors"
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in wan_core.WanDiT(PRESETS["t2v-1.3B"]).state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    save_file({k: (torch.randn(s, generator=gen) * 0.02).bfloat16() for k, s in shapes.items()}, path)
    return wan_core.load_dit(path, storage_dtype=torch.bfloat16, compute_dtype=torch.bfloat16)


def _render(model, budget: int) -> tuple[MemoryPlan, torch.Tensor]:
    request = wan_core.SampleRequest(832, 480, 81)
    plan = plan_for(model, request.latent_shape(), True, "cuda", budget)
    gen = torch.Generator().manual_seed(1)
    context, negative = torch.randn(1, 30, 4096, generator=gen), torch.randn(1, 60, 4096, generator=gen)
    render = wan_core.RenderContext(device="cuda", plan=plan)
    if not plan.streamed:
        model.to("cuda")
    try:
        out = wan_core.sample(model, context, negative, request=request, steps=1, cfg=5.0, seed=3, render=render)
    finally:
        model.to("cpu")
    return plan, out


@pytest.mark.parametrize("gib", [4, 6, 8])
def test_real_1_3b_480p_81_frames_stays_within_the_budget(real_1_3b, gib):
    """Allocated and reserved peaks (what the caching allocator holds, back-pressure on streamed copies
    included) both stay within the budget."""
    torch.cuda.empty_cache()
    baseline, reserved = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
    torch.cuda.reset_peak_memory_stats()
    plan, out = _render(real_1_3b, gib * GIB)
    peak = torch.cuda.max_memory_allocated() - baseline
    held = torch.cuda.max_memory_reserved() - reserved
    print(f"{gib} GiB: {plan.describe()}; measured peak {peak / GIB:.2f} GiB allocated, {held / GIB:.2f} GiB reserved")
    assert torch.isfinite(out).all() and peak <= gib * GIB and held <= gib * GIB, plan.describe()


def test_three_renders_return_to_the_baseline_allocation(real_1_3b):
    """After a first render (cuBLAS and attention workspaces are made once per process and kept), every render,
    streamed or resident, gives back all it allocated."""
    _render(real_1_3b, 3 * GIB)  # warm-up: a streamed plan
    torch.cuda.empty_cache()
    baseline = torch.cuda.memory_allocated()
    for gib in (3, 8, 80):
        plan = _render(real_1_3b, gib * GIB)[0]  # the output latent is not held while the allocation is read
        assert torch.cuda.memory_allocated() == baseline, plan.describe()
