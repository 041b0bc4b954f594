"""The Wan2.1 3-D causal VAE (z_dim 16, stride (4, 8, 8)) with a chunked, constant-memory run.

Video is encoded with the first frame alone and then 4 frames per chunk, and decoded one latent
frame per chunk; each causal layer carries the last (at most 2) frames of its input from one
chunk to the next in a :class:`CausalCache`, so memory does not grow with the frame count and the
result equals a single pass over the whole clip. Module attributes mirror the official keys
(``encoder.downsamples.0.residual.2.weight`` ...). Shapes: B batch, C channels, T frames.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..constants import LATENT_CHANNELS, VAE_STRIDE, check_frame_count, latent_frames, video_frames
from ..errors import InputError, RenderInterrupted
from ..runtime.finite import check_finite, check_output

FIRST_CHUNK = 1
"""Frames in the first encode chunk: the first frame is encoded alone (its own latent frame)."""

CHUNK = VAE_STRIDE[0]
"""Frames per later encode chunk: 4 frames -> 1 latent frame."""

_FIRST = "first-chunk"  # cache marker: an upsampling layer has seen its first chunk (no frames kept)


@dataclass(frozen=True)
class VAEConfig:
    """Architecture of the Wan2.1 VAE (only the base width and latent channels vary)."""

    base_dim: int = 96  # channels after the first convolution
    z_dim: int = LATENT_CHANNELS  # latent channels
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)  # channel multiplier per resolution level
    num_res_blocks: int = 2  # residual blocks per encoder level (decoder: one more)
    temporal_downsample: tuple[bool, ...] = (False, True, True)  # which encoder levels halve time


WAN21_VAE = VAEConfig()


class CausalCache:
    """The frames each causal layer carries into the next chunk, keyed by the layer itself.

    One instance serves one encode or decode call; it never holds more than 2 frames per layer.
    """

    def __init__(self):
        self._tails: dict[nn.Module, torch.Tensor | str] = {}

    def get(self, layer: nn.Module):
        return self._tails.get(layer)

    def put(self, layer: nn.Module, tail) -> None:
        self._tails[layer] = tail

    def max_frames(self) -> int:
        """The most frames any layer holds (the structural memory bound: at most 2)."""
        return max((t.shape[2] for t in self._tails.values() if isinstance(t, torch.Tensor)), default=0)


def _tail(x: torch.Tensor, previous) -> torch.Tensor:
    """The last 2 frames of ``x`` (padded with the previous tail's last frame when x has one frame)."""
    tail = x[:, :, -2:].clone()
    if tail.shape[2] < 2 and isinstance(previous, torch.Tensor):
        tail = torch.cat([previous[:, :, -1:], tail], dim=2)
    return tail


class CausalConv3d(nn.Conv3d):
    """3-D convolution padded only towards the past in time (so frame t never sees t+1).

    Spatial padding is the convolution's own; the time padding is the previous chunk's frames
    (or zeros), concatenated in front.
    """

    def __init__(self, in_dim: int, out_dim: int, kernel, stride=1, padding=0):
        pt, ph, pw = (padding,) * 3 if isinstance(padding, int) else padding
        super().__init__(in_dim, out_dim, kernel, stride=stride, padding=(0, ph, pw))
        self.time_pad = 2 * pt

    def forward(self, x: torch.Tensor, previous: torch.Tensor | None = None) -> torch.Tensor:
        """x ``[B, C, T, H, W]``; ``previous`` frames (from the last chunk) replace zero padding."""
        if self.time_pad == 0:
            return super().forward(_channels_last(x))
        parts = [x]
        missing = self.time_pad
        if previous is not None:
            parts.insert(0, previous.to(x.dtype))
            missing -= previous.shape[2]
        if missing > 0:
            parts.insert(0, torch.zeros_like(x[:, :, :1]).expand(-1, -1, missing, -1, -1))  # keeps x's layout
        return super().forward(_channels_last(torch.cat(parts, dim=2)))

    def run(self, x: torch.Tensor, cache: CausalCache | None) -> torch.Tensor:
        """Forward with the chunk-to-chunk cache (a no-op cache for convolutions without time reach)."""
        if cache is None or self.time_pad == 0:
            return self(x)
        previous = cache.get(self)
        cache.put(self, _tail(x, previous))
        return self(x, previous)

class ChannelRMSNorm(nn.Module):
    """Channel RMS norm: ``x / max(||x||_C, 1e-12) * sqrt(C) * gamma`` (keys ``.gamma``)."""

    def __init__(self, dim: int, spatial_dims: int):
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(dim, *([1] * spatial_dims)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inverse = torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min_(1e-12).reciprocal_()
        return (x * inverse).mul_(self.gamma.to(x.dtype) * self.scale)


class ResidualBlock(nn.Module):
    """norm, SiLU, causal 3x3x3 conv, norm, SiLU, (dropout), causal conv; plus a 1x1x1 shortcut."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.residual = nn.Sequential(
            ChannelRMSNorm(in_dim, 3), nn.SiLU(inplace=True), CausalConv3d(in_dim, out_dim, 3, padding=1),
            ChannelRMSNorm(out_dim, 3), nn.SiLU(inplace=True), nn.Identity(),
            CausalConv3d(out_dim, out_dim, 3, padding=1))
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        h = self.shortcut(x)
        for layer in self.residual:
            x = layer.run(x, cache) if isinstance(layer, CausalConv3d) else layer(x)
        return x + h


class SpatialAttention(nn.Module):
    """Single-head self-attention over each frame's pixels (the middle of encoder and decoder)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = ChannelRMSNorm(dim, 2)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        qkv = self.to_qkv(self.norm(frames)).flatten(2).transpose(1, 2)  # [B*T, H*W, 3C]
        q, k, v = qkv.unsqueeze(1).chunk(3, dim=-1)  # each [B*T, 1, H*W, C]
        out = F.scaled_dot_product_attention(q, k, v).squeeze(1).transpose(1, 2).reshape(b * t, c, h, w)
        return x + self.proj(out).reshape(b, t, c, h, w).transpose(1, 2)


def _per_frame(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2-D layer to every frame of ``[B, C, T, H, W]``."""
    b, _, t = x.shape[:3]
    y = layer(x.transpose(1, 2).flatten(0, 1))
    return y.unflatten(0, (b, t)).transpose(1, 2)


class Upsample2x(nn.Module):
    """Nearest-neighbour 2x spatial upsampling computed in fp32 (no parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x.float(), scale_factor=2.0, mode="nearest-exact").to(x.dtype)


class Resample(nn.Module):
    """Spatial 2x down/up sampling, with an optional causal 2x in time.

    ``down3d``: the first chunk keeps its single frame; later chunks convolve (kernel 3, stride 2)
    over the previous chunk's last frame and their own, halving time. ``up3d``: the first chunk
    passes through; later chunks make two frames per frame with a causal conv to 2C channels.
    """

    def __init__(self, dim: int, mode: str, halve: bool = True):
        super().__init__()
        self.mode = mode
        if mode.startswith("up"):  # the Wan2.1 upsampler halves the channels, the Wan2.2 one keeps them
            self.resample = nn.Sequential(Upsample2x(), nn.Conv2d(dim, dim // 2 if halve else dim, 3, padding=1))
        else:
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        if mode == "up3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "down3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        if self.mode == "up3d" and cache is not None:
            x = self._double_frames(x, cache)
        x = _per_frame(self.resample, x)
        if self.mode == "down3d" and cache is not None:
            previous = cache.get(self)
            cache.put(self, x[:, :, -1:].clone() if previous is not None else x.clone())
            if previous is not None:
                x = self.time_conv(torch.cat([previous[:, :, -1:], x], dim=2))
        return x

    def _double_frames(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        previous = cache.get(self)
        if previous is None:
            cache.put(self, _FIRST)
            return x
        tail = _tail(x, previous)
        if tail.shape[2] < 2:  # after the first chunk: the frame before is zero padding
            tail = torch.cat([torch.zeros_like(tail), tail], dim=2)
        cache.put(self, tail)
        y = self.time_conv(x, None if isinstance(previous, str) else previous)  # [B, 2C, T, H, W]
        b, c2, t, h, w = y.shape
        return y.view(b, 2, c2 // 2, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c2 // 2, 2 * t, h, w)


def _run(layers, x: torch.Tensor, cache: CausalCache | None) -> torch.Tensor:
    for layer in layers:
        if isinstance(layer, CausalConv3d):
            x = layer.run(x, cache)
        elif isinstance(layer, (ResidualBlock, SpatialAttention, Resample)):
            x = layer(x, cache)
        else:
            x = layer(x)
    return x


def _head(dim: int, out: int) -> nn.Sequential:
    return nn.Sequential(ChannelRMSNorm(dim, 3), nn.SiLU(inplace=True), CausalConv3d(dim, out, 3, padding=1))


def _middle(dim: int) -> nn.Sequential:
    return nn.Sequential(ResidualBlock(dim, dim), SpatialAttention(dim), ResidualBlock(dim, dim))


class Encoder3d(nn.Module):
    """Video ``[B, 3, T, H, W]`` -> ``[B, 2 z_dim, T', H/8, W/8]`` (mean and log-variance)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        dims = [cfg.base_dim * m for m in (1, *cfg.dim_mult)]
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        layers: list[nn.Module] = []
        for level, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if level < len(cfg.dim_mult) - 1:
                layers.append(Resample(out_dim, "down3d" if cfg.temporal_downsample[level] else "down2d"))
        self.downsamples = nn.Sequential(*layers)
        self.middle = _middle(dims[-1])
        self.head = _head(dims[-1], cfg.z_dim * 2)

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        x = self.conv1.run(x, cache)
        for part in (self.downsamples, self.middle, self.head):
            x = _run(part, x, cache)
        return x


class Decoder3d(nn.Module):
    """Latents ``[B, z_dim, T', h, w]`` -> video ``[B, 3, T, 8h, 8w]``."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        mult = cfg.dim_mult
        dims = [cfg.base_dim * m for m in (mult[-1], *mult[::-1])]
        temporal_upsample = cfg.temporal_downsample[::-1]
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = _middle(dims[0])
        layers: list[nn.Module] = []
        for level, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if level > 0:  # the upsampler before this level halved the channels
                in_dim //= 2
            for _ in range(cfg.num_res_blocks + 1):
                layers.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if level < len(mult) - 1:
                layers.append(Resample(out_dim, "up3d" if temporal_upsample[level] else "up2d"))
        self.upsamples = nn.Sequential(*layers)
        self.head = _head(dims[-1], 3)

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        x = self.conv1.run(x, cache)
        for part in (self.middle, self.upsamples, self.head):
            x = _run(part, x, cache)
        return x


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """Channels-last 3-D layout: the CPU convolution kernels run it about 15% faster."""
    return x.contiguous(memory_format=torch.channels_last_3d)


def check_video(video: torch.Tensor, multiple: int = VAE_STRIDE[1]) -> None:
    """Raise :class:`InputError` unless video is ``[B, 3, 4n+1, H, W]`` in [-1, 1] with H, W multiples of 8."""
    if video.dim() != 5 or video.shape[1] != 3:
        raise InputError(f"video must be [B, 3, frames, height, width], got shape {tuple(video.shape)}; "
                         "ComfyUI IMAGE batches convert with wan_core.images_to_video")
    check_frame_count(int(video.shape[2]))
    check_finite("the video frames", video, "an image node before this one produced invalid values")
    for name, size in (("height", video.shape[3]), ("width", video.shape[4])):
        if size % multiple:
            raise InputError(f"video {name} {size} is not a multiple of {multiple}; "
                             f"resize or crop to {size - size % multiple} or {size - size % multiple + multiple}")
    lo, hi = video.min().item(), video.max().item()
    if lo < -1.001 or hi > 1.001:
        raise InputError(f"video values must lie in [-1, 1], got [{lo:.3f}, {hi:.3f}]; "
                         "map 0..1 images with x * 2 - 1")


def _stop_if(interrupt: Callable[[], bool] | None, what: str, i: int, n: int) -> None:
    if interrupt is not None and interrupt():
        raise RenderInterrupted(f"{what} interrupted before chunk {i + 1} of {n}")


def check_latents(z: torch.Tensor, z_dim: int) -> None:
    if z.dim() != 5 or z.shape[1] != z_dim or min(z.shape) < 1:
        raise InputError(f"latents must be [B, {z_dim}, F', H/8, W/8] with every size at least 1, "
                         f"got shape {tuple(z.shape)}")
    check_finite("the LATENT", z, "it comes from a damaged file or a node that failed; re-encode it")


class WanVAE(nn.Module):
    """Wan2.1 VAE: ``encode(video) -> RAW latents``, ``decode(RAW latents) -> video``.

    ``encode``: ``[B, 3, 4n+1, H, W]`` in [-1, 1] -> ``[B, 16, n+1, H/8, W/8]`` (the posterior mean).
    ``decode``: the reverse, clamped to [-1, 1]. Both run chunk by chunk with a :class:`CausalCache`;
    ``decode(chunk=k)`` decodes k latent frames per chunk after the first (same result, more memory).
    """

    stride = VAE_STRIDE  # frames, height, width per latent cell

    def __init__(self, config: VAEConfig = WAN21_VAE, compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.config = config
        self.compute_dtype = compute_dtype
        self.encoder = Encoder3d(config)
        self.conv1 = CausalConv3d(config.z_dim * 2, config.z_dim * 2, 1)
        self.conv2 = CausalConv3d(config.z_dim, config.z_dim, 1)
        self.decoder = Decoder3d(config)

    @torch.no_grad()
    def encode(self, video: torch.Tensor, interrupt: Callable[[], bool] | None = None,
               progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Video ``[B, 3, 4n+1, H, W]`` in [-1, 1] -> RAW latents; ``interrupt()`` is asked between chunks,
        ``progress(chunks_done, chunks)`` told after each."""
        check_video(video)
        x = _channels_last(video.to(device=self._device(), dtype=self.compute_dtype))
        b, _, frames, h, w = x.shape
        n = latent_frames(frames)
        out = torch.empty(b, self.config.z_dim, n, h // VAE_STRIDE[1], w // VAE_STRIDE[2],
                          dtype=torch.float32, device=x.device)
        cache = CausalCache()
        for i in range(n):
            _stop_if(interrupt, "VAE encode", i, n)
            start = 0 if i == 0 else FIRST_CHUNK + CHUNK * (i - 1)
            stop = FIRST_CHUNK + CHUNK * i
            moments = self.conv1(self.encoder(x[:, :, start:stop], cache))
            out[:, :, i:i + 1] = moments[:, : self.config.z_dim].float()
            if progress is not None:
                progress(i + 1, n)
        return self._checked(out, "encode")

    @torch.no_grad()
    def decode(self, z: torch.Tensor, chunk: int = 1, cache: CausalCache | None = None,
               interrupt: Callable[[], bool] | None = None,
               progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """RAW latents -> video in [-1, 1]. ``cache``: an empty :class:`CausalCache` to use (lets a caller
        inspect it), default a new one; ``interrupt()`` is asked between chunks, ``progress(chunks_done,
        chunks)`` told after each."""
        check_latents(z, self.config.z_dim)
        if chunk < 1:
            raise InputError(f"chunk must be at least 1 latent frame, got {chunk}")
        x = self.conv2(_channels_last(z.to(device=self._device(), dtype=self.compute_dtype)))
        b, _, n, h, w = x.shape
        frames = video_frames(n)
        out = torch.empty(b, 3, frames, h * VAE_STRIDE[1], w * VAE_STRIDE[2], dtype=torch.float32, device=x.device)
        cache = CausalCache() if cache is None else cache
        bounds = [0, 1, *range(1 + chunk, n, chunk), n] if n > 1 else [0, 1]
        for i, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
            _stop_if(interrupt, "VAE decode", i, len(bounds) - 1)
            piece = self.decoder(x[:, :, start:stop], cache)  # 1 frame for the first chunk, 4 per latent after
            first = 0 if start == 0 else video_frames(start)
            out[:, :, first:first + piece.shape[2]] = piece.float()
            if progress is not None:
                progress(i + 1, len(bounds) - 1)
        return self._checked(out, "decode").clamp_(-1, 1)

    def _checked(self, out: torch.Tensor, what: str) -> torch.Tensor:
        """``out`` if finite; else a :class:`CheckpointError` naming damaged weights, or a :class:`RenderError`."""
        return check_output(f"VAE {what} (compute dtype {self.compute_dtype})", out, self)

    def _device(self) -> torch.device:
        return self.conv2.weight.device
