"""WanDiT against independent implementations on the same random weights (fp32, CPU).

* wan22's official ``wan.modules.model.WanModel`` (t2v): the reference's own random weights are
  written once in the official layout and loaded by both.
* diffusers' ``WanTransformer3DModel`` (t2v, Wan2.1 i2v image branch, flf2v): one official-layout
  file is loaded by us directly and by diffusers through diffusers' own key converter.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from tiny import FLF2V, I2V, T2V, inputs, random_official_state, randomize_
from wan_reference import wan_module

import wan_core

TOL = 1e-5  # vs the official code: fp32, relative to the output's max magnitude
DIFFUSERS_TOL = 1e-4  # DESIGN's default: diffusers builds the time embedding and rotary angles in
#                       float32 where the official code uses float64, which alone moves outputs ~1e-5


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _official_reference(cfg, seed=0):
    model_mod = wan_module("modules.model")
    ref = model_mod.WanModel(model_type="t2v", dim=cfg.dim, ffn_dim=cfg.ffn_dim, num_heads=cfg.num_heads,
                             num_layers=cfg.num_layers, text_dim=cfg.text_dim, in_dim=16, out_dim=16)
    randomize_(dict(ref.named_parameters()), seed)
    return ref.eval()


def test_t2v_matches_official_wan_model(tmp_path):
    ref = _official_reference(T2V)
    path = tmp_path / "t2v.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, path)
    ours = wan_core.load_dit(path)
    assert ours.config == T2V
    x, t, context, _, _ = inputs(T2V, batch=2, text=7)
    context[1, 5:] = 0  # the second prompt is shorter: 5 tokens, zero-padded as the encoder gives it
    with torch.no_grad():
        seq_len = x.shape[2] * x.shape[3] * x.shape[4] // 4
        per_token_t = t[:, None].expand(-1, seq_len)  # wan22 broadcasts a [B] t only for B == 1
        expected = torch.stack(ref(list(x), t=per_token_t, context=[context[0], context[1, :5]], seq_len=seq_len))
        got = ours(x, t, context)
    assert got.shape == x.shape and got.dtype == torch.float32
    assert _rel_err(got, expected) <= TOL


def _diffusers_model(cfg, official_state):
    from diffusers import WanTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    image = cfg.has_image_branch
    model = WanTransformer3DModel(
        num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim, in_channels=cfg.in_dim,
        out_channels=cfg.out_dim, text_dim=cfg.text_dim, ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers,
        image_dim=cfg.clip_dim if image else None, added_kv_proj_dim=cfg.dim if image else None,
        pos_embed_seq_len=cfg.clip_tokens if cfg.model_type == "flf2v" else None)
    converted = convert_wan_transformer_to_diffusers(dict(official_state))
    if "img_emb.emb_pos" in converted:  # not in diffusers' single-file table; its conversion script's name
        converted["condition_embedder.image_embedder.pos_embed"] = converted.pop("img_emb.emb_pos")
    model.load_state_dict(converted, strict=True)
    return model.eval()


def _run_diffusers(model, x, t, context, clip_fea, y):
    padded = torch.nn.functional.pad(context, (0, 0, 0, 512 - context.shape[1]))
    hidden = torch.cat([x, y], dim=1) if y is not None else x
    image = None
    if clip_fea is not None:  # diffusers takes flf2v's two images as [2B, 257, C] and views them as [B, 514, C]
        image = clip_fea.reshape(-1, 257, clip_fea.shape[-1])
    with torch.no_grad():
        return model(hidden, t, padded, encoder_hidden_states_image=image, return_dict=False)[0]


@pytest.mark.parametrize("cfg", [T2V, I2V, FLF2V], ids=["t2v", "i2v", "flf2v"])
def test_matches_diffusers_through_its_own_key_converter(cfg, tmp_path):
    state = random_official_state(cfg, seed=3)
    path = tmp_path / f"{cfg.model_type}.safetensors"
    save_file(state, path)
    ours = wan_core.load_dit(path)
    assert ours.config == cfg
    reference = _diffusers_model(cfg, state)
    x, t, context, clip_fea, y = inputs(cfg, batch=1)
    with torch.no_grad():
        got = ours(x, t, context, clip_fea=clip_fea, y=y)
    assert _rel_err(got, _run_diffusers(reference, x, t, context, clip_fea, y)) <= DIFFUSERS_TOL


@pytest.mark.parametrize("cfg", [T2V, I2V], ids=["t2v", "i2v"])
def test_loads_a_diffusers_layout_file(cfg, tmp_path):
    """A file saved by diffusers (its names) loads through our reverse table and gives diffusers' output."""
    reference = _diffusers_model(cfg, random_official_state(cfg, seed=5))
    randomize_(dict(reference.named_parameters()), seed=6)  # fresh values, set in diffusers' own names
    path = tmp_path / "diffusers.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, path)
    ours = wan_core.load_dit(path)
    x, t, context, clip_fea, y = inputs(cfg)
    with torch.no_grad():
        got = ours(x, t, context, clip_fea=clip_fea, y=y)
    assert _rel_err(got, _run_diffusers(reference, x, t, context, clip_fea, y)) <= DIFFUSERS_TOL


def test_wrong_conditioning_for_the_model_kind_is_refused_before_compute():
    t2v = wan_core.WanDiT(T2V)
    i2v = wan_core.WanDiT(I2V)
    x, t, context, _, _ = inputs(T2V)
    _, _, _, clip_fea, y = inputs(I2V)
    with pytest.raises(wan_core.InputError, match="text-to-video model"):
        t2v(x, t, context, clip_fea=clip_fea, y=y)
    with pytest.raises(wan_core.InputError, match="needs image conditioning"):
        i2v(x, t, context)
