"""The stages around the sampler, each written once for every front end: text encoding and the VAE.

Each takes a :class:`~wan_core.host.Host` and decides, from the host's budget and free memory, how it
runs: the text encoder whole on the device (and back) or its layers streamed; the VAE in one piece
(falling back to tiles when that runs out of memory) or in tiles sized to the free memory.
"""

from __future__ import annotations

import torch

from .conditioning import TextEmbeds, encode_prompts
from .constants import NEGATIVE_PROMPT
from .errors import InputError
from .host import Host
from .models.text_encoder import TextEncoder
from .models.vae import WanVAE
from .models.vae_tiling import decode_bytes, decode_tiled, decode_with_fallback, encode_tiled, tile_for_budget
from .runtime.memory_plan import UNLIMITED, plan_text_encoder

TILINGS = ("auto", "off", "256", "384", "512", "768")
"""VAE tiling choices: auto (tiles only when one piece would not fit), off (one piece), a tile size in pixels."""
TILE_OVERLAP = 8
"""Latent cells (64 pixels) shared by neighbouring tiles."""
FREE_SHARE = 0.8
"""Share of the free device memory an automatic tiling plans for (the allocator's slack, the VAE's caches)."""


def encode_text(text_encoder: TextEncoder, positive: str, negative: str | None, host: Host,
                budget_gb: float = 0.0) -> TextEmbeds:
    """The prompt and its negative (the official one when empty) -> :class:`TextEmbeds`, on the host's device by
    the encoder's memory plan for these prompts: whole (moved there and back) when it fits the budget
    (``budget_gb``; 0: automatic), else its layers streamed one by one (the encoder itself stays put)."""
    if getattr(host, "shares_text", False):  # a torchrun render: rank 0 encodes, every rank gets its embeddings
        return _encoded_on_first_rank(text_encoder, positive, negative, host, budget_gb)
    device = host.compute_device()
    sizes = (2, text_encoder.tokens_used([positive, negative or NEGATIVE_PROMPT]))  # prompts, tokens
    whole = plan_text_encoder(text_encoder.model, device, UNLIMITED, *sizes).peak  # what the host makes room for
    plan = plan_text_encoder(text_encoder.model, device, host.budget(text_encoder.model, whole, budget_gb), *sizes)
    host.report(f"text encoder {plan.describe()}")
    if plan.streamed:
        with host.cancellable() as interrupt, host.streaming(text_encoder.model):
            return encode_prompts(text_encoder, positive, negative, interrupt=interrupt, plan=plan, device=device)
    with host.cancellable() as interrupt, host.on_device(text_encoder):
        return encode_prompts(text_encoder, positive, negative, interrupt=interrupt)


def _encoded_on_first_rank(text_encoder: TextEncoder, positive: str, negative: str | None, host: Host,
                           budget_gb: float) -> TextEmbeds:
    """The prompts encoded once, on rank 0, and sent to the other ranks: every rank conditions on the very same
    tensors (ranks on other GPU models could round differently), and the others never place the encoder."""
    import torch.distributed as dist

    from .parallel.groups import broadcast_from_first

    if dist.get_rank() == 0:
        embeds = encode_text(text_encoder, positive, negative, _Unshared(host), budget_gb)
        broadcast_from_first([embeds.positive, embeds.negative], 2)
        return embeds
    return TextEmbeds(*broadcast_from_first(None, 2))


class _Unshared:
    """``host`` for rank 0's own encoding (the host's services, without sharing the text again)."""

    shares_text = False

    def __init__(self, host: Host):
        self._host = host

    def __getattr__(self, name: str):
        return getattr(self._host, name)


def vae_tile(vae: WanVAE, tiling: str, latent_h: int, latent_w: int, host: Host) -> int | None:
    """Tile size in latent cells for a VAE pass over ``latent_h x latent_w`` cells, or None for one piece.
    auto: the host first makes room for one piece (inside ComfyUI that unloads a diffusion model done sampling),
    then the free memory picks the tiles."""
    if tiling == "off":
        return None
    if tiling == "auto":
        host.make_room(int(decode_bytes(vae, latent_h, latent_w, vae.compute_dtype) / FREE_SHARE))
        return tile_for_budget(vae, int(host.free_memory() * FREE_SHARE), latent_h, latent_w, vae.compute_dtype,
                               TILE_OVERLAP)
    if tiling not in TILINGS:
        raise InputError(f"tiling {tiling!r} is not one of {', '.join(TILINGS)}")
    return int(tiling) // vae.stride[1]


def decode_latent(vae: WanVAE, latent: torch.Tensor, host: Host, tiling: str = "auto") -> torch.Tensor:
    """RAW ``[B, 16, F', h, w]`` -> video ``[B, 3, F, H, W]`` in [-1, 1] on the host's device (``tiling``: see
    :data:`TILINGS`; one piece falls back to tiles when it runs out of memory)."""
    count = host.count("decoding")  # VAE chunks of all tiles
    with host.cancellable() as interrupt, host.on_device(vae):
        tile = vae_tile(vae, tiling, latent.shape[-2], latent.shape[-1], host)
        if tile is None:
            return decode_with_fallback(vae, latent, interrupt=interrupt, progress=count)
        return decode_tiled(vae, latent, tile, min(TILE_OVERLAP, tile // 2), interrupt=interrupt, progress=count)


def encode_video(vae: WanVAE, video: torch.Tensor, host: Host, tiling: str = "auto") -> torch.Tensor:
    """Video ``[B, 3, F, H, W]`` in [-1, 1] -> RAW ``[B, 16, F', H/8, W/8]`` on the host's device."""
    count = host.count("encoding")
    with host.cancellable() as interrupt, host.on_device(vae):
        tile = vae_tile(vae, tiling, video.shape[-2] // vae.stride[1], video.shape[-1] // vae.stride[2], host)
        if tile is None:
            return vae.encode(video, interrupt=interrupt, progress=count)
        return encode_tiled(vae, video, tile, min(TILE_OVERLAP, tile // 2), interrupt=interrupt, progress=count)
