"""The VACE conditioning against diffusers' WanVACEPipeline preparation (video, mask and reference latents)
on the same tiny VAE, and the mask layout written out from the official recipe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_vae import reference_vae

import wan_core
from wan_core.vace import extension_source, mask_channels, outpaint_source, vace_conditioning

FRAMES, HEIGHT, WIDTH = 9, 32, 48


def _vaes():
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    state = reference_vae(seed=4).state_dict()
    theirs = AutoencoderKLWan(base_dim=8, z_dim=16)
    theirs.load_state_dict(convert_wan_vae_to_diffusers(dict(state)), strict=True)
    ours = wan_core.WanVAE(wan_core.models.vae.VAEConfig(base_dim=8))
    ours.load_state_dict(state)
    return ours.eval(), theirs.eval()


def _diffusers_preparation(vae, video, mask, references):
    """diffusers' own steps: preprocess_conditions, prepare_video_latents, prepare_masks, concatenated."""
    from diffusers import WanVACEPipeline
    from diffusers.video_processor import VideoProcessor

    pipe = object.__new__(WanVACEPipeline)
    pipe.__dict__.update(vae=vae, video_processor=VideoProcessor(vae_scale_factor=8), vae_scale_factor_spatial=8,
                         vae_scale_factor_temporal=4, transformer=type("T", (), {"config": type("C", (), {
                             "patch_size": (1, 2, 2)})})(), _execution_device=torch.device("cpu"))
    video, mask, refs = pipe.preprocess_conditions(video, mask, references, 1, HEIGHT, WIDTH, FRAMES, torch.float32,
                                                   torch.device("cpu"))
    with torch.no_grad():
        latents = pipe.prepare_video_latents(video, mask, refs, None, torch.device("cpu"))
    return torch.cat([latents, pipe.prepare_masks(mask, refs, None)], dim=1)


def _pil(array: np.ndarray) -> Image.Image:
    return Image.fromarray(array)


def _case(kind: str, rng: np.random.Generator):
    """(control uint8 [F, H, W, 3] or None, mask uint8 [F, H, W] or None, reference uint8 [h, w, 3] or None)."""
    frames = rng.integers(0, 256, (FRAMES, HEIGHT, WIDTH, 3), dtype=np.uint8)
    mask = np.zeros((FRAMES, HEIGHT, WIDTH), dtype=np.uint8)
    mask[:, 8:24, 16:40] = 255  # regenerate a box, keep the rest (inpainting)
    reference = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)  # square: fitted and padded with white
    return {"control": (frames, None, None), "inpaint": (frames, mask, None), "reference": (None, None, reference),
            "all": (frames, mask, reference)}[kind]


