"""What the memory plan counts besides activations (issue 21, item 7): the bytes a render's view of the model places
(LoRA copies merged, low-rank pairs unmerged), measured on the view itself, and the temporaries one layer makes to
compute its weight (a cast copy, a GGUF weight dequantized in chunks), measured on the live tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from live_bytes import LiveBytes
from test_gguf import _random_blocks

import wan_core
from wan_core.models.config import PRESETS
from wan_core.models.layers import CastLinear
from wan_core.models.quantized import BLOCKS, QuantizedLinear
from wan_core.runtime import memory
from wan_core.runtime.memory_plan import placed_bytes, plan_for, weight_temporary_bytes
from wan_core.runtime.patches import LowRank, WeightPatchSum
from wan_core.runtime.streaming import module_bytes

BLOCK_LINEARS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
                 "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")


def _model(name: str, stored: torch.dtype):
    """A real config on ``meta``: the block Linear weights stored as ``stored``, everything else bf16."""
    with torch.device("meta"):
        model = wan_core.WanDiT(PRESETS[name], compute_dtype=torch.bfloat16).to(torch.bfloat16)
    for module in model.blocks.modules():
        if isinstance(module, CastLinear):
            module.weight = torch.nn.Parameter(module.weight.to(stored), requires_grad=False)
    return model


def _with_lora(model, rank: int, unmerged: bool | None, extra: tuple[str, ...] = ()):
    """A handle carrying a rank-``rank`` LoRA on every block Linear (and on ``extra`` parameters), as apply_loras
    makes one."""
    import copy

    patches = {}
    params = dict(model.named_parameters())
    names = [f"blocks.{i}.{m}.weight" for i in range(model.config.num_layers) for m in BLOCK_LINEARS] + list(extra)
    for name in names:
        out, inp = params[name].shape
        update = LowRank(torch.empty(out, rank, device="meta"), torch.empty(rank, inp, device="meta"), 1.0)
        patches[name] = WeightPatchSum(((update, 0.8),), unmerged)
    handle = copy.copy(model)
    handle.weight_patches = patches
    return handle


@pytest.mark.parametrize("name, stored, unmerged", [
    ("t2v-14B", torch.float8_e4m3fn, None),  # fp8: the low-rank pairs stay unmerged
    ("t2v-14B", torch.float8_e4m3fn, False),  # forced merged: bf16 copies of fp8 weights, twice the bytes
    ("t2v-1.3B", torch.bfloat16, None),  # bf16: merged copies in place of the weights, the same bytes
    ("t2v-1.3B", torch.bfloat16, True)])
def test_the_plan_counts_the_bytes_the_render_view_places(name, stored, unmerged):
    """Per block and for the rest, the plan's weight bytes are the bytes of the view a render makes (built on meta
    by the render context and measured with module_bytes), not those of the loaded model."""
    model = _model(name, stored)
    handle = _with_lora(model, 64, unmerged, extra=("head.head.weight",))
    view = wan_core.RenderContext().patched(handle)
    blocks, other = placed_bytes(handle, torch.bfloat16)
    assert blocks == [module_bytes(b) for b in view.blocks]
    view_blocks = sum(blocks)
    assert other == module_bytes(view) - view_blocks + weight_temporary_bytes(model, torch.bfloat16)
    loaded, layers = sum(module_bytes(b) for b in model.blocks), model.config.num_layers
    params = dict(model.named_parameters())
    pairs = layers * sum(64 * sum(params[f"blocks.0.{m}.weight"].shape) * 2 for m in BLOCK_LINEARS)  # bf16 up, down
    fp8_weights = layers * sum(params[f"blocks.0.{m}.weight"].numel() for m in BLOCK_LINEARS) * (stored.itemsize == 1)
    expected = {None: loaded + pairs if stored.itemsize == 1 else loaded, True: loaded + pairs,
                False: loaded + fp8_weights}  # merged into bf16: each fp8 byte becomes two
    assert view_blocks == expected[unmerged]
    shape = wan_core.SampleRequest(1280, 720, 81).latent_shape()
    with_lora = plan_for(handle, shape, True, "cuda", wan_core.UNLIMITED)
    assert with_lora.peak - plan_for(model, shape, True, "cuda", wan_core.UNLIMITED).peak == \
        view_blocks + other - sum(placed_bytes(model, torch.bfloat16)[0]) - placed_bytes(model, torch.bfloat16)[1]


def test_a_cast_weight_is_one_copy_in_the_compute_dtype():
    """fp8 (scaled: the scale multiplies the copy in place) to bf16: the live temporaries of one Linear call are its
    cast weight and its output, as the plan counts; a LoRA's low-rank terms add in place (an [M, r] temporary)."""
    layer = CastLinear(1024, 2048, bias=True)
    layer.weight = torch.nn.Parameter(torch.randn(2048, 1024).to(torch.float8_e4m3fn), requires_grad=False)
    layer.scale_weight = torch.tensor([0.01])
    layer.add_low_rank(torch.randn(16, 1024, dtype=torch.bfloat16), torch.randn(2048, 16, dtype=torch.bfloat16), 0.5)
    x = torch.randn(64, 1024, dtype=torch.bfloat16)
    with torch.no_grad(), LiveBytes([x, *layer.parameters(), *layer.buffers()]) as live:
        out = layer(x)
    rank_temp = 64 * 16 * 2
    assert live.peak <= weight_temporary_bytes(layer, torch.bfloat16) + out.numel() * 2 + rank_temp + 4096


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_K", "Q5_K", "Q6_K"])
def test_a_gguf_weight_dequantizes_within_what_the_plan_counts(qtype, monkeypatch):
    """A weight of 64 chunks: the live temporaries of one call stay within the plan's count (the dequantized weight
    in the compute dtype and one chunk's float32 work), far below dequantizing it whole (~3x its fp32 size)."""
    values, size = BLOCKS[qtype]
    monkeypatch.setattr(memory, "DEQUANTIZE_CHUNK", 4096)
    rows, per_row = 512, 512 // values
    raw = torch.from_numpy(np.ascontiguousarray(_random_blocks(qtype, rows=rows, blocks_per_row=per_row, seed=3)))
    layer = QuantizedLinear(512, rows, bias=False)
    layer.weight = torch.nn.Parameter(raw.reshape(-1), requires_grad=False)
    layer.qtype, layer.weight_shape = qtype, (rows, 512)
    x = torch.randn(8, 512, dtype=torch.bfloat16)
    with torch.no_grad(), LiveBytes([x, raw, *layer.parameters()]) as live:
        out = layer(x)
    counted = weight_temporary_bytes(layer, torch.bfloat16)
    assert counted == rows * 512 * 2 + 16 * 4096
    assert live.peak <= counted + out.numel() * 2
    assert live.peak < rows * 512 * 4  # dequantized whole: ~3 fp32 copies of the weight
