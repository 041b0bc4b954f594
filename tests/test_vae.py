"""The Wan2.1 VAE against wan22's ``vae2_1`` and diffusers' ``AutoencoderKLWan`` (random weights, fp32)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from tiny import dit_like_file, truncate
from tiny_vae import TINY, reference_vae, video
from wan_reference import wan_module

import wan_core
from wan_core.errors import CheckpointError, InputError
from wan_core.latents import denormalize_latents, normalize_latents
from wan_core.models.vae import WAN21_VAE, CausalCache, WanVAE

TOL = 1e-4  # relative to the output's max magnitude (DESIGN §6)


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def _scale():
    return [torch.tensor(wan_core.LATENT_MEAN), 1.0 / torch.tensor(wan_core.LATENT_STD)]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(ours, reference) on the same random weights, written once as an official .pth."""
    ref = reference_vae(seed=0)
    path = tmp_path_factory.mktemp("vae") / "Wan2.1_VAE.pth"
    torch.save(ref.state_dict(), path)
    return wan_core.load_vae(path), ref


@pytest.mark.parametrize("frames", [1, 5, 9])
def test_encode_matches_official(pair, frames):
    ours, ref = pair
    clip = video(frames)
    with torch.no_grad():
        expected = ref.encode(clip, _scale())  # the official output is normalized
    got = ours.encode(clip)
    assert got.shape == (1, 16, (frames - 1) // 4 + 1, 4, 6)
    assert wan_core.latent_frames(frames) == expected.shape[2]  # the 4n+1 rule, held to the official VAE
    assert _rel(normalize_latents(got), expected) <= TOL


@pytest.mark.parametrize("frames", [1, 5, 9])
def test_decode_matches_official(pair, frames):
    ours, ref = pair
    z = torch.randn(1, 16, (frames - 1) // 4 + 1, 4, 6, generator=torch.Generator().manual_seed(frames))
    with torch.no_grad():
        expected = ref.decode(z, _scale()).clamp(-1, 1)  # wan22's Wan2_1_VAE wrapper clamps
    got = ours.decode(denormalize_latents(z))
    assert got.shape == (1, 3, frames, 32, 48)
    assert wan_core.video_frames(z.shape[2]) == expected.shape[2]  # the inverse rule, held to the official VAE
    assert (expected.abs() < 1).float().mean() > 0.5, "random weights saturate the output; the test would be weak"
    assert _rel(got, expected) <= TOL


def _diffusers(state):
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    model = AutoencoderKLWan(base_dim=TINY.base_dim, z_dim=16)
    model.load_state_dict(convert_wan_vae_to_diffusers(dict(state)), strict=True)
    return model.eval()


def test_matches_diffusers_and_loads_its_layout(pair, tmp_path):
    ours, ref = pair
    reference = _diffusers(ref.state_dict())
    clip = video(9, seed=4)
    z = torch.randn(1, 16, 3, 4, 6, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        enc = reference.encode(clip).latent_dist.mode()
        dec = reference.decode(z).sample
    assert _rel(ours.encode(clip), enc) <= TOL
    assert _rel(ours.decode(z), dec) <= TOL
    path = tmp_path / "diffusers_vae.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, path)
    from_diffusers = wan_core.load_vae(path)
    assert _rel(from_diffusers.decode(z), dec) <= TOL


def test_comfyui_safetensors_layout(pair, tmp_path):
    ours, ref = pair
    path = tmp_path / "wan_2.1_vae.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, path)
    z = torch.randn(1, 16, 2, 4, 6)
    assert torch.equal(wan_core.load_vae(path).decode(z), ours.decode(z))


def test_chunked_decode_equals_one_piece_and_cache_stays_small(pair):
    """Per-latent-frame chunks (the official schedule) equal one chunk for all frames after the first;
    the cache holds at most 2 frames per layer at every step, so memory is flat in the frame count."""
    ours, _ = pair
    z = torch.randn(1, 16, 6, 4, 6, generator=torch.Generator().manual_seed(6))
    cache = CausalCache()
    chunked = ours.decode(z, chunk=1, cache=cache)
    assert cache.max_frames() <= 2
    one_piece = ours.decode(z, chunk=5)
    assert chunked.shape == (1, 3, 21, 32, 48)
    assert _rel(chunked, one_piece) <= 1e-5


def test_real_size_keys_match_official_on_meta():
    vae_mod = wan_module("modules.vae2_1")
    with torch.device("meta"):
        ref = vae_mod.WanVAE_(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                              temperal_downsample=[False, True, True], dropout=0.0)
        ours = WanVAE(WAN21_VAE)
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in ref.state_dict().items()}


@pytest.mark.parametrize(("clip", "message"), [
    (torch.zeros(1, 3, 6, 32, 32), "use 5 or 9"),
    (torch.zeros(1, 3, 5, 30, 32), "height 30 is not a multiple of 8"),
    (torch.zeros(1, 3, 5, 32, 36), "width 36 is not a multiple of 8"),
    (torch.full((1, 3, 5, 32, 32), 2.0), r"values must lie in \[-1, 1\]"),
    (torch.zeros(3, 5, 32, 32), r"must be \[B, 3, frames, height, width\]"),
])
def test_bad_video_is_refused(pair, clip, message):
    ours, _ = pair
    with pytest.raises(InputError, match=message):
        ours.encode(clip)


def test_bad_latents_and_files(pair, tmp_path):
    ours, ref = pair
    with pytest.raises(InputError, match=r"latents must be \[B, 16"):
        ours.decode(torch.zeros(1, 4, 2, 4, 4))
    path = tmp_path / "vae.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, path)
    truncate(path)
    with pytest.raises(CheckpointError, match="truncated"):
        wan_core.load_vae(path)
    dit = tmp_path / "dit.safetensors"
    dit_like_file(dit)
    with pytest.raises(CheckpointError, match="is a Wan2.1 diffusion model .*, not a Wan VAE"):
        wan_core.load_vae(dit)
