"""CUDA checks (run where a GPU is present, reported as skipped otherwise): the same weights and
seed give the CPU fp32 result within bf16 precision, and sizes that fit the budget decode."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from tiny import T2V, inputs, random_official_state
from tiny_vae import reference_vae

import wan_core
from wan_core import SampleRequest

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: GPU tests not run")


def _rms_rel(a, b):
    return ((a.float().cpu() - b.float().cpu()).norm() / b.float().cpu().norm()).item()


def test_dit_bf16_on_cuda_matches_fp32_on_cpu(tmp_path):
    save_file(random_official_state(T2V, seed=2), tmp_path / "dit.safetensors")
    cpu = wan_core.load_dit(tmp_path / "dit.safetensors")
    gpu = wan_core.load_dit(tmp_path / "dit.safetensors", storage_dtype=torch.bfloat16, device="cuda")
    assert gpu.compute_dtype == torch.bfloat16
    x, t, context, _, _ = inputs(T2V, batch=2)
    with torch.no_grad():
        want = cpu(x, t, context)
        got = gpu(x.cuda(), t.cuda(), context.cuda())
    assert got.device.type == "cuda" and _rms_rel(got, want) <= 0.03


def test_sampling_on_cuda_uses_the_cpu_seeded_noise(tmp_path):
    save_file(random_official_state(T2V, seed=2), tmp_path / "dit.safetensors")
    context = torch.randn(1, 5, T2V.text_dim)
    results = []
    for device in ("cpu", "cuda"):
        dit = wan_core.load_dit(tmp_path / "dit.safetensors", device=device, compute_dtype=torch.float32)
        results.append(wan_core.sample(dit, context, None, request=SampleRequest(64, 48, 5), seed=7, steps=3,
                                       cfg=1.0))
    assert _rms_rel(results[1], results[0]) <= 1e-3


@pytest.mark.parametrize("tf32, tolerance", [(False, 1e-5), (True, 1e-2)])
def test_vae_on_cuda(tmp_path, monkeypatch, tf32, tolerance):
    """fp32 on CUDA equals the CPU's to fp32 rounding with TF32 off; with TF32 (cuDNN's default for convolutions
    on Ampere and newer: 10-bit mantissas) within its coarser error, so neither figure hides the other."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", tf32)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", tf32)
    torch.save(reference_vae().state_dict(), tmp_path / "vae.pth")
    cpu = wan_core.load_vae(tmp_path / "vae.pth")
    gpu = wan_core.load_vae(tmp_path / "vae.pth", compute_dtype=torch.float32, device="cuda")
    z = torch.randn(1, 16, 3, 8, 8)
    assert _rms_rel(gpu.decode(z.cuda()), cpu.decode(z)) <= tolerance
