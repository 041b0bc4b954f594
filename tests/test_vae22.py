"""The Wan2.2 VAE (TI2V-5B) against the official ``wan.modules.vae2_2`` on the same tiny random weights: encode and
decode, 1 and 9 frames, chunk by chunk."""

from __future__ import annotations

import pytest
import torch
from wan_reference import wan_module

from wan_core.models.vae22 import VAE22Config, WanVAE22, patchify, unpatchify

TINY = VAE22Config(base_dim=8, decoder_dim=12, z_dim=4)
TOL = 1e-5


def _pair(seed=0):
    """Our tiny VAE and the official one with its weights (random, set in the official model's own names)."""
    official = wan_module("modules.vae2_2").WanVAE_(
        dim=TINY.base_dim, dec_dim=TINY.decoder_dim, z_dim=TINY.z_dim, dim_mult=list(TINY.dim_mult),
        num_res_blocks=TINY.num_res_blocks, attn_scales=[], temperal_downsample=list(TINY.temporal_downsample)).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in official.named_parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 1
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1 + 0.1 * noise if name.endswith("gamma") else noise / fan_in ** 0.5)
    ours = WanVAE22(TINY).eval()
    ours.load_state_dict(official.state_dict(), strict=True)
    return ours, official


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_patchify_is_the_official_rearrangement():
    x = torch.randn(2, 3, 5, 8, 12)
    official = wan_module("modules.vae2_2")
    assert torch.equal(patchify(x), official.patchify(x, 2))
    assert torch.equal(unpatchify(patchify(x)), x)


