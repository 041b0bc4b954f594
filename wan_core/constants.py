"""Numbers of the Wan2.1 model family, named once (DESIGN §4-5).

Every other module imports these instead of repeating a literal.
"""

from __future__ import annotations

from .errors import InputError

LATENT_CHANNELS = 16
"""Channels of a Wan2.1 VAE latent."""

VAE_STRIDE = (4, 8, 8)
"""(time, height, width) down-sampling of the VAE: 4n+1 frames -> n+1 latent frames."""

PATCH_SIZE = (1, 2, 2)
"""(time, height, width) patch of the DiT's patch embedding, in latent cells."""

TEXT_LEN = 512
"""Text tokens the DiT cross-attends to (prompts are zero-padded to this length)."""

TEXT_DIM = 4096
"""Width of the UMT5-XXL encoder states."""

CLIP_TOKENS = 257
"""Tokens of one image from the CLIP ViT-H/14 penultimate block (1 class + 16x16 patches)."""

CLIP_DIM = 1280
"""Width of the CLIP ViT-H/14 tokens."""

NUM_TRAIN_TIMESTEPS = 1000
"""The DiT's time input is t = 1000 * sigma."""

PIXEL_MULTIPLE = VAE_STRIDE[1] * PATCH_SIZE[1]
"""Width and height must be multiples of this (16) to pass both the VAE and the patch embedding."""

LATENT_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
               0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
"""Per-channel mean of raw VAE latents; normalized = (raw - mean) / std."""

LATENT_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
              3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)
"""Per-channel standard deviation of raw VAE latents."""

WAN22_LATENT_CHANNELS = 48
"""Latent channels of the Wan2.2 VAE (TI2V-5B), which compresses 4x16x16."""

WAN22_VAE_STRIDE = (4, 16, 16)
"""Frames, height and width per Wan2.2 latent cell (its 2x2 patchify inside the VAE included)."""

WAN22_LATENT_MEAN = (-0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813,
                     0.0891, 0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108,
                     -0.2158, 0.2502, -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313,
                     -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944,
                     0.3573, -0.0548, -0.1681, -0.0667)
"""Per-channel mean of raw Wan2.2 VAE latents (``wan/modules/vae2_2.py``)."""

WAN22_LATENT_STD = (0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
                    0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
                    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
                    0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744)
"""Per-channel standard deviation of raw Wan2.2 VAE latents."""

NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，"
    "形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
"""The official default negative prompt (wan/configs/shared_config.py)."""


def latent_frames(frames: int) -> int:
    """Latent frame count for ``frames`` video frames (4n+1 -> n+1)."""
    return (frames - 1) // VAE_STRIDE[0] + 1


def video_frames(latent_count: int) -> int:
    """Video frame count of ``latent_count`` latent frames (n+1 -> 4n+1): the inverse of :func:`latent_frames`."""
    return (latent_count - 1) * VAE_STRIDE[0] + 1


def check_frame_count(frames: int) -> None:
    """Raise :class:`InputError` unless ``frames`` is 4n+1; the message names the nearest valid counts."""
    step = VAE_STRIDE[0]
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise InputError(f"frame count must be a positive integer of the form {step}n+1, got {frames!r}")
    if (frames - 1) % step:
        lower = frames - (frames - 1) % step
        upper = lower + step
        raise InputError(
            f"frame count {frames} is not of the form {step}n+1 (the VAE packs {step} frames per latent "
            f"frame after the first); use {lower} or {upper}")


def check_pixel_size(width: int, height: int, multiple: int = PIXEL_MULTIPLE) -> None:
    """Raise :class:`InputError` unless width and height are positive multiples of ``multiple``."""
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, int) or value < multiple:
            raise InputError(f"{name} must be an integer of at least {multiple}, got {value!r}")
        if value % multiple:
            lower = value - value % multiple
            raise InputError(
                f"{name} {value} is not a multiple of {multiple} (VAE stride 8 x patch 2); "
                f"use {lower} or {lower + multiple}")
