"""Sequence parallelism (DeepSpeed-Ulysses) over ``torch.distributed``: one DiT forward shared by N processes.

Each rank holds the full weights and a contiguous 1/N of the video tokens through the blocks: the rotary angles,
per-frame modulation (TI2V-5B) and VACE hints of its own tokens. Around each self-attention an all-to-all trades
the token split for a head split (every rank attends over all tokens with H/N of the heads) and a second one
trades it back; cross-attention to the text (and image) tokens, which every rank holds, stays local, as does the
feed-forward. After the last block the shards are gathered, so every rank applies the head to the whole sequence
and holds the same prediction.

Shards differ by at most one token (the first ``L mod N`` ranks hold one more) instead of padding to a multiple of
N: there is then no padded token to mask out of the attention, so every attention kernel (flash, sage) stays
usable, and nothing has to be dropped at the end. The Ulysses degree must divide the model's head count; beyond
it, ring attention (yunchang) runs across groups of Ulysses ranks, passing equal token chunks (so the ranks must
divide the token count).
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


def check_degree(heads: int, degree: int, what: str = "the model", ring: int = 1) -> None:
    """An :class:`InputError` naming the valid degrees unless ``degree`` divides ``heads``."""
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
        raise InputError(f"the sequence-parallel degree must be a whole number of processes, got {degree!r}")
    if heads % degree:
        valid = ", ".join(str(d) for d in range(1, heads + 1) if heads % d == 0)
        ranks = degree * ring
        largest = max(d for d in range(1, heads + 1) if heads % d == 0 and ranks % d == 0)
        hint = f", or share the tokens of {ranks} ranks as ulysses={largest},ring={ranks // largest} (yunchang's " \
               "ring attention)"
        raise InputError(f"a Ulysses degree of {degree} does not divide the {heads} attention heads of {what}; "
                         f"use one of {valid}{hint}")


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


class RingAttention:
    """``attend(q, k, v)`` for token chunks over a ring of ranks (yunchang's ring attention: each rank's keys /
    values travel around the ring, the partial results merged by their log-sum-exp): q / k / v ``[B, S, h, d]`` ->
    ``[B, S, h*d]``, equal to attending over every ring member's chunk."""

    def __init__(self, group):
        from yunchang.ring.ring_pytorch_attn import ring_pytorch_attn_func

        self.group, self._attend = group, ring_pytorch_attn_func

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self._attend(q, k, v, causal=False, group=self.group).flatten(2)


def check_ring_kernel(device: torch.device, dtype: torch.dtype) -> None:
    """yunchang's ring attention computes with torch's flash kernel: CUDA, bf16 or fp16; anything else is an
    :class:`InputError` before the render."""
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        raise InputError(f"ring attention (yunchang) runs torch's flash kernel, on CUDA GPUs in bf16 or fp16; this "
                         f"render computes in {str(dtype).removeprefix('torch.')} on {device}: use Ulysses degrees "
                         "that divide the heads here, or the default compute dtype on GPUs")


def check_ring_tokens(tokens: int, ranks: int) -> None:
    """Ring attention passes equal chunks: an :class:`InputError` unless ``ranks`` divide the ``tokens``."""
    if tokens % ranks:
        raise InputError(f"ring attention passes equal token chunks around the ring: the {tokens} video tokens of "
                         f"this size do not divide by the {ranks} ranks that share them; choose a size whose tokens "
                         f"(latent frames x height/16 x width/16) they divide, or a Ulysses degree alone")


class SequenceParallelRunner:
    """A block runner that runs ``inner`` (any runner: resident, streamed, compiled) on this rank's token shard
    with Ulysses self-attention (and ring attention across ``ring`` when Ulysses runs in the smaller ``ulysses``
    groups), then gathers the shards: ``[B, L, C]`` in, ``[B, L, C]`` out on every rank."""

    def __init__(self, inner, group=None, ulysses=None, ring=None):
        self.inner, self.group, self.ulysses, self.ring = inner, group, ulysses, ring
        self.degree, self.rank = dist.get_world_size(group), dist.get_rank(group)
        self.heads_degree = self.degree if ring is None else dist.get_world_size(ulysses)

    def __call__(self, blocks, h: torch.Tensor, inputs) -> torch.Tensor:
        heads = h.shape[-1] // (2 * inputs.rotation[0].shape[-1])  # rotary tables: [L, 1, head_dim / 2]
        check_degree(heads, self.heads_degree)  # (blocks may be streamed or compiled stand-ins: not asked)
        if self.ring is not None:
            check_ring_tokens(h.shape[1], self.degree)
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
                       self_attend=self._self_attention(inputs.self_attend or inputs.attend, bounds))

    def _self_attention(self, kernel, bounds: list[tuple[int, int]]):
        """Ulysses over the whole group with ``kernel``; with a ring, Ulysses within this rank's ``ulysses`` group
        (consecutive shards) around ring attention across the groups (which then runs yunchang's kernel)."""
        if self.ring is None:
            return UlyssesAttention(kernel, bounds, self.group)
        ring, u = RingAttention(self.ring), self.heads_degree
        if u == 1:
            return ring
        first = self.rank // u * u
        return UlyssesAttention(ring, bounds[first:first + u], self.ulysses)

    def _gathered(self, shard: torch.Tensor, bounds: list[tuple[int, int]]) -> torch.Tensor:
        """Every rank's ``[B, S_j, C]`` shard joined to ``[B, L, C]`` (shards padded to the longest to gather)."""
        longest = max(end - start for start, end in bounds)
        padded = torch.nn.functional.pad(shard, (0, 0, 0, longest - shard.shape[1])).contiguous()
        parts = [torch.empty_like(padded) for _ in bounds]
        dist.all_gather(parts, padded, group=self.group)
        return torch.cat([p[:, :end - start] for p, (start, end) in zip(parts, bounds)], dim=1)

    def __repr__(self) -> str:
        return f"SequenceParallelRunner({self.inner!r}, degree={self.degree})"