@pytest.mark.parametrize("frames", [1, 9])
def test_encode_and_decode_match_the_official_vae(frames):
    ours, official = _pair()
    video = torch.rand(1, 3, frames, 32, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        expected = official.encode(video, [0.0, 1.0])
        got = ours.encode(video)
        assert got.shape == (1, TINY.z_dim, (frames - 1) // 4 + 1, 2, 3)
        assert _rel(got, expected) <= TOL
        z = torch.randn_like(expected)
        decoded = ours.decode(z)
        reference = official.decode(z, [0.0, 1.0]).clamp(-1, 1)
    assert decoded.shape == (1, 3, frames, 32, 48)
    assert _rel(decoded, reference) <= TOL


def test_decoding_several_latent_frames_per_chunk_gives_the_official_video():
    ours, official = _pair(seed=2)
    z = torch.randn(1, TINY.z_dim, 4, 2, 3, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert _rel(ours.decode(z, chunk=3), official.decode(z, [0.0, 1.0]).clamp(-1, 1)) <= TOL


def test_load_vae_reads_the_official_wan22_file(tmp_path):
    """The official / ComfyUI file (``wan2.2_vae.safetensors``: the official keys) loads as the Wan2.2 VAE, its widths
    and latent channels read from the tensors; its RAW latents use the Wan2.2 statistics (48 channels)."""
    from safetensors.torch import save_file

    import wan_core

    ours, official = _pair(seed=4)
    save_file({k: v.contiguous() for k, v in official.state_dict().items()}, tmp_path / "vae22.safetensors")
    loaded = wan_core.load_vae(tmp_path / "vae22.safetensors")
    assert isinstance(loaded, WanVAE22) and loaded.config == TINY
    z = torch.randn(1, TINY.z_dim, 2, 2, 3)
    with torch.no_grad():
        assert torch.equal(loaded.decode(z), ours.decode(z))
    raw = torch.randn(1, 48, 2, 4, 4)
    normalized = wan_core.normalize_latents(raw)
    for c in (0, 19, 47):  # the official statistics: mean[19] 0.5109 / std[19] 0.6804, mean[47] -0.0667 / 0.7744
        mean, std = {0: (-0.2289, 0.4765), 19: (0.5109, 0.6804), 47: (-0.0667, 0.7744)}[c]
        assert torch.allclose(normalized[:, c], (raw[:, c] - mean) / std)


def _diffusers(ours):
    """diffusers' ``AutoencoderKLWan`` in its Wan2.2 form (``is_residual``, 2x2 patches) with our weights, mapped to
    its names by our table (``strict``: every tensor has one name there)."""
    from diffusers import AutoencoderKLWan

    from wan_core.loading.vae import vae22_key_to_diffusers

    model = AutoencoderKLWan(base_dim=TINY.base_dim, decoder_base_dim=TINY.decoder_dim, z_dim=TINY.z_dim,
                             is_residual=True, in_channels=12, out_channels=12, patch_size=2, scale_factor_spatial=16,
                             temperal_downsample=list(TINY.temporal_downsample)).eval()
    model.load_state_dict({vae22_key_to_diffusers(k, TINY): v for k, v in ours.state_dict().items()}, strict=True)
    return model


@pytest.mark.parametrize("frames", [1, 9])
def test_encode_and_decode_match_diffusers(frames):
    ours, _ = _pair(seed=5)
    model = _diffusers(ours)
    video = torch.rand(1, 3, frames, 32, 48, generator=torch.Generator().manual_seed(6)) * 2 - 1
    with torch.no_grad():
        assert _rel(ours.encode(video), model.encode(video).latent_dist.mode()) <= TOL
        z = torch.randn(1, TINY.z_dim, (frames - 1) // 4 + 1, 2, 3, generator=torch.Generator().manual_seed(7))
        assert _rel(ours.decode(z), model.decode(z).sample.clamp(-1, 1)) <= TOL


def test_load_vae_reads_the_diffusers_wan22_layout(tmp_path):
    from safetensors.torch import save_file

    import wan_core

    ours, _ = _pair(seed=8)
    save_file({k: v.contiguous() for k, v in _diffusers(ours).state_dict().items()}, tmp_path / "d.safetensors")
    loaded = wan_core.load_vae(tmp_path / "d.safetensors")
    assert isinstance(loaded, WanVAE22) and loaded.config == TINY
    assert all(torch.equal(v, ours.state_dict()[k]) for k, v in loaded.state_dict().items())


COMFY_VAE22 = """
import json, sys
sys.path.insert(0, sys.argv[1])
sys.argv = [sys.argv[0], "--cpu"]
import comfy.options
comfy.options.enable_args_parsing()
import torch
from safetensors.torch import load_file, save_file
import comfy.latent_formats
from comfy.ldm.wan.vae2_2 import WanVAE
config, folder = json.loads(sys.stdin.read())
vae = WanVAE(dim=config["base_dim"], dec_dim=config["decoder_dim"], z_dim=config["z_dim"],
             dim_mult=config["dim_mult"], num_res_blocks=config["num_res_blocks"], attn_scales=[],
             temperal_downsample=config["temporal_downsample"]).eval()
vae.load_state_dict(load_file(folder + "/weights.safetensors"), strict=True)
inputs = load_file(folder + "/inputs.safetensors")
fmt = comfy.latent_formats.Wan22()
with torch.no_grad():
    save_file({"latent": vae.encode(inputs["video"]).contiguous(), "video": vae.decode(inputs["latent"]).contiguous(),
               "mean": fmt.latents_mean.flatten().contiguous(), "std": fmt.latents_std.flatten().contiguous(),
               "normalized": fmt.process_in(inputs["latent"]).contiguous()}, folder + "/outputs.safetensors")
"""


@pytest.mark.skipif(not __import__("os").environ.get("COMFYUI_PATH"), reason="COMFYUI_PATH is not set: no ComfyUI "
                    "checkout to exchange Wan2.2 latents with")
def test_latents_interoperate_with_comfyuis_native_wan22_vae(tmp_path):
    """A LATENT is raw VAE latents in both: ComfyUI's own Wan2.2 VAE (``comfy.ldm.wan.vae2_2``, run in its Python)
    with our weights encodes a video to our latent and decodes our latent to our video, and its Wan22 latent format
    normalizes a latent exactly as our sampler does."""
    import dataclasses
    import json
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file, save_file

    from wan_core.latents import normalize_latents
    from wan_core.models.vae22 import WAN22_LATENT_CHANNELS

    config = dataclasses.replace(TINY, z_dim=WAN22_LATENT_CHANNELS)
    ours = WanVAE22(config).eval()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in ours.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1 + 0.1 * noise if name.endswith("gamma") else noise / (p[0].numel() if p.dim() > 1 else 1) ** 0.5)
    video = torch.rand(1, 3, 5, 32, 32, generator=gen) * 2 - 1
    latent = torch.randn(1, WAN22_LATENT_CHANNELS, 2, 2, 2, generator=gen)
    save_file({k: v.contiguous() for k, v in ours.state_dict().items()}, tmp_path / "weights.safetensors")
    save_file({"video": video, "latent": latent}, tmp_path / "inputs.safetensors")
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    spec = {**dataclasses.asdict(config), "dim_mult": list(config.dim_mult),
            "temporal_downsample": list(config.temporal_downsample)}
    subprocess.run([python, "-c", COMFY_VAE22, os.environ["COMFYUI_PATH"]], input=json.dumps([spec, str(tmp_path)]),
                   text=True, capture_output=True, timeout=600, check=True)
    theirs = load_file(tmp_path / "outputs.safetensors")
    with torch.no_grad():
        assert _rel(ours.encode(video), theirs["latent"]) < TOL
        # ComfyUI's VAE wrapper clamps the decoded pixels to [-1, 1] afterwards (its 0..1 IMAGE); ours in the decode
        assert _rel(ours.decode(latent), theirs["video"].clamp(-1, 1)) < TOL
    assert torch.allclose(normalize_latents(latent), theirs["normalized"], rtol=1e-6, atol=1e-6)
