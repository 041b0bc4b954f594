"""Image-to-video pieces: CLIP vision vs transformers, and the conditioning (mask + latents) vs the
official recipe and diffusers' WanImageToVideoPipeline preparation."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tiny_vae import reference_vae

import wan_core
from wan_core.errors import InputError
from wan_core.i2v import frame_mask, image_conditioning, size_for_area
from wan_core.latents import normalize_latents
from wan_core.models.clip_vision import CLIP_MEAN, CLIP_STD, VIT_H_14, ClipVision

TOL = 1e-4


def _hf_clip(seed=0):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(hidden_size=160, intermediate_size=320, num_hidden_layers=3, num_attention_heads=2,
                              image_size=224, patch_size=14, hidden_act="gelu", layer_norm_eps=1e-5)
    torch.manual_seed(seed)
    model = CLIPVisionModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def photo_like_image(tmp_path) -> torch.Tensor:
    """A photo-like test image (shapes, gradients, noise) written to PNG and read back with PyAV."""
    h, w = 300, 400
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img = torch.stack([x, y, 1 - x * y], -1)
    img[(x - 0.3) ** 2 + (y - 0.5) ** 2 < 0.04] = torch.tensor([0.9, 0.2, 0.1])
    img[60:120, 250:380] = torch.tensor([0.1, 0.6, 0.2])
    img = (img + 0.05 * torch.randn(h, w, 3, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    path = wan_core.write_video((img * 255).round().to(torch.uint8)[None], tmp_path / "test", fmt="png")
    return wan_core.read_video(path).images()


def _official_pixels(image: torch.Tensor) -> torch.Tensor:
    """The official preprocessing (wan/modules/clip.py ``visual``): the [-1, 1] image resized to
    224x224 bicubic (no crop), mapped back to 0..1, then normalized with the CLIP mean / std."""
    x = image.movedim(-1, 1) * 2 - 1
    x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bicubic", align_corners=False)
    x = x * 0.5 + 0.5
    return (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)


def _comfyui_layout(model) -> dict[str, torch.Tensor]:
    """ComfyUI's clip_vision_h.safetensors names: the HF vision keys under ``vision_model.``."""
    return {k if k.startswith("vision_model.") else f"vision_model.{k}": v.contiguous()
            for k, v in model.state_dict().items()}


@pytest.mark.parametrize("layout", ["comfyui", "transformers"])
def test_clip_vision_matches_transformers_on_a_real_image(tmp_path, layout):
    reference = _hf_clip()
    path = tmp_path / "clip_vision_h.safetensors"
    state = _comfyui_layout(reference) if layout == "comfyui" else {
        k: v.contiguous() for k, v in reference.state_dict().items()}
    save_file(state, path)
    ours = wan_core.load_clip_vision(path)
    image = photo_like_image(tmp_path)
    torch.testing.assert_close(ours.preprocess(image), _official_pixels(image), rtol=0, atol=1e-5)
    with torch.no_grad():
        want = reference(pixel_values=_official_pixels(image), output_hidden_states=True).hidden_states[-2]
    got = ours.encode(image)
    assert got.shape == (1, 257, 160)
    assert ((got - want).abs().max() / want.abs().max()).item() <= TOL


