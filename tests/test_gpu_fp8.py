"""fp8 matrix products on a CUDA GPU with fp8 tensor cores (run where there is one, reported as skipped otherwise):
torch's GPU kernels against the same checks as the CPU's in tests/test_fp8_matmul.py."""

from __future__ import annotations

import pytest
import torch
from test_fp8_matmul import FP8, _reference_product, _rms_rel, _scaled_fp8_file
from tiny import I2V, inputs, random_official_state

import wan_core
from wan_core.runtime.fp8_matmul import activation_scaling, fp8_linear, fp8_matmul_unavailable


def _fp8_gpu() -> bool:
    return torch.cuda.is_available() and fp8_matmul_unavailable(torch.device("cuda")) is None


@pytest.mark.skipif(not _fp8_gpu(), reason="no CUDA GPU with fp8 tensor cores (compute capability 8.9+): not run")
@pytest.mark.parametrize("scale_kind", ["scalar", "per_row"])
def test_on_an_fp8_gpu_one_layer_and_the_model(tmp_path, scale_kind):
    """On the GPU's own kernels (the scaling it chooses): one layer within bf16 rounding of the dequantized
    operands' fp32 product, the tiny i2v model within the fp8 error of its cast path, all in bf16."""
    device = torch.device("cuda")
    scaling = activation_scaling(device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 256, generator=gen).to(device, torch.bfloat16)
    weight = (torch.randn(512, 256, generator=gen) * 50).to(FP8).to(device)
    bias = torch.randn(512, generator=gen).to(device)
    weight_scale = torch.tensor([0.003]) if scale_kind == "scalar" else torch.rand(512, generator=gen) * 0.01
    weight_scale = weight_scale.to(device)
    product = _reference_product(x, weight, weight_scale, None, scaling == "token")
    got = fp8_linear(x, weight, weight_scale, bias, scaling).float()
    step = 2.0 ** -8 * (2 * product.abs() + bias.abs() + (product + bias).abs())
    assert ((got - (product + bias)).abs() <= 2 * step + 1e-3).all()  # fp32 accumulation order differs
    path = _scaled_fp8_file(random_official_state(I2V, seed=5), tmp_path / "i2v.safetensors", scale_kind == "per_row")
    model = wan_core.load_dit(path, compute_dtype=torch.bfloat16, device=device)
    x, t, context, clip_fea, y = (v.to(device) for v in inputs(I2V))
    with torch.no_grad():
        cast = model(x, t, context, clip_fea, y, render=wan_core.RenderContext(fp8_matmul=False))
        fast = model(x, t, context, clip_fea, y, render=wan_core.RenderContext())  # as the model asks: no
        assert torch.equal(fast, cast)
        fast = model(x, t, context, clip_fea, y, render=wan_core.RenderContext(fp8_matmul=True))
    assert 0 < _rms_rel(fast, cast) < 0.1
