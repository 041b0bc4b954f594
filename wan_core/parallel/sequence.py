"""Sequence parallelism (DeepSpeed-Ulysses) over ``torch.distributed``: one DiT forward shared by N processes.

Each rank holds the full weights and a contiguous 1/N of the video tokens through the blocks: the rotary angles,
per-frame modulation (TI2V-5B) and VACE hints of its own tokens. Around each self-attention an all-to-all trades
the token split for a head split (every rank attends over all tokens with H/N of the heads) and a second one
trades it back; cross-attention to the text (and image) tokens, which every rank holds, stays local, as does the
feed-forward. After the last block the shards are gathered, so every rank applies the head to the whole sequence
and holds the same prediction.

Shards differ by at most one token (the first ``L mod N`` ranks hold one more) instead of padding to a multiple of
N: there is then no padded token to mask out of the attention, so every attention kernel (flash, sage) stays
usable, and nothing has to be dropped at the end. The degree must divide the model's head count.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.distributed as dist

from ..errors import InputError


def shard_bounds(length: int, degree: int) -> list[tuple[int, int]]:
    """``[start, end)`` of each rank's tokens of a sequence of ``length``: contiguous, the first ``length mod
    degree`` one token longer."""
    base, extra = divmod(length, degree)
    bounds, start = [], 0
    for rank in range(degree):
        end = start + base + (rank < extra)
        bounds.append((start, end))
        start = end
    return bounds


def check_degree(heads: int, degree: int, what: str = "the model") -> None:
    """An :class:`InputError` naming the valid degrees unless ``degree`` divides ``heads``."""
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
        raise InputError(f"the sequence-parallel degree must be a whole number of processes, got {degree!r}")
    if heads % degree:
        valid = ", ".join(str(d) for d in range(1, heads + 1) if heads % d == 0)
        raise InputError(f"a Ulysses degree of {degree} does not divide the {heads} attention heads of {what}; "
                         f"use one of {valid}")


class UlyssesAttention:
    """``attend(q, k, v)`` for token shards: q / k / v ``[B, S_r, H, d]`` (this rank's tokens) -> ``[B, S_r, H*d]``,
    equal to attending over the whole sequence with ``inner`` (any kernel of the attention registry)."""

    def __init__(self, inner, bounds: list[tuple[int, int]], group=None):
        self.inner, self.bounds, self.group = inner, bounds, group
        self.degree = len(bounds)
        self.rank = dist.get_rank(group)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, v = (self._to_heads(t) for t in (q, k, v))
        out = self.inner(q, k, v)  # [B, L, H/N * d]
        return self._to_tokens(out, q.shape[2])

    def _to_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, S_r, H, d]`` -> ``[B, L, H/N, d]``: head group j of my tokens to rank j, everyone's tokens of mine."""
        b, s, heads, d = x.shape
        n = self.degree
        send = x.reshape(b, s, n, heads // n, d).permute(2, 1, 0, 3, 4).contiguous()  # [N, S_r, B, h, d]
        sizes = [end - start for start, end in self.bounds]
        received = send.new_empty(sum(sizes), b, heads // n, d)
        dist.all_to_all_single(received, send.flatten(0, 1), sizes, [s] * n, group=self.group)
        return received.permute(1, 0, 2, 3)  # [B, L, h, d], tokens in order (rank j's shard from rank j)

    def _to_tokens(self, out: torch.Tensor, heads_here: int) -> torch.Tensor:
        """``[B, L, h*d]`` (my head group over all tokens) -> ``[B, S_r, H*d]`` (all heads of my tokens)."""
        b, length, width = out.shape
        n, d = self.degree, width // heads_here
        sizes = [end - start for start, end in self.bounds]
        mine = sizes[self.rank]
        send = out.reshape(b, length, heads_here, d).permute(1, 0, 2, 3).contiguous()  # [L, B, h, d]
        received = send.new_empty(n * mine, b, heads_here, d)
        dist.all_to_all_single(received, send, [mine] * n, sizes, group=self.group)
        return received.view(n, mine, b, heads_here, d).permute(2, 1, 0, 3, 4).reshape(b, mine, n * heads_here * d)


class SequenceParallelRunner:
    """A block runner that runs ``inner`` (any runner: resident, streamed, compiled) on this rank's token shard
    with Ulysses self-attention, then gathers the shards: ``[B, L, C]`` in, ``[B, L, C]`` out on every rank."""

    def __init__(self, inner, group=None):
        self.inner, self.group = inner, group
        self.degree, self.rank = dist.get_world_size(group), dist.get_rank(group)

    def __call__(self, blocks, h: torch.Tensor, inputs) -> torch.Tensor:
        heads = h.shape[-1] // (2 * inputs.rotation[0].shape[-1])  # rotary tables: [L, 1, head_dim / 2]
        check_degree(heads, self.degree)  # (blocks may be streamed or compiled stand-ins: not asked)
        bounds = shard_bounds(h.shape[1], self.degree)
        start, end = bounds[self.rank]
        out = self.inner(blocks, h[:, start:end].contiguous(), self._shard_inputs(inputs, bounds, h.shape[1]))
        return self._gathered(out, bounds)

    def _shard_inputs(self, inputs, bounds: list[tuple[int, int]], length: int):
        """The block inputs of this rank's tokens: rotary angles, per-token modulation of a per-frame model, VACE
        hints; self-attention through the all-to-all."""
        start, end = bounds[self.rank]
        cos, sin = inputs.rotation
        e6, frames = inputs.e6, inputs.frames
        if frames is not None:  # per latent frame (TI2V): one modulation row per token of the shard, frame by frame
            frame_of = torch.arange(start, end, device=e6.device) // (length // frames)
            e6, frames = e6.index_select(1, frame_of), end - start
        hints = None if inputs.hints is None else {i: t[:, start:end] for i, t in inputs.hints.items()}
        return replace(inputs, e6=e6, frames=frames, rotation=(cos[start:end], sin[start:end]), hints=hints,
                       self_attend=UlyssesAttention(inputs.self_attend or inputs.attend, bounds, self.group))

    def _gathered(self, shard: torch.Tensor, bounds: list[tuple[int, int]]) -> torch.Tensor:
        """Every rank's ``[B, S_j, C]`` shard joined to ``[B, L, C]`` (shards padded to the longest to gather)."""
        longest = max(end - start for start, end in bounds)
        padded = torch.nn.functional.pad(shard, (0, 0, 0, longest - shard.shape[1])).contiguous()
        parts = [torch.empty_like(padded) for _ in bounds]
        dist.all_gather(parts, padded, group=self.group)
        return torch.cat([p[:, :end - start] for p, (start, end) in zip(parts, bounds)], dim=1)

    def __repr__(self) -> str:
        return f"SequenceParallelRunner({self.inner!r}, degree={self.degree})"
