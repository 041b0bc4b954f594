"""Wan2.2 A14B experts: the text-to-video ones are the Wan2.1 14B architecture; the image-to-video ones take the
image through ``y`` only (36 input channels, no CLIP branch). Detected from the tensors, checked against the
official Wan2.2 ``WanModel`` (which is this architecture) and diffusers, on tiny random weights and at real size
on ``meta``."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import save_file
from test_dit_parity import DIFFUSERS_TOL, TOL, _rel_err, _run_diffusers
from tiny import I2V, TEXT_DIM, inputs, randomize_
from tiny_lora import block_modules, random_lora, write_lora
from wan_reference import wan_module

import wan_core
from wan_core.models.config import PRESETS, DiTConfig, detect
from wan_core.models.dit import WanDiT

I2V22 = DiTConfig("i2v", dim=256, ffn_dim=384, num_layers=2, text_dim=TEXT_DIM, in_dim=36, clip_dim=0)


def _official(cfg, seed=0):
    """The official Wan2.2 ``WanModel`` of ``cfg`` (i2v or ti2v) with seeded random weights, in eval mode."""
    ref = wan_module("modules.model").WanModel(model_type=cfg.model_type, dim=cfg.dim, ffn_dim=cfg.ffn_dim,
                                               num_heads=cfg.num_heads, num_layers=cfg.num_layers,
                                               text_dim=cfg.text_dim, in_dim=cfg.in_dim, out_dim=cfg.out_dim)
    randomize_(dict(ref.named_parameters()), seed)
    return ref.eval()


def _y(seed=2, frames=3, h=8, w=10):
    return torch.randn(1, 20, frames, h, w, generator=torch.Generator().manual_seed(seed))


def test_the_i2v_expert_matches_the_official_wan22_model(tmp_path):
    ref = _official(I2V22)
    path = tmp_path / "i2v22.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, path)
    ours = wan_core.load_dit(path)
    assert ours.config == I2V22 and not ours.config.has_image_branch and ours.config.takes_image_latents
    x, t, context, _, _ = inputs(I2V22, text=7)
    y = _y()
    with torch.no_grad():
        seq_len = x.shape[2] * x.shape[3] * x.shape[4] // 4
        expected = ref([x[0]], t=t[:1, None].expand(1, seq_len), context=[context[0]], seq_len=seq_len, y=[y[0]])[0]
        got = ours(x, t, context, y=y)
    assert _rel_err(got[0], expected) <= TOL


def test_the_i2v_expert_matches_diffusers(tmp_path):
    from diffusers import WanTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    ref = _official(I2V22, seed=3)
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    save_file(state, tmp_path / "i2v22.safetensors")
    ours = wan_core.load_dit(tmp_path / "i2v22.safetensors")
    model = WanTransformer3DModel(num_attention_heads=I2V22.num_heads, attention_head_dim=128, in_channels=36,
                                  out_channels=16, text_dim=TEXT_DIM, ffn_dim=I2V22.ffn_dim, num_layers=2).eval()
    model.load_state_dict(convert_wan_transformer_to_diffusers(dict(state)), strict=True)
    x, t, context, _, _ = inputs(I2V22)
    y = _y(4)
    with torch.no_grad():
        got = ours(x, t, context, y=y)
    assert _rel_err(got, _run_diffusers(model, x, t, context, None, y)) <= DIFFUSERS_TOL


@pytest.mark.parametrize("name, model_type, heads", [("i2v-A14B", "i2v", 40), ("ti2v-5B", "ti2v", 24)])
def test_real_wan22_configs_match_the_official_keys(name, model_type, heads):
    cfg = PRESETS[name]
    with torch.device("meta"):
        ref = wan_module("modules.model").WanModel(model_type=model_type, dim=cfg.dim, ffn_dim=cfg.ffn_dim,
                                                   num_heads=cfg.num_heads, num_layers=cfg.num_layers,
                                                   in_dim=cfg.in_dim, out_dim=cfg.out_dim)
        ours = WanDiT(cfg)
    shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == shapes
    assert detect(shapes) == cfg and cfg.label == name and cfg.num_heads == heads


def test_conditioning_of_the_i2v_expert():
    """It needs y and refuses CLIP tokens (the Wan2.1 i2v model still needs both)."""
    model = WanDiT(I2V22)
    x, t, context, _, _ = inputs(I2V22)
    _, _, _, clip_fea, _ = inputs(I2V)
    with pytest.raises(wan_core.InputError, match=r"needs image conditioning \(y,"):
        model(x, t, context)
    with pytest.raises(wan_core.InputError, match="no CLIP image branch"):
        model(x, t, context, clip_fea=clip_fea, y=_y())


def test_a_wan21_i2v_lora_applies_what_matches_and_names_what_it_skipped(tmp_path, caplog):
    """The blocks' updates apply; the image-branch ones (k_img / v_img, absent in Wan2.2) are named in one
    warning; a text-to-video model still refuses the LoRA."""
    path = write_lora(tmp_path / "i2v.safetensors", random_lora(I2V, block_modules(I2V, image=True)))
    model = WanDiT(I2V22)
    with caplog.at_level(logging.WARNING, logger="wan_core.lora"):
        handle = wan_core.apply_loras(model, [(path, 1.0)])
    assert caplog.text.count("image branch skipped") == 1 and "blocks.0.cross_attn.k_img.weight" in caplog.text
    assert set(handle.weight_patches) == {f"{m}.weight" for m in block_modules(I2V22)}
    with pytest.raises(wan_core.InputError, match="image-to-video model"):
        wan_core.apply_loras(WanDiT(DiTConfig("t2v", dim=256, ffn_dim=384, num_layers=2, text_dim=TEXT_DIM)),
                             [(path, 1.0)])


def test_the_cli_renders_i2v_with_a_wan22_expert_and_no_clip_vision(tmp_path, capsys):
    """No clip_vision file is needed (or looked for) when the DiT has no CLIP branch."""
    from tiny import random_official_state

    from wan_core.cli import main
    from wan_core.demo import write_demo_models
    from wan_core.video import write_video

    demo = write_demo_models(tmp_path / "demo")
    models = tmp_path / "models"
    for kind in ("text_encoders", "vae"):
        (models / kind).mkdir(parents=True)
        (models / kind / demo[kind].name).symlink_to(demo[kind])
    (models / "diffusion_models").mkdir()
    save_file(random_official_state(I2V22, seed=1), models / "diffusion_models" / "i2v22.safetensors")
    image = write_video(torch.rand(1, 48, 64, 3), tmp_path / "start", fmt="png") / "frame_00000.png"
    out = tmp_path / "i2v.mp4"
    assert main(["i2v", "--models", str(models), "--prompt", "a fox", "--image", str(image), "--width", "64",
                 "--height", "48", "--frames", "5", "--steps", "2", "--out", str(out)]) == 0, capsys.readouterr().err
    assert out.exists()
