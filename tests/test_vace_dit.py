"""The VACE DiT against diffusers' WanVACETransformer3DModel (tiny config, random official weights converted by
diffusers' own converter), its detection and key layouts, and the errors for mismatched conditioning."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from tiny import TEXT_DIM, inputs, random_official_state

import wan_core
from wan_core.loading.dit import dit_key_to_diffusers
from wan_core.models.config import PRESETS, DiTConfig

VACE = DiTConfig("vace", dim=256, ffn_dim=384, num_layers=4, text_dim=TEXT_DIM, vace_layers=(0, 2))


def _diffusers_vace(cfg, state):
    from diffusers import WanVACETransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    model = WanVACETransformer3DModel(num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
                                      in_channels=cfg.in_dim, out_channels=cfg.out_dim, text_dim=cfg.text_dim,
                                      ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers,
                                      vace_layers=list(cfg.vace_layers), vace_in_channels=cfg.vace_in_dim)
    model.load_state_dict(convert_wan_transformer_to_diffusers(dict(state)), strict=True)
    return model.eval()


def _vace_inputs(cfg, batch=2, seed=3):
    x, t, context, _, _ = inputs(cfg, batch=batch)
    gen = torch.Generator().manual_seed(seed)
    return x, t, context, torch.randn(batch, cfg.vace_in_dim, *x.shape[2:], generator=gen)


@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_vace_forward_equals_diffusers(tmp_path, strength):
    state = random_official_state(VACE, seed=11)
    save_file(state, tmp_path / "vace.safetensors")
    ours = wan_core.load_dit(tmp_path / "vace.safetensors")
    assert ours.config == VACE
    reference = _diffusers_vace(VACE, state)
    x, t, context, control = _vace_inputs(VACE)
    padded = torch.nn.functional.pad(context, (0, 0, 0, 512 - context.shape[1]))
    with torch.no_grad():
        want = reference(x, t, padded, control_hidden_states=control,
                         control_hidden_states_scale=torch.full((len(VACE.vace_layers),), strength),
                         return_dict=False)[0]
        got = ours(x, t, context, vace_context=control, vace_strength=strength)
        without = ours(x, t, context, vace_context=torch.zeros_like(control), vace_strength=0.0)
    assert ((got - want).abs().max() / want.abs().max()).item() <= 1e-4
    assert (got - without).abs().max() > 1e-2, "the hints barely changed the output"


def test_vace_model_loads_from_diffusers_keys(tmp_path):
    state = random_official_state(VACE, seed=11)
    reference = _diffusers_vace(VACE, state)
    save_file(reference.state_dict(), tmp_path / "diffusers_vace.safetensors")
    from_diffusers = wan_core.load_dit(tmp_path / "diffusers_vace.safetensors")
    x, t, context, control = _vace_inputs(VACE)
    official = wan_core.WanDiT(VACE)
    official.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(from_diffusers(x, t, context, vace_context=control),
                           official.eval()(x, t, context, vace_context=control))


@pytest.mark.parametrize("name", ["vace-1.3B", "vace-14B"])
def test_real_vace_configs_have_exactly_diffusers_keys(name):
    from diffusers import WanVACETransformer3DModel

    cfg = PRESETS[name]
    with torch.device("meta"):
        ours = wan_core.WanDiT(cfg)
        theirs = WanVACETransformer3DModel(num_attention_heads=cfg.num_heads, ffn_dim=cfg.ffn_dim,
                                           num_layers=cfg.num_layers, vace_layers=list(cfg.vace_layers))
    mapped = {dit_key_to_diffusers(k): tuple(v.shape) for k, v in ours.state_dict().items()}
    assert mapped == {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert wan_core.detect({k: v.shape for k, v in ours.state_dict().items()}) == cfg


def test_vace_conditioning_mismatches_are_refused():
    vace = wan_core.WanDiT(VACE).eval()
    t2v = wan_core.WanDiT(DiTConfig("t2v", dim=256, ffn_dim=384, num_layers=2, text_dim=TEXT_DIM)).eval()
    x, t, context, control = _vace_inputs(VACE, batch=1)
    with torch.no_grad():
        with pytest.raises(wan_core.InputError, match="VACE conditioning was given to a t2v model"):
            t2v(x, t, context, vace_context=control)
        with pytest.raises(wan_core.InputError, match="needs VACE conditioning"):
            vace(x, t, context)
        with pytest.raises(wan_core.InputError, match="takes no image conditioning"):
            vace(x, t, context, clip_fea=torch.zeros(1, 257, 1280), y=torch.zeros(1, 20, *x.shape[2:]),
                 vace_context=control)
        with pytest.raises(wan_core.InputError, match="latent cells"):
            vace(x, t, context, vace_context=control[:, :, :2])
