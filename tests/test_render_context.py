"""The seams of a render (DESIGN §9): the DiT in three stages, the render context, attention backends,
weight patches, and the promise that a render never changes the loaded model."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import I2V, T2V, CountingRunner, inputs, random_official_state

import wan_core
import wan_core.demo
from wan_core import RenderContext, WeightDelta

RECORDED = Path(__file__).parent / "data" / "dit_before_seams.safetensors"
"""Outputs of the tiny models recorded with the code before the render context existed (commit 1e34a2c):
the same seeds and calls as :func:`_recorded_calls` below."""


def _model(cfg, seed):
    model = wan_core.WanDiT(cfg)
    model.load_state_dict(random_official_state(cfg, seed=seed))
    return model.eval().requires_grad_(False)


def _recorded_calls(render):
    """The calls the recording made, now with a render context (None: the defaults)."""
    out = {}
    for cfg, seed in ((T2V, 11), (I2V, 12)):
        model = _model(cfg, seed)
        x, t, context, clip_fea, y = inputs(cfg, batch=2, seed=13)
        with torch.no_grad():
            out[f"{cfg.model_type}_forward"] = model(x, t, context, clip_fea=clip_fea, y=y, render=render)
        if cfg.model_type == "t2v":
            gen = torch.Generator().manual_seed(14)
            pos, neg = torch.randn(1, 6, cfg.text_dim, generator=gen), torch.randn(1, 9, cfg.text_dim, generator=gen)
            out["t2v_sample_unipc"] = wan_core.sample(model, pos, neg, request=wan_core.SampleRequest(80, 64, 5),
                                                      seed=15, steps=4, cfg=5.0, shift=5.0, sampler="unipc",
                                                      render=render)
    return out


def _state_hash(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


KERNEL_NOISE = 2e-5
"""Largest difference, relative to the output's scale, that other CPU kernels make in these calls (measured: up to
6e-7 in a forward and 3e-6 over 4 sampling steps between two machines; a change of the math moves them by far more)."""


@pytest.mark.parametrize("render", [None, RenderContext()], ids=["no context", "default context"])
def test_default_context_matches_the_code_before_it(render):
    """The recorded outputs of the code before the render context, within what other CPU kernels change (bit
    identity to a recording holds only on the machine's own kernels: same capability string is not enough)."""
    recorded = load_file(RECORDED)
    recorded.pop("cpu_capability")
    got = _recorded_calls(render)
    assert set(got) == set(recorded)
    for key, value in recorded.items():
        scale = value.abs().max().item()
        torch.testing.assert_close(got[key], value, rtol=0, atol=KERNEL_NOISE * scale, msg=key)


def test_no_context_and_the_default_context_are_bit_identical():
    """The same kernels in one process: the default render context changes no bit of any call."""
    plain, default = _recorded_calls(None), _recorded_calls(RenderContext())
    assert all(torch.equal(plain[key], default[key]) for key in plain)


@pytest.mark.parametrize("cfg", [T2V, I2V], ids=["t2v", "i2v"])
def test_forward_is_embed_then_blocks_then_head(cfg):
    model = _model(cfg, seed=3)
    x, t, context, clip_fea, y = inputs(cfg, batch=2)
    render = RenderContext()
    with torch.no_grad():
        whole = model(x, t, context, clip_fea=clip_fea, y=y, render=render)
        embedded = model.embed(x, t, context, clip_fea, y, render)
        h = embedded.tokens
        for block in model.blocks:  # the block loop written out by hand
            h = block(h, embedded.inputs)
        by_hand = model.apply_head(h, embedded)
    assert torch.equal(whole, by_hand)
    assert embedded.tokens.shape == (2, 3 * 4 * 5, cfg.dim) and embedded.grid == (3, 4, 5)


def test_the_block_loop_goes_through_the_contexts_runner():
    model = _model(T2V, seed=3)
    runner = CountingRunner()
    x, t, context, _, _ = inputs(T2V)
    wan_core.sample(model, context, context.flip(1), request=wan_core.SampleRequest(80, 64, 5), steps=3, cfg=5.0,
                    render=RenderContext(runner=runner))
    assert runner.blocks_run == 3 * T2V.num_layers  # one batched (cond + uncond) forward per step


def test_attention_goes_through_the_named_backend():
    calls = []

    def recording_sdpa(q, k, v):
        calls.append((q.shape, k.shape))
        return wan_core.get_attention("sdpa").attend(q, k, v)

    name = "test-recording"
    if name not in wan_core.attention_backends():
        wan_core.register_backend(wan_core.AttentionBackend(name, recording_sdpa))
    model = _model(T2V, seed=3)
    x, t, context, _, _ = inputs(T2V)
    with torch.no_grad():
        want = model(x, t, context)
        got = model(x, t, context, render=RenderContext(attention=name))
    assert torch.equal(got, want)
    tokens = 3 * 4 * 5
    assert len(calls) == 2 * T2V.num_layers  # self- and cross-attention in every block
    assert calls[0] == ((1, tokens, T2V.num_heads, 128), (1, tokens, T2V.num_heads, 128))
    assert calls[1] == ((1, tokens, T2V.num_heads, 128), (1, T2V.text_len, T2V.num_heads, 128))


def test_an_unknown_attention_backend_is_a_clear_error_listing_the_known_ones():
    with pytest.raises(wan_core.InputError, match=r"attention backend 'flashy' is unknown; choose one of sdpa"):
        RenderContext(attention="flashy")
    with pytest.raises(wan_core.InputError, match="'nope' is unknown"):
        wan_core.get_attention("nope")


def test_a_render_with_patches_leaves_the_model_bit_identical_and_equals_a_merged_model(tmp_path):
    """A full-weight delta on a Linear, a norm and the head, applied through the context, equals a model
    loaded from a state dict merged by hand; the loaded model's state dict does not change at all."""
    state = random_official_state(T2V, seed=4)
    gen = torch.Generator().manual_seed(9)
    deltas = {name: 0.05 * torch.randn(state[name].shape, generator=gen)
              for name in ("blocks.0.self_attn.q.weight", "blocks.1.ffn.2.bias", "blocks.1.norm3.weight",
                           "blocks.0.modulation", "head.head.weight")}
    strength = 0.7
    model = _model(T2V, seed=4)
    before = _state_hash(model)
    merged = wan_core.WanDiT(T2V)
    merged.load_state_dict({k: v + strength * deltas[k] if k in deltas else v for k, v in state.items()})
    merged.eval().requires_grad_(False)
    render = RenderContext(patches={k: WeightDelta(d, strength) for k, d in deltas.items()})

    x, t, context, _, _ = inputs(T2V, batch=2)
    with torch.no_grad():
        plain = model(x, t, context)
        patched = model(x, t, context, render=render)
        expected = merged(x, t, context)
    torch.testing.assert_close(patched, expected, rtol=0, atol=1e-5 * expected.abs().max().item())
    assert (patched - plain).abs().max() > 1e-3  # the patches did change the output
    raw = wan_core.sample(model, context[:1], context[1:], request=wan_core.SampleRequest(80, 64, 5), steps=2,
                          render=render)
    assert raw.shape == (1, 16, 2, 8, 10)
    assert _state_hash(model) == before
    with torch.no_grad():
        assert torch.equal(model(x, t, context), plain)  # and the next render without patches is unchanged


def test_patches_that_do_not_fit_the_model_are_refused_by_name():
    model = _model(T2V, seed=4)
    x, t, context, _, _ = inputs(T2V)
    wrong_name = RenderContext(patches={"blocks.7.self_attn.q.weight": WeightDelta(torch.zeros(256, 256))})
    with pytest.raises(wan_core.InputError, match=r"not in this model: blocks\.7\.self_attn\.q\.weight"):
        model(x, t, context, render=wrong_name)
    wrong_shape = RenderContext(patches={"blocks.0.self_attn.q.weight": WeightDelta(torch.zeros(128, 128))})
    with pytest.raises(wan_core.InputError, match=r"shape \(128, 128\).*\(256, 256\)"):
        model(x, t, context, render=wrong_shape)


def test_a_render_context_computes_in_its_own_dtype_without_touching_the_model():
    model = _model(T2V, seed=5)
    x, t, context, _, _ = inputs(T2V)
    with torch.no_grad():
        fp32 = model(x, t, context)
        bf16 = model(x, t, context, render=RenderContext(compute_dtype=torch.bfloat16))
    assert model.compute_dtype == torch.float32
    error = ((bf16 - fp32).norm() / fp32.norm()).item()
    assert 1e-5 < error < 0.05  # a bf16 computation: close, not equal
    with pytest.raises(wan_core.InputError, match="compute dtype"):
        RenderContext(compute_dtype=torch.float8_e4m3fn)


def test_the_text_encoders_block_loop_goes_through_a_runner_too(tmp_path):
    encoder = wan_core.load_text_encoder(wan_core.demo.write_demo_models(tmp_path)["text_encoders"])
    runner = CountingRunner()
    prompts = ["a red fox", "snow falling on a quiet street at night"]
    assert torch.equal(encoder.encode(prompts, runner=runner), encoder.encode(prompts))
    assert runner.blocks_run == encoder.model.config.num_layers


@pytest.mark.parametrize("cfg", [T2V, I2V], ids=["t2v", "i2v"])
def test_text_and_image_keys_values_are_made_once_per_render_with_the_same_result(cfg):
    """Exact reuse: the embedded text / image tokens and every block's cross-attention keys and values are
    computed once per render (not per step and CFG branch); the render is bit-identical to one without."""
    model = _model(cfg, seed=6)
    _, _, context, clip_fea, y = inputs(cfg, frames=2, seed=7)
    image = {"clip_fea": clip_fea, "y": y} if cfg.has_image_branch else {}
    calls = {"text": 0, "k": 0}
    hooks = [model.text_embedding.register_forward_hook(lambda *a: calls.__setitem__("text", calls["text"] + 1)),
             model.blocks[1].cross_attn.k.register_forward_hook(lambda *a: calls.__setitem__("k", calls["k"] + 1))]
    settings = dict(request=wan_core.SampleRequest(80, 64, 5), seed=3, steps=4, cfg=5.0, **image)
    reused = wan_core.sample(model, context, context.flip(1), **settings, render=RenderContext())
    assert calls == {"text": 1, "k": 1}  # 4 steps x (cond + uncond), computed once
    calls.update(text=0, k=0)
    every_step = wan_core.sample(model, context, context.flip(1), **settings,
                                 render=RenderContext(precompute_keys_values=False))
    assert calls["k"] == 4  # inside each block, at every step
    for hook in hooks:
        hook.remove()
    assert torch.equal(reused, every_step)
