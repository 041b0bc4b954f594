"""Spatial tiling of VAE encode / decode: bounded memory for large frames, blended without seams.

Tiles overlap; in each overlap the two tiles are mixed with weights that rise smoothly (a
raised-cosine ramp) from the tile's edge inwards, and the result is divided by the summed weight,
so every pixel is a convex combination and no hard edge exists anywhere. Tiling is approximate:
the VAE's middle attention sees the whole frame, and each tile sees only its own part.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch

from ..constants import latent_frames, video_frames
from ..errors import InputError
from ..runtime.memory import available_bytes
from .vae import WanVAE, check_latents, check_video

log = logging.getLogger(__name__)

DECODE_ACTIVATION_FACTOR = 12
WAN22_DECODE_WIDTH = 0.42
"""The Wan2.2 decoder's width per output pixel in the units above, as a share of its base width: its last levels run
2x2-patchified (a quarter of the pixels, at full width) and its residual shortcuts repeat channels, so it holds
0.40 x 256 per pixel where the Wan2.1 decoder holds its base width; the live tensors of real-config decodes
(352x640 to 1280x704) put it at 0.40, rounded up."""
"""Live full-resolution activations during a decode chunk, in units of (base width x 4 frames x
pixels): input, padded copy, conv output, norm and activation temporaries and the residual. An
estimate checked against measured peaks by ``python -m wan_core.bench vae``."""


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` cells covering ``size`` with at least ``overlap`` shared cells."""
    if tile >= size:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    return [*starts, size - tile]


def _axis_weights(starts: list[int], tile: int, scale: int) -> list[torch.Tensor]:
    """Per-tile 1-D blend weights (in output cells = latent cells x ``scale``)."""
    weights = []
    for i, start in enumerate(starts):
        before = (starts[i - 1] + tile - start) * scale if i > 0 else 0
        after = (start + tile - starts[i + 1]) * scale if i + 1 < len(starts) else 0
        weights.append(_edge_ramp(tile * scale, before, after))
    return weights


def _rise(n: int) -> torch.Tensor:
    """Weights over an overlap of ``n`` cells, from this tile's edge inwards.

    Zero over the outer quarter (the tile's edge cells are the least accurate: its decoder saw
    zero padding there instead of the neighbour), a raised-cosine rise over the middle half, one
    over the inner quarter. Mirrored on the neighbour, so the pair always sums to a positive weight.
    """
    margin = n // 4
    rise = n - 2 * margin
    w = torch.ones(n, dtype=torch.float32)
    w[:margin] = 0.0
    w[margin:margin + rise] = torch.sin(0.5 * math.pi * (torch.arange(rise) + 0.5) / rise) ** 2
    return w


def _edge_ramp(length: int, before: int, after: int) -> torch.Tensor:
    """Blend weights ``[length]`` of one tile with ``before`` / ``after`` cells shared with its neighbours."""
    w = torch.ones(length, dtype=torch.float32)
    if before:
        w[:before] = _rise(before)
    if after:
        w[length - after:] *= _rise(after).flip(0)
    return w


