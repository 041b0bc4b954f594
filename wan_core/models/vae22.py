"""The Wan2.2 3-D causal VAE (TI2V-5B): 48 latent channels, 4x16x16 compression, run chunk by chunk.

It is built from the Wan2.1 VAE's layers (:mod:`.vae`: causal convolutions, channel RMS norms, residual blocks,
spatial attention, resamplers) with three changes: the video is patchified 2x2 into 12 channels before the
encoder (and the decoder's 12 channels are unpatchified after it); each resolution level is a residual group
whose input is added back through a parameter-free shortcut that averages (encoder) or repeats (decoder) the
input into the level's output shape; the decoder is wider than the encoder and its upsamplers keep their
channels. Chunks are as in Wan2.1 (the first frame alone, then 4 frames per latent frame), each causal layer
carrying its last frames in a :class:`~.vae.CausalCache`; in the first decode chunk the repeating shortcuts drop
the frames a temporal upsampler does not make. Module names mirror the official keys
(``encoder.downsamples.0.downsamples.0.residual.0.gamma`` ...).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..constants import WAN22_LATENT_CHANNELS, WAN22_VAE_STRIDE, latent_frames, video_frames
from ..errors import InputError
from ..runtime.finite import check_output
from .vae import (
    CHUNK,
    FIRST_CHUNK,
    CausalCache,
    CausalConv3d,
    Resample,
    ResidualBlock,
    _channels_last,
    _head,
    _middle,
    _run,
    _stop_if,
    check_latents,
    check_video,
)

PATCH = 2
"""The 2x2 spatial patchify around the network: 3 -> 12 channels (and back)."""


@dataclass(frozen=True)
class VAE22Config:
    """Architecture of the Wan2.2 VAE."""

    base_dim: int = 160  # encoder channels after its first convolution
    decoder_dim: int = 256  # decoder base width
    z_dim: int = WAN22_LATENT_CHANNELS
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)


WAN22_VAE = VAE22Config()


def patchify(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, T, 2H, 2W]`` -> ``[B, 4C, T, H, W]``, channel index ``c * 4 + col * 2 + row`` (the official order)."""
    b, c, t, h, w = x.shape
    x = x.view(b, c, t, h // PATCH, PATCH, w // PATCH, PATCH)  # rows (q) then columns (r)
    return x.permute(0, 1, 6, 4, 2, 3, 5).reshape(b, c * PATCH * PATCH, t, h // PATCH, w // PATCH)


def unpatchify(x: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`patchify`."""
    b, c4, t, h, w = x.shape
    c = c4 // (PATCH * PATCH)
    x = x.view(b, c, PATCH, PATCH, t, h, w)  # (channel, column, row)
    return x.permute(0, 1, 4, 5, 3, 6, 2).reshape(b, c, t, h * PATCH, w * PATCH)


class AverageShortcut(nn.Module):
    """Parameter-free shortcut of an encoder level: ``[B, C_in, T, H, W]`` -> ``[B, C_out, T/ft, H/fs, W/fs]``, each
    output channel the mean of a group of (channel, time, row, column) values; a chunk of odd length is padded
    with a zero frame in front first."""

    def __init__(self, in_dim: int, out_dim: int, factor_t: int, factor_s: int):
        super().__init__()
        self.out_dim, self.factor_t, self.factor_s = out_dim, factor_t, factor_s
        self.group = in_dim * factor_t * factor_s * factor_s // out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ft, fs = self.factor_t, self.factor_s
        pad = (ft - x.shape[2] % ft) % ft
        if pad:
            x = torch.cat([x.new_zeros(*x.shape[:2], pad, *x.shape[3:]), x], dim=2)
        b, c, t, h, w = x.shape
        x = x.view(b, c, t // ft, ft, h // fs, fs, w // fs, fs).permute(0, 1, 3, 5, 7, 2, 4, 6)
        return x.reshape(b, self.out_dim, self.group, t // ft, h // fs, w // fs).mean(dim=2)


class RepeatShortcut(nn.Module):
    """Parameter-free shortcut of a decoder level: each input channel repeated and spread over the output's
    channels, time (``factor_t``) and space (``factor_s``); in the first chunk the frames before the first are
    dropped, as the temporal upsampler makes none there."""

    def __init__(self, in_dim: int, out_dim: int, factor_t: int, factor_s: int):
        super().__init__()
        self.out_dim, self.factor_t, self.factor_s = out_dim, factor_t, factor_s
        self.repeats = out_dim * factor_t * factor_s * factor_s // in_dim

    def forward(self, x: torch.Tensor, first_chunk: bool = False) -> torch.Tensor:
        ft, fs = self.factor_t, self.factor_s
        b, _, t, h, w = x.shape
        x = x.repeat_interleave(self.repeats, dim=1).view(b, self.out_dim, ft, fs, fs, t, h, w)
        x = x.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, self.out_dim, t * ft, h * fs, w * fs)
        return x[:, :, ft - 1:] if first_chunk else x


class DownLevel(nn.Module):
    """An encoder level: residual blocks (and a downsampler) plus the averaging shortcut of its input."""

    def __init__(self, in_dim: int, out_dim: int, blocks: int, temporal: bool, down: bool):
        super().__init__()
        self.avg_shortcut = AverageShortcut(in_dim, out_dim, 2 if temporal else 1, 2 if down else 1)
        layers: list[nn.Module] = []
        for _ in range(blocks):
            layers.append(ResidualBlock(in_dim, out_dim))
            in_dim = out_dim
        if down:
            layers.append(Resample(out_dim, "down3d" if temporal else "down2d"))
        self.downsamples = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        return _run(self.downsamples, x, cache) + self.avg_shortcut(x)


class UpLevel(nn.Module):
    """A decoder level: residual blocks (and an upsampler keeping its channels) plus, where it upsamples, the
    repeating shortcut of its input."""

    def __init__(self, in_dim: int, out_dim: int, blocks: int, temporal: bool, up: bool):
        super().__init__()
        self.avg_shortcut = RepeatShortcut(in_dim, out_dim, 2 if temporal else 1, 2) if up else None
        layers: list[nn.Module] = []
        for _ in range(blocks):
            layers.append(ResidualBlock(in_dim, out_dim))
            in_dim = out_dim
        if up:
            layers.append(Resample(out_dim, "up3d" if temporal else "up2d", halve=False))
        self.upsamples = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None, first_chunk: bool = False) -> torch.Tensor:
        main = _run(self.upsamples, x, cache)
        return main if self.avg_shortcut is None else main + self.avg_shortcut(x, first_chunk)


class Encoder22(nn.Module):
    """Patchified video ``[B, 12, T, H/2, W/2]`` -> ``[B, 2 z_dim, T', H/16, W/16]`` (mean and log-variance)."""

    def __init__(self, cfg: VAE22Config):
        super().__init__()
        dims = [cfg.base_dim * m for m in (1, *cfg.dim_mult)]
        self.conv1 = CausalConv3d(3 * PATCH * PATCH, dims[0], 3, padding=1)
        last = len(cfg.dim_mult) - 1
        self.downsamples = nn.Sequential(*(
            DownLevel(dims[i], dims[i + 1], cfg.num_res_blocks, i < len(cfg.temporal_downsample)
                      and cfg.temporal_downsample[i], i != last) for i in range(len(cfg.dim_mult))))
        self.middle = _middle(dims[-1])
        self.head = _head(dims[-1], cfg.z_dim * 2)

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        x = self.conv1.run(x, cache)
        for level in self.downsamples:
            x = level(x, cache)
        return _run(self.head, _run(self.middle, x, cache), cache)


class Decoder22(nn.Module):
    """Latents ``[B, z_dim, T', h, w]`` -> patchified video ``[B, 12, T, 8h, 8w]``."""

    def __init__(self, cfg: VAE22Config):
        super().__init__()
        mult = cfg.dim_mult
        dims = [cfg.decoder_dim * m for m in (mult[-1], *mult[::-1])]
        temporal = cfg.temporal_downsample[::-1]
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = _middle(dims[0])
        last = len(mult) - 1
        self.upsamples = nn.Sequential(*(
            UpLevel(dims[i], dims[i + 1], cfg.num_res_blocks + 1, i < len(temporal) and temporal[i], i != last)
            for i in range(len(mult))))
        self.head = _head(dims[-1], 3 * PATCH * PATCH)

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None, first_chunk: bool = False) -> torch.Tensor:
        x = _run(self.middle, self.conv1.run(x, cache), cache)
        for level in self.upsamples:
            x = level(x, cache, first_chunk)
        return _run(self.head, x, cache)


class WanVAE22(nn.Module):
    """Wan2.2 VAE: ``encode(video) -> RAW latents [B, 48, n+1, H/16, W/16]``, ``decode(RAW latents) -> video``
    (``[B, 3, 4n+1, H, W]`` in [-1, 1], H and W multiples of 16), chunk by chunk with a :class:`CausalCache`."""

    stride = WAN22_VAE_STRIDE

    def __init__(self, config: VAE22Config = WAN22_VAE, compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.config = config
        self.compute_dtype = compute_dtype
        self.encoder = Encoder22(config)
        self.conv1 = CausalConv3d(config.z_dim * 2, config.z_dim * 2, 1)
        self.conv2 = CausalConv3d(config.z_dim, config.z_dim, 1)
        self.decoder = Decoder22(config)

    @torch.no_grad()
    def encode(self, video: torch.Tensor, interrupt: Callable[[], bool] | None = None,
               progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Video ``[B, 3, 4n+1, H, W]`` in [-1, 1] -> RAW latents (the posterior mean); ``interrupt()`` is asked
        between chunks, ``progress(chunks_done, chunks)`` told after each."""
        check_video(video, self.stride[1])
        x = _channels_last(patchify(video.to(device=self._device(), dtype=self.compute_dtype)))
        b, _, frames, h, w = x.shape
        n = latent_frames(frames)
        spatial = self.stride[1] // PATCH
        out = torch.empty(b, self.config.z_dim, n, h // spatial, w // spatial, dtype=torch.float32, device=x.device)
        cache = CausalCache()
        for i in range(n):
            _stop_if(interrupt, "VAE encode", i, n)
            start = 0 if i == 0 else FIRST_CHUNK + CHUNK * (i - 1)
            moments = self.conv1(self.encoder(x[:, :, start:FIRST_CHUNK + CHUNK * i], cache))
            out[:, :, i:i + 1] = moments[:, : self.config.z_dim].float()
            if progress is not None:
                progress(i + 1, n)
        return check_output(f"VAE encode (compute dtype {self.compute_dtype})", out, self)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, chunk: int = 1, cache: CausalCache | None = None,
               interrupt: Callable[[], bool] | None = None,
               progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """RAW latents -> video in [-1, 1]; ``chunk`` latent frames per chunk after the first (same result)."""
        check_latents(z, self.config.z_dim)
        if chunk < 1:
            raise InputError(f"chunk must be at least 1 latent frame, got {chunk}")
        x = self.conv2(_channels_last(z.to(device=self._device(), dtype=self.compute_dtype)))
        b, _, n, h, w = x.shape
        out = torch.empty(b, 3, video_frames(n), h * self.stride[1], w * self.stride[2], dtype=torch.float32,
                          device=x.device)
        cache = CausalCache() if cache is None else cache
        bounds = [0, 1, *range(1 + chunk, n, chunk), n] if n > 1 else [0, 1]
        for i, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
            _stop_if(interrupt, "VAE decode", i, len(bounds) - 1)
            piece = unpatchify(self.decoder(x[:, :, start:stop], cache, first_chunk=start == 0))
            first = 0 if start == 0 else video_frames(start)
            out[:, :, first:first + piece.shape[2]] = piece.float()
            if progress is not None:
                progress(i + 1, len(bounds) - 1)
        return check_output(f"VAE decode (compute dtype {self.compute_dtype})", out, self).clamp_(-1, 1)

    def _device(self) -> torch.device:
        return self.conv2.weight.device
