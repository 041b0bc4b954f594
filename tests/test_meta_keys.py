"""Real-size configs on ``meta``: exactly the key names and shapes of the reference models.

t2v presets against wan22's official ``WanModel``; i2v / flf2v (which wan22 lacks for Wan2.1)
against diffusers' ``WanTransformer3DModel`` with our keys mapped by diffusers' own converter.
Detection must read each preset back from the reference's shapes.
"""

from __future__ import annotations

import pytest
import torch
from wan_reference import wan_module

from wan_core.loading.dit import diffusers_to_official
from wan_core.models.config import PRESETS, detect
from wan_core.models.dit import WanDiT


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _ours(name: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return _shapes(WanDiT(PRESETS[name]))


@pytest.mark.parametrize("name", ["t2v-1.3B", "t2v-14B"])
def test_t2v_presets_match_official_keys_and_shapes(name):
    cfg = PRESETS[name]
    model_mod = wan_module("modules.model")
    with torch.device("meta"):
        ref = model_mod.WanModel(model_type="t2v", dim=cfg.dim, ffn_dim=cfg.ffn_dim, num_heads=cfg.num_heads,
                                 num_layers=cfg.num_layers, in_dim=16, out_dim=16, cross_attn_norm=True)
    expected = _shapes(ref)
    assert _ours(name) == expected
    assert detect(expected) == cfg


@pytest.mark.parametrize("name", ["i2v-14B", "flf2v-14B"])
def test_image_presets_match_diffusers_keys_and_shapes(name):
    from diffusers import WanTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    cfg = PRESETS[name]
    with torch.device("meta"):
        ref = WanTransformer3DModel(num_attention_heads=cfg.num_heads, attention_head_dim=128, in_channels=36,
                                    out_channels=16, ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers,
                                    image_dim=1280, added_kv_proj_dim=cfg.dim,
                                    pos_embed_seq_len=514 if name.startswith("flf2v") else None)
    ours = _ours(name)
    mapped = convert_wan_transformer_to_diffusers({k: torch.empty(s, device="meta") for k, s in ours.items()})
    if "img_emb.emb_pos" in mapped:  # absent from diffusers' single-file table (named in its conversion script)
        mapped["condition_embedder.image_embedder.pos_embed"] = mapped.pop("img_emb.emb_pos")
    assert {k: tuple(v.shape) for k, v in mapped.items()} == _shapes(ref)
    back = diffusers_to_official(dict(ref.state_dict()))  # our reverse table on diffusers' own names
    assert {k: tuple(v.shape) for k, v in back.items()} == ours
    assert detect({k: v.shape for k, v in back.items()}) == cfg