def _tiled(fn, x: torch.Tensor, tile: int, overlap: int, in_scale: int, out_scale: int,
           out_channels: int, out_frames: int, interrupt: Callable[[], bool] | None,
           progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Run ``fn`` on overlapping spatial tiles of ``x`` and blend the results.

    ``tile`` / ``overlap`` are in latent cells; ``in_scale`` / ``out_scale`` convert latent cells
    to the input's / output's pixels (1 or 8). ``progress(done, total)`` counts the chunks of all tiles.
    """
    if not 0 <= overlap < tile:
        raise InputError(f"tile overlap must be in [0, tile), got overlap {overlap} for tile {tile}")
    h, w = x.shape[-2] // in_scale, x.shape[-1] // in_scale  # in latent cells
    rows, cols = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    th, tw = min(tile, h), min(tile, w)
    row_w, col_w = _axis_weights(rows, th, out_scale), _axis_weights(cols, tw, out_scale)
    out = torch.zeros(x.shape[0], out_channels, out_frames, h * out_scale, w * out_scale, dtype=torch.float32)
    total = torch.zeros(h * out_scale, w * out_scale, dtype=torch.float32)
    tiles = [(r, wr, c, wc) for r, wr in zip(rows, row_w) for c, wc in zip(cols, col_w)]
    for k, (r, wr, c, wc) in enumerate(tiles):
        piece = x[..., r * in_scale:(r + th) * in_scale, c * in_scale:(c + tw) * in_scale]
        weight = wr[:, None] * wc[None, :]
        ys, xs = slice(r * out_scale, (r + th) * out_scale), slice(c * out_scale, (c + tw) * out_scale)
        tile_progress = _tile_progress(progress, k, len(tiles))
        out[..., ys, xs] += fn(piece, interrupt=interrupt, progress=tile_progress).float().cpu() * weight
        total[ys, xs] += weight
    return out / total


def _tile_progress(progress: Callable[[int, int], None] | None, k: int, tiles: int):
    """Tile ``k``'s ``(chunks_done, chunks)`` as the whole pass's ``(done, total)``."""
    if progress is None:
        return None
    return lambda done, chunks: progress(k * chunks + done, tiles * chunks)


def decode_tiled(vae: WanVAE, z: torch.Tensor, tile: int = 32, overlap: int = 8,
                 interrupt: Callable[[], bool] | None = None,
                 progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """RAW latents ``[B, 16, F', h, w]`` -> video ``[B, 3, F, 8h, 8w]``, decoding ``tile`` x ``tile``
    latent cells at a time (``overlap`` cells shared between neighbours); ``interrupt()`` is asked
    between chunks of every tile, ``progress(chunks_done, chunks)`` counts the chunks of all tiles."""
    check_latents(z, vae.config.z_dim)  # the whole latent, before any tile is decoded
    return _tiled(vae.decode, z, tile, overlap, 1, vae.stride[1], 3, video_frames(z.shape[2]), interrupt, progress)


def encode_tiled(vae: WanVAE, video: torch.Tensor, tile: int = 32, overlap: int = 8,
                 interrupt: Callable[[], bool] | None = None,
                 progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Video ``[B, 3, F, H, W]`` -> RAW latents, encoding ``tile`` x ``tile`` latent cells (8x pixels) at a time."""
    check_video(video, vae.stride[1])  # the whole clip, before any tile is encoded
    return _tiled(vae.encode, video, tile, overlap, vae.stride[1], 1, vae.config.z_dim, latent_frames(video.shape[2]),
                  interrupt, progress)


def decode_bytes(vae: WanVAE, tile_h: int, tile_w: int, dtype: torch.dtype = torch.float32) -> int:
    """Estimated peak activation bytes of decoding a ``tile_h`` x ``tile_w`` latent tile (chunk 1)."""
    stride = vae.stride
    pixels = tile_h * stride[1] * tile_w * stride[2]
    width = vae.config.decoder_dim * WAN22_DECODE_WIDTH if hasattr(vae.config, "decoder_dim") else vae.config.base_dim
    return DECODE_ACTIVATION_FACTOR * width * stride[0] * pixels * dtype.itemsize


def tile_for_budget(vae: WanVAE, budget_bytes: int, latent_h: int, latent_w: int,
                    dtype: torch.dtype = torch.float32, overlap: int = 8) -> int | None:
    """The largest square tile (latent cells) whose decode fits ``budget_bytes``; None if no tiling is needed.

    Raises :class:`InputError` if even the smallest useful tile (overlap + 8 cells) does not fit.
    """
    if decode_bytes(vae, latent_h, latent_w, dtype) <= budget_bytes:
        return None
    tile = int(math.sqrt(budget_bytes / decode_bytes(vae, 1, 1, dtype)))
    if tile < overlap + 8:
        need = decode_bytes(vae, overlap + 8, overlap + 8, dtype)
        raise InputError(f"a VAE memory budget of {budget_bytes / 2**20:.0f} MiB is too small; "
                         f"tiled decoding needs at least {need / 2**20:.0f} MiB")
    return min(tile, max(latent_h, latent_w))


FALLBACK_OVERLAP = 8
"""Latent cells shared by neighbouring tiles when a decode falls back to tiles (64 pixels)."""

MIN_FALLBACK_TILE = 8
"""The smallest tile a fallback tries (latent cells; 64 pixels)."""


def is_out_of_memory(err: BaseException) -> bool:
    """True for CUDA's out-of-memory error and for a CPU allocation that failed."""
    text = str(err).lower()
    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text))


def decode_with_fallback(vae: WanVAE, z: torch.Tensor, interrupt: Callable[[], bool] | None = None,
                         progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """``vae.decode(z)``; if that runs out of memory, the same decode in spatial tiles sized to the free memory,
    halved again while a tile still does not fit (each retry logged, its progress counted from 0), so the last
    stage of a long render does not lose it."""
    try:
        return vae.decode(z, interrupt=interrupt, progress=progress)
    except (torch.OutOfMemoryError, RuntimeError) as err:
        if not is_out_of_memory(err):
            raise
        failure = str(err)  # the text only: the exception's traceback holds the failed attempt's tensors
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # what the failed attempt held goes back before the free memory is measured
    h, w = z.shape[-2:]
    budget = int(available_bytes(vae.conv2.weight.device) * 0.8)
    tile = tile_for_budget(vae, budget, h, w, vae.compute_dtype, FALLBACK_OVERLAP)
    tile = min(tile or max(h, w) // 2, max(h, w) // 2)  # smaller than the whole, which did not fit
    tile = max(tile, MIN_FALLBACK_TILE)
    while True:
        log.warning("VAE decode ran out of memory (%s); decoding again in tiles of %d latent cells", failure, tile)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        try:
            return decode_tiled(vae, z, tile, min(FALLBACK_OVERLAP, tile // 2), interrupt=interrupt,
                                progress=progress)
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if not is_out_of_memory(err) or tile <= MIN_FALLBACK_TILE:
                raise
            failure, tile = str(err), max(MIN_FALLBACK_TILE, tile // 2)
