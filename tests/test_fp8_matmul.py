"""fp8 matrix products (``compute_dtype="fp8"``): torch._scaled_mm runs on the CPU in torch 2.13, so the path a GPU
with fp8 tensor cores takes is checked here: one layer against the fp32 product of the dequantized operands, a
tiny model within the fp8 error of the cast path, exactly the layers it is meant for, and the render context
doing it without changing the loaded model."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import save_file
from tiny import I2V, T2V, inputs, random_official_state
from tiny_lora import block_modules, random_lora, write_lora

import wan_core
from wan_core.errors import InputError
from wan_core.models.config import DiTConfig
from wan_core.runtime import fp8_matmul
from wan_core.runtime.fp8_matmul import fp8_linear, render_scaling


def _scaled_mm_on_cpu() -> bool:
    try:
        one = torch.ones(16, 16).to(torch.float8_e4m3fn)
        torch._scaled_mm(one, one.t(), torch.ones(()), torch.ones(()), out_dtype=torch.bfloat16)
        return True
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


pytestmark = pytest.mark.skipif(not _scaled_mm_on_cpu(), reason=f"torch {torch.__version__} has no torch._scaled_mm "
                                "on the CPU (2.13 has): the CPU checks of fp8 matrix products are not run")
FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
# fp8 e4m3 keeps 3 mantissa bits where bf16 keeps 7: rounding an activation to it errs 2^4 = 16x more, and to first
# order the output error scales with it. Bound: that ratio with a 2x margin over the error of bf16 activations.
FP8_VS_BF16 = 32
BLOCK_LINEARS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
                 "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")


def _rms_rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _scaled_fp8_file(state, path, per_row=False):
    """A ComfyUI-style scaled-fp8 file: each 2-D weight as fp8(w / s), s = absmax / 448 per tensor (or per row)."""
    out = {"scaled_fp8": torch.zeros(0, dtype=FP8)}
    for key, value in state.items():
        if key.endswith(".weight") and value.dim() == 2:
            scale = (value.abs().amax(dim=1) if per_row else value.abs().max().reshape(1)) / FP8_MAX
            out[key] = (value / scale.reshape(-1, 1)).to(FP8)
            out[key[: -len("weight")] + "scale_weight"] = scale
        else:
            out[key] = value
    save_file({f"model.diffusion_model.{k}": v for k, v in out.items()}, path)
    return path


def _reference_product(x, weight, weight_scale, bias, per_token):
    """The fp32 product of the dequantized operands: the input divided by its power-of-two scale (the largest
    magnitude of each row, or of the whole input, brought to at most 448), rounded to fp8 and multiplied back;
    the weight's fp8 values times their scale. Written from the definition with plain fp32 operations."""
    rows = x.reshape(-1, x.shape[-1]).float()
    peak = rows.abs().amax(dim=1, keepdim=True) if per_token else rows.abs().max().expand(rows.shape[0], 1)
    scale = torch.where(peak > 0, 2.0 ** torch.ceil(torch.log2(peak / FP8_MAX)), torch.ones_like(peak))
    a = (rows / scale).to(FP8).float() * scale
    w = weight.float() * (1.0 if weight_scale is None else weight_scale.float().reshape(-1, 1))
    out = a @ w.t() + (0 if bias is None else bias.float())
    return out.reshape(*x.shape[:-1], -1)