@pytest.mark.parametrize("kind", ["control", "inpaint", "reference", "all"])
def test_vace_conditioning_equals_diffusers_preparation(kind):
    ours_vae, their_vae = _vaes()
    control, mask, reference = _case(kind, np.random.default_rng(7))
    expected = _diffusers_preparation(
        their_vae, None if control is None else [_pil(f) for f in control],
        None if mask is None else [_pil(np.repeat(m[..., None], 3, axis=-1)) for m in mask],
        None if reference is None else _pil(reference))
    to_image = lambda a: torch.from_numpy(a).float() / 255  # noqa: E731  ComfyUI IMAGE / MASK in 0..1
    embeds = vace_conditioning(ours_vae, WIDTH, HEIGHT, FRAMES, control=None if control is None else to_image(control),
                               mask=None if mask is None else to_image(mask),
                               references=() if reference is None else to_image(reference)[None])
    assert embeds.context.shape == expected.shape == (1, 96, (reference is not None) + 3, HEIGHT // 8, WIDTH // 8)
    assert embeds.references == (reference is not None)
    torch.testing.assert_close(embeds.context, expected, rtol=0, atol=1e-5 * expected.abs().max().item())


def test_mask_layout_is_the_official_one():
    """Official ``vace_encode_masks``: mask ``[F, H, W]`` -> view ``(F, H/8, 8, W/8, 8)`` -> permute
    ``(2, 4, 0, 1, 3)`` -> reshape ``(64, F, H/8, W/8)`` -> nearest-exact to ``(F', H/8, W/8)``, F' = (F + 3) // 4.
    So channel ``8 a + b`` of latent cell ``(i, j)`` is pixel ``(8 i + a, 8 j + b)``; latent frame k takes
    frame ``floor((k + 0.5) F / F')`` (nearest-exact): for F = 9, F' = 3, frames 1, 4 and 7."""
    mask = torch.arange(9 * 16 * 24, dtype=torch.float32).reshape(9, 16, 24)
    out = mask_channels(mask, 3)
    assert out.shape == (64, 3, 2, 3)
    for k, frame in enumerate((1, 4, 7)):
        for a, b, i, j in ((0, 0, 0, 0), (3, 5, 1, 2), (7, 7, 1, 0)):
            assert out[8 * a + b, k, i, j] == mask[frame, 8 * i + a, 8 * j + b]


def test_sources_for_extension_and_outpainting():
    clip = torch.rand(3, 16, 16, 3)
    images, mask = extension_source(clip, 9)
    assert images.shape == (9, 16, 16, 3) and torch.equal(images[:3], clip) and (images[3:] == 0.5).all()
    assert (mask[:3] == 0).all() and (mask[3:] == 1).all()
    images, mask = outpaint_source(clip, left=16, right=16, top=0, bottom=0)
    assert images.shape == (3, 16, 48, 3) and torch.equal(images[:, :, 16:32], clip)
    assert (mask[:, :, 16:32] == 0).all() and (mask[:, :, :16] == 1).all() and (mask[:, :, 32:] == 1).all()


def test_bad_vace_inputs_are_refused_before_encoding():
    vae = wan_core.WanVAE(wan_core.models.vae.VAEConfig(base_dim=8))
    with pytest.raises(wan_core.InputError, match="more than the 5"):
        vace_conditioning(vae, 48, 32, 5, control=torch.rand(9, 32, 48, 3))
    with pytest.raises(wan_core.InputError, match="strength"):
        vace_conditioning(vae, 48, 32, 5, strength=-1)
    with pytest.raises(wan_core.InputError, match="4n"):
        vace_conditioning(vae, 48, 32, 6)


def test_cli_vace_with_the_demo_model_manifest_and_replay(tmp_path):
    from wan_core.cli import main
    from wan_core.replay import replay_argv
    from wan_core.video import write_video

    clip = torch.rand(5, 64, 96, 3, generator=torch.Generator().manual_seed(2))
    control = write_video(clip, tmp_path / "control.mp4", fps=16)
    mask = torch.zeros(5, 64, 96, 3)
    mask[:, :, 48:] = 1  # regenerate the right half
    mask_path = write_video(mask, tmp_path / "mask.mp4", fps=16)
    reference = write_video(clip[:1], tmp_path / "ref", fmt="png") / "frame_00000.png"
    args = ["vace", "--demo", "--models", str(tmp_path / "models"), "--prompt", "a fox", "--steps", "3",
            "--frames", "5", "--width", "96", "--height", "64", "--resume", "off", "--keep-latent"]
    out = tmp_path / "vace.mp4"
    assert main([*args, "--out", str(out), "--control", str(control), "--mask", str(mask_path), "--reference",
                 str(reference), "--vace-strength", "0.8"]) == 0
    from safetensors.torch import load_file

    assert load_file(tmp_path / "vace.latent.safetensors")["latent"].shape == (1, 16, 2, 8, 12)  # reference trimmed
    manifest = wan_core.read_manifest(out)
    assert manifest["task"] == "vace" and manifest["vace"]["strength"] == 0.8
    argv = replay_argv(out, tmp_path / "models", None, None)
    assert argv[0] == "vace" and "--reference" in argv and "--control" in argv
    assert main(["vace", "--demo", "--models", str(tmp_path / "models"), "--prompt", "x", "--out",
                 str(tmp_path / "bad.mp4"), "--control", str(tmp_path / "missing.mp4")]) == 2
    assert main(["t2v", "--models", str(tmp_path / "models" / "demo"), "--dit", "wancore_demo_vace.safetensors",
                 "--prompt", "x", "--out", str(tmp_path / "t2v.mp4")]) == 2  # a VACE model for a t2v render
    assert not (tmp_path / "t2v.mp4").exists()