def test_clip_vision_official_pth_layout(tmp_path):
    """The official open-clip state dict: ``visual.*`` with fused q/k/v (wan/modules/clip.py names),
    plus the text tower, which is ignored."""
    reference = _hf_clip(seed=1)
    hf = _comfyui_layout(reference)
    official = {"visual.patch_embedding.weight": hf["vision_model.embeddings.patch_embedding.weight"],
                "visual.cls_embedding": hf["vision_model.embeddings.class_embedding"].view(1, 1, -1),
                "visual.pos_embedding": hf["vision_model.embeddings.position_embedding.weight"][None],
                "textual.token_embedding.weight": torch.zeros(10, 4), "log_scale": torch.zeros(())}
    for part in ("weight", "bias"):
        official[f"visual.pre_norm.{part}"] = hf[f"vision_model.pre_layrnorm.{part}"]
        official[f"visual.post_norm.{part}"] = hf[f"vision_model.post_layernorm.{part}"]
        for i in range(3):
            layer = f"vision_model.encoder.layers.{i}."
            official[f"visual.transformer.{i}.attn.to_qkv.{part}"] = torch.cat(
                [hf[f"{layer}self_attn.{p}_proj.{part}"] for p in "qkv"])
            for ours_name, hf_name in (("attn.proj", "self_attn.out_proj"), ("norm1", "layer_norm1"),
                                       ("norm2", "layer_norm2"), ("mlp.0", "mlp.fc1"), ("mlp.2", "mlp.fc2")):
                official[f"visual.transformer.{i}.{ours_name}.{part}"] = hf[f"{layer}{hf_name}.{part}"]
    torch.save(official, tmp_path / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth")
    ours = wan_core.load_clip_vision(tmp_path / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth")
    pixels = _official_pixels(torch.rand(2, 64, 80, 3))
    with torch.no_grad():
        want = reference(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
    assert ((ours(pixels) - want).abs().max() / want.abs().max()).item() <= TOL


def test_real_vit_h_keys_match_hugging_face_on_meta():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    with torch.device("meta"):
        hf = CLIPVisionModel(CLIPVisionConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                              num_attention_heads=16, image_size=224, patch_size=14))
        ours = ClipVision(VIT_H_14)
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in _comfyui_layout(hf).items() if not k.endswith("position_ids")}


def _official_mask(frames: int, lat_h: int, lat_w: int, last: bool) -> torch.Tensor:
    """The mask exactly as wan/image2video.py (and first_last_frame2video.py) build it."""
    msk = torch.ones(1, frames, lat_h, lat_w)
    msk[:, 1:-1 if last else None] = 0
    msk = torch.concat([torch.repeat_interleave(msk[:, 0:1], repeats=4, dim=1), msk[:, 1:]], dim=1)
    msk = msk.view(1, msk.shape[1] // 4, 4, lat_h, lat_w)
    return msk.transpose(1, 2)[0]


@pytest.mark.parametrize("frames", [5, 9, 81])
@pytest.mark.parametrize("last", [False, True])
def test_mask_matches_the_official_recipe(frames, last):
    assert torch.equal(frame_mask(frames, 3, 4, last)[0], _official_mask(frames, 3, 4, last))


def _official_size(h: int, w: int, max_area: int) -> tuple[int, int]:
    """wan/image2video.py's lines, with its numpy float math (which turns an exact 832x480 into 464x832)."""
    aspect_ratio = h / w
    lat_h = round(np.sqrt(max_area * aspect_ratio) // 8 // 2 * 2)
    lat_w = round(np.sqrt(max_area / aspect_ratio) // 8 // 2 * 2)
    return lat_h * 8, lat_w * 8


@pytest.mark.parametrize("size", [(480, 832), (512, 512), (1080, 1920), (768, 1024), (333, 777)])
@pytest.mark.parametrize("area", [832 * 480, 1280 * 720])
def test_official_resize_to_area_rule(size, area):
    assert size_for_area(*size, area) == _official_size(*size, area)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("i2v")
    torch.save(reference_vae(seed=3).state_dict(), folder / "vae.pth")
    save_file(_comfyui_layout(_hf_clip()), folder / "clip.safetensors")
    return wan_core.load_vae(folder / "vae.pth"), wan_core.load_clip_vision(folder / "clip.safetensors"), folder


@pytest.mark.parametrize("last", [False, True], ids=["i2v", "flf2v"])
def test_y_matches_diffusers_preparation(parts, last):
    """diffusers' WanImageToVideoPipeline.prepare_latents on the same VAE weights builds the same
    mask + normalized latents (its own code; given images already at the target size)."""
    from diffusers import AutoencoderKLWan, WanImageToVideoPipeline
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    vae, clip, folder = parts
    frames, h, w = 9, 32, 48
    start, end = torch.rand(1, h, w, 3), torch.rand(1, h, w, 3)
    ours = image_conditioning(vae, clip, start, w, h, frames, end=end if last else None)
    dvae = AutoencoderKLWan(base_dim=8, z_dim=16)
    dvae.load_state_dict(convert_wan_vae_to_diffusers(torch.load(folder / "vae.pth", weights_only=True)))
    fake = types.SimpleNamespace(vae=dvae.eval(), vae_scale_factor_temporal=4, vae_scale_factor_spatial=8,
                                 config=types.SimpleNamespace(expand_timesteps=False))
    to_model = lambda img: img.movedim(-1, 1) * 2 - 1  # noqa: E731
    with torch.no_grad():
        _, want = WanImageToVideoPipeline.prepare_latents(
            fake, to_model(start), 1, 16, h, w, frames, dtype=torch.float32, device=torch.device("cpu"),
            latents=torch.zeros(1), last_image=to_model(end) if last else None)
    assert ours.y.shape == want.shape == (1, 20, 3, 4, 6)
    assert torch.equal(ours.y[:, :4], want[:, :4])
    assert ((ours.y[:, 4:] - want[:, 4:]).abs().max() / want[:, 4:].abs().max()).item() <= TOL
    assert ours.clip_fea.shape == (1, 514 if last else 257, 160)


def test_y_latents_encode_the_start_image_then_black(parts):
    vae, clip, _ = parts
    start = torch.rand(1, 64, 64, 3)
    got = image_conditioning(vae, clip, start, 48, 32, 5)
    video = torch.zeros(1, 3, 5, 32, 48)
    video[:, :, 0] = torch.nn.functional.interpolate(start.movedim(-1, 1) * 2 - 1, size=(32, 48), mode="bicubic")
    torch.testing.assert_close(got.y[:, 4:], normalize_latents(vae.encode(video.clamp(-1, 1))), rtol=1e-5, atol=1e-5)


def test_bad_conditioning_requests(parts):
    vae, clip, _ = parts
    with pytest.raises(InputError, match="use 5 or 9"):
        image_conditioning(vae, clip, torch.rand(1, 32, 32, 3), 48, 32, 6)
    with pytest.raises(InputError, match="start image must be an IMAGE"):
        image_conditioning(vae, clip, torch.rand(32, 32, 3), 48, 32, 5)