@pytest.mark.parametrize("scaling", ["token", "tensor"])
@pytest.mark.parametrize("scale_kind", ["none", "scalar", "per_row"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_layer_is_the_product_of_its_dequantized_operands(scaling, scale_kind, dtype):
    """Per token and per tensor, with no weight scale, ComfyUI's one scale per layer, or one per output row: the
    result is the fp32 product of what fp8 holds, to bf16's rounding (16x finer than fp8's)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 37, 64, generator=gen).to(dtype)  # 74 tokens: not a multiple of anything
    weight = (torch.randn(48, 64, generator=gen) * 50).to(FP8)
    bias = torch.randn(48, generator=gen)
    weight_scale = {"none": None, "scalar": torch.tensor([0.003]),
                    "per_row": torch.rand(48, generator=gen) * 0.01 + 1e-3}[scale_kind]
    got = fp8_linear(x, weight, weight_scale, bias, scaling)
    assert got.shape == (2, 37, 48) and got.dtype == dtype
    product = _reference_product(x, weight, weight_scale, None, scaling == "token")
    # bf16 roundings, each at most 2^-8 of its value: the product as written, after per-row scales, the bias, the sum
    step = 2.0 ** -8 * (2 * product.abs() + bias.abs() + (product + bias).abs())
    assert ((got.float() - (product + bias)).abs() <= step + 1e-6).all()


def test_per_token_scales_keep_small_tokens_that_one_scale_loses():
    """Tokens of very different magnitudes: with one scale per token each keeps fp8's relative precision; with
    one scale for the whole input the small token falls below fp8's smallest value."""
    x = torch.randn(2, 64, generator=torch.Generator().manual_seed(1)) * torch.tensor([[1000.0], [1e-4]])
    weight = torch.randn(32, 64, generator=torch.Generator().manual_seed(2)).to(FP8)
    exact = x @ weight.float().t()
    token, tensor = fp8_linear(x, weight, None, None, "token"), fp8_linear(x, weight, None, None, "tensor")
    assert _rms_rel(token[1], exact[1]) < 0.1 and _rms_rel(token[0], exact[0]) < 0.1
    assert _rms_rel(tensor[1], exact[1]) > 0.5


@pytest.fixture(scope="module")
def scaled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fp8")
    return {cfg.model_type: _scaled_fp8_file(random_official_state(cfg, seed=5),
                                             folder / f"{cfg.model_type}.safetensors") for cfg in (T2V, I2V)}


def _forward(model, cfg, **render):
    x, t, context, clip_fea, y = inputs(cfg)
    with torch.no_grad():
        return model(x, t, context, clip_fea, y, render=wan_core.RenderContext(**render))


@pytest.mark.parametrize("cfg", [T2V, I2V], ids=["t2v", "i2v"])
def test_tiny_model_within_fp8_error_of_the_cast_path(scaled, cfg, monkeypatch):
    """The whole DiT with its blocks multiplying in fp8 stays within the fp8 error of the cast path (bound: the
    error bf16 activations make, times the precision ratio), and every block Linear went through _scaled_mm."""
    model = wan_core.load_dit(scaled[cfg.model_type])
    cast = _forward(model, cfg)
    bf16 = _forward(model, cfg, compute_dtype=torch.bfloat16)
    calls = []
    real = torch._scaled_mm
    monkeypatch.setattr(torch, "_scaled_mm", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    fast = _forward(model, cfg, fp8_matmul=True)
    per_block = len(BLOCK_LINEARS) + (2 if cfg.has_image_branch else 0)
    assert len(calls) == cfg.num_layers * per_block
    error = _rms_rel(fast, cast)
    assert 0 < error <= FP8_VS_BF16 * _rms_rel(bf16, cast), (error, _rms_rel(bf16, cast))
    assert torch.equal(_forward(model, cfg), cast)  # the loaded model is as it was


def test_fp8_products_render_the_demo_model(tmp_path):
    """A whole render (sampler, CFG, 3 steps) of the demo DiT held in fp8 with fp8 products: finite, and within the
    fp8 error of the same render through the cast path."""
    from wan_core.demo import DEMO_SIZE, write_demo_models

    paths = write_demo_models(tmp_path)
    model = wan_core.load_dit(paths["diffusion_models"], fp8_matmul=True)
    assert model.fp8_matmul and model.blocks[0].ffn[0].weight.dtype == FP8
    context = torch.randn(1, 7, model.config.text_dim, generator=torch.Generator().manual_seed(3))
    size = wan_core.SampleRequest(DEMO_SIZE["width"], DEMO_SIZE["height"], DEMO_SIZE["frames"])

    def render(**options):
        return wan_core.sample(model, context, torch.zeros_like(context), request=size, steps=3, seed=4,
                               render=wan_core.RenderContext(**options))

    cast, fast, bf16 = render(), render(fp8_matmul=True), render(compute_dtype=torch.bfloat16)
    assert torch.isfinite(fast).all()
    assert 0 < _rms_rel(fast, cast) <= FP8_VS_BF16 * _rms_rel(bf16, cast)


VACE = DiTConfig("vace", dim=256, ffn_dim=384, num_layers=2, text_dim=64, vace_layers=(0, 1))
ODD = DiTConfig("t2v", dim=256, ffn_dim=392, num_layers=2, text_dim=64)  # 392 is not a multiple of 16


def _marked(view) -> set[str]:
    return {name for name, module in view.named_modules() if module.__dict__.get("fp8_scaling")}


def test_exactly_the_block_linears_multiply_in_fp8(tmp_path):
    """The layers chosen, listed by hand: every Linear of every block (image keys / values of i2v, VACE's blocks
    with their in / out projections), not the embeddings, the time projection, the image projection or the head,
    although their weights are fp8 too; a Linear whose side is not a multiple of 16 keeps the cast path."""
    expected = {
        I2V: {f"blocks.{i}.{m}" for i in range(2) for m in (*BLOCK_LINEARS, "cross_attn.k_img", "cross_attn.v_img")},
        VACE: {f"{kind}.{i}.{m}" for kind in ("blocks", "vace_blocks") for i in range(2) for m in BLOCK_LINEARS}
        | {"vace_blocks.0.before_proj", "vace_blocks.0.after_proj", "vace_blocks.1.after_proj"},
        ODD: {f"blocks.{i}.{m}" for i in range(2) for m in BLOCK_LINEARS if not m.startswith("ffn")},
    }
    for cfg, names in expected.items():
        model = wan_core.load_dit(_scaled_fp8_file(random_official_state(cfg, seed=2), tmp_path / "m.safetensors"))
        assert model.head.head.weight.dtype == FP8 and model.text_embedding[0].weight.dtype == FP8
        view = wan_core.RenderContext(fp8_matmul=True).patched(model)
        assert _marked(view) == names, cfg.model_type
        assert _marked(model) == set()


def test_layers_outside_the_blocks_compute_as_the_cast_path(scaled):
    """The embeddings (text, time, patch) and the head give the same bits with and without fp8 products."""
    model = wan_core.load_dit(scaled["t2v"])
    x, t, context, _, _ = inputs(T2V)
    plain, fast = wan_core.RenderContext(), wan_core.RenderContext(fp8_matmul=True)
    with torch.no_grad():
        a, b = plain.patched(model).embed(x, t, context, render=plain), fast.patched(model).embed(x, t, context,
                                                                                                  render=fast)
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.e, b.e) and torch.equal(a.inputs.text, b.inputs.text)
        tokens = torch.randn_like(a.tokens)
        assert torch.equal(plain.patched(model).apply_head(tokens, a), fast.patched(model).apply_head(tokens, b))


def test_per_row_weight_scales_and_plain_fp8(tmp_path):
    """Per-row scaled-fp8 files and plain fp8 storage (no scale) multiply in fp8 too, within the fp8 error."""
    state = random_official_state(T2V, seed=8)
    save_file(state, tmp_path / "fp32.safetensors")
    models = {"per_row": wan_core.load_dit(_scaled_fp8_file(state, tmp_path / "rows.safetensors", per_row=True)),
              "plain": wan_core.load_dit(tmp_path / "fp32.safetensors", storage_dtype=FP8)}
    for name, model in models.items():
        cast, bf16 = _forward(model, T2V), _forward(model, T2V, compute_dtype=torch.bfloat16)
        view = wan_core.RenderContext(fp8_matmul=True).patched(model)
        assert len(_marked(view)) == 2 * len(BLOCK_LINEARS), name
        assert 0 < _rms_rel(_forward(model, T2V, fp8_matmul=True), cast) <= FP8_VS_BF16 * _rms_rel(bf16, cast), name


def test_lora_terms_add_to_fp8_products(scaled, tmp_path):
    """A LoRA on an fp8 model stays unmerged (its low-rank terms add where the layer computes) and adds to the fp8
    product as to the cast one: the LoRA's effect survives, within the fp8 error."""
    path = write_lora(tmp_path / "l.safetensors", random_lora(T2V, block_modules(T2V), scale=0.3))
    model = wan_core.load_dit(scaled["t2v"])
    patched = wan_core.apply_loras(model, [(path, 1.0)])
    base, cast = _forward(model, T2V), _forward(patched, T2V)
    bf16 = _forward(patched, T2V, compute_dtype=torch.bfloat16)
    fast = _forward(patched, T2V, fp8_matmul=True)
    view = wan_core.RenderContext(fp8_matmul=True).patched(patched)
    assert view.blocks[0].ffn[0].low_rank and view.blocks[0].ffn[0].fp8_scaling == "token"
    assert _rms_rel(fast, cast) <= FP8_VS_BF16 * _rms_rel(bf16, cast) < _rms_rel(base, cast)


def test_streamed_blocks_keep_their_fp8_products(scaled):
    """A plan that streams blocks runs the same fp8 products, bit for bit (placement copies the marked layers)."""
    model = wan_core.load_dit(scaled["t2v"])
    resident = _forward(model, T2V, fp8_matmul=True)
    plan = wan_core.MemoryPlan((), (0, 1), False, 1, 0, 0, 0, False)
    assert torch.equal(_forward(model, T2V, fp8_matmul=True, plan=plan), resident)


def _cuda(monkeypatch, capability, platform="linux"):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(fp8_matmul.sys, "platform", platform)
    return torch.device("cuda")


class _Model:
    fp8_matmul = True
    compute_dtype = torch.bfloat16


@pytest.mark.parametrize("capability, platform, expected", [
    ((9, 0), "linux", "token"), ((10, 0), "linux", "token"), ((8, 9), "linux", "tensor"), ((9, 0), "win32", "tensor"),
    ((8, 6), "linux", None), ((7, 5), "linux", None)])
def test_the_render_chooses_by_the_gpu(monkeypatch, caplog, capability, platform, expected):
    """As the model asks: per-token scales from Hopper on (not Windows builds, which lack the row-wise kernel),
    per-tensor on Ada, the cast path with one log line below 8.9; asked for explicitly there, a clear error."""
    device = _cuda(monkeypatch, capability, platform)
    with caplog.at_level(logging.WARNING, logger="wan_core.runtime.fp8_matmul"):
        assert render_scaling(_Model(), device, None) == expected
    assert ("no fp8 tensor cores" in caplog.text) == (expected is None)
    if expected is None:
        with pytest.raises(InputError, match=r"compute capability \d+\.\d.*choose compute dtype default"):
            render_scaling(_Model(), device, True)
    assert render_scaling(_Model(), device, False) is None


def test_on_the_cpu_a_model_loaded_for_fp8_products_computes_as_before(scaled, monkeypatch, caplog):
    """The CPU default is the cast path in fp32 (one log line per render says why); not a DiT: never."""
    model = wan_core.load_dit(scaled["t2v"], fp8_matmul=True)
    monkeypatch.setattr(torch, "_scaled_mm", lambda *a, **k: pytest.fail("fp8 product on the CPU by default"))
    with caplog.at_level(logging.WARNING, logger="wan_core.runtime.fp8_matmul"):
        got = _forward(model, T2V)
    assert caplog.text.count("fp8 matrix products are off") == 1
    assert torch.equal(got, _forward(wan_core.load_dit(scaled["t2v"]), T2V))
    assert render_scaling(torch.nn.Linear(16, 16), torch.device("cpu"), True) is None


def test_loading_for_fp8_products(tmp_path):
    """A bf16 file is held in fp8 for it; another weight dtype or a GGUF file is refused before anything is read."""
    half = {k: v.to(torch.bfloat16) for k, v in random_official_state(T2V, seed=1).items()}
    save_file(half, tmp_path / "m.safetensors")
    model = wan_core.load_dit(tmp_path / "m.safetensors", fp8_matmul=True)
    assert model.fp8_matmul and model.blocks[1].cross_attn.o.weight.dtype == FP8
    assert not wan_core.load_dit(tmp_path / "m.safetensors").fp8_matmul
    with pytest.raises(InputError, match="weight dtype torch.bfloat16.*fp8_e4m3fn"):
        wan_core.load_dit(tmp_path / "m.safetensors", storage_dtype="bf16", fp8_matmul=True)
    with pytest.raises(InputError, match="GGUF.*block-quantized"):
        wan_core.load_dit(tmp_path / "absent.gguf", fp8_matmul=True)


def test_cli_fp8_compute(tmp_path, capsys, caplog):
    """``--compute-dtype fp8`` renders the demo on the CPU through the cast path and says so; with bf16 storage it
    fails before any model loads."""
    from wan_core.cli import main

    base = ["t2v", "--demo", "--models", str(tmp_path / "models"), "--prompt", "a fox", "--steps", "1",
            "--compute-dtype", "fp8"]
    with caplog.at_level(logging.WARNING):
        assert main([*base, "--out", str(tmp_path / "a.mp4")]) == 0
    assert (tmp_path / "a.mp4").exists() and "fp8 matrix products are off" in caplog.text
    assert main([*base, "--storage-dtype", "bf16", "--out", str(tmp_path / "b.mp4")]) == 2
    assert "fp8 matrix products need fp8 weights" in capsys.readouterr().err and not (tmp_path / "b.mp4").exists()

