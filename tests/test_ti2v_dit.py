"""The Wan2.2 TI2V-5B DiT: 48-channel latents and one timestep per latent frame (the image's frame at 0), against
the official Wan2.2 ``WanModel`` (per-token timesteps) and diffusers' ``WanTransformer3DModel`` on tiny random
weights (the real 5B config's keys: tests/test_wan22_dit.py)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from test_dit_parity import DIFFUSERS_TOL, TOL, _rel_err
from test_wan22_dit import _official
from tiny import TEXT_DIM

import wan_core
from wan_core.models.config import DiTConfig

TI2V = DiTConfig("ti2v", dim=256, ffn_dim=384, num_layers=2, text_dim=TEXT_DIM, in_dim=48, out_dim=48)
F, H, W = 3, 8, 10  # latent frames and cells; tokens per frame: (8/2) * (10/2) = 20


def _inputs(batch=1, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 48, F, H, W, generator=gen)
    context = torch.randn(batch, 7, TEXT_DIM, generator=gen)
    t = torch.tensor([[0.0, 640.0, 640.0], [0.0, 320.0, 320.0]][:batch])  # the image's frame at 0, as i2v runs
    return x, t, context


def _per_token(t):
    """The official per-token timesteps of per-frame ones: each frame's value for its (H/2)(W/2) tokens."""
    return t.repeat_interleave((H // 2) * (W // 2), dim=1)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    ref = _official(TI2V)
    path = tmp_path_factory.mktemp("ti2v") / "ti2v.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, path)
    return ref, path


def test_ti2v_matches_the_official_model_with_timesteps_per_frame(saved):
    ref, path = saved
    ours = wan_core.load_dit(path)
    assert ours.config == TI2V
    x, t, context = _inputs(batch=2)
    with torch.no_grad():
        seq_len = F * (H // 2) * (W // 2)
        expected = torch.stack(ref(list(x), t=_per_token(t), context=list(context), seq_len=seq_len))
        got = ours(x, t, context)
    assert got.shape == x.shape and _rel_err(got, expected) <= TOL


def test_ti2v_matches_diffusers(saved):
    from diffusers import WanTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    ref, path = saved
    ours = wan_core.load_dit(path)
    model = WanTransformer3DModel(num_attention_heads=TI2V.num_heads, attention_head_dim=128, in_channels=48,
                                  out_channels=48, text_dim=TEXT_DIM, ffn_dim=TI2V.ffn_dim, num_layers=2).eval()
    model.load_state_dict(convert_wan_transformer_to_diffusers(dict(ref.state_dict())), strict=True)
    x, t, context = _inputs(seed=3)
    with torch.no_grad():
        expected = model(x, _per_token(t), torch.nn.functional.pad(context, (0, 0, 0, 505)), return_dict=False)[0]
        got = ours(x, t, context)
    assert _rel_err(got, expected) <= DIFFUSERS_TOL


def test_one_timestep_for_every_frame_is_the_plain_forward(saved):
    """Per-frame timesteps that are all equal give the forward with one timestep per sequence (up to fp32
    rounding: the time embedding's products run over more rows)."""
    _, path = saved
    ours = wan_core.load_dit(path)
    x, _, context = _inputs()
    with torch.no_grad():
        assert _rel_err(ours(x, torch.full((1, F), 500.0), context), ours(x, torch.tensor([500.0]), context)) <= 1e-6
    with pytest.raises(wan_core.InputError, match=r"per-frame timesteps must be \[B, frames\]"):
        ours(x, torch.zeros(1, F + 1), context)
