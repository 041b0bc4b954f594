"""The UMT5-XXL text encoder Wan2.1 conditions on (encoder stack only).

T5-style: RMS layer norm without mean or bias (fp32), attention without the 1/sqrt(d) scale and
with a learned relative-position bias per layer (UMT5: 32 buckets, max distance 128,
bidirectional), gated GELU(tanh) feed-forward. Attributes mirror the Hugging Face / ComfyUI key
names (``encoder.block.N.layer.0.SelfAttention.q.weight``). Weights are cast to the compute dtype
one Linear at a time, so a bf16 / fp8 model computes in fp32 on CPU without an fp32 copy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..runtime.finite import check_output
from ..runtime.memory_plan import MemoryPlan
from ..runtime.runners import BlockRunner, InterruptibleRunner, ResidentRunner
from ..runtime.streaming import placed_view
from .layers import CastLinear, LinearFactory


@dataclass(frozen=True)
class TextEncoderConfig:
    """Architecture of a UMT5 encoder."""

    vocab: int = 256384  # embedding rows (the SentencePiece vocabulary, padded)
    dim: int = 4096  # model width
    dim_attn: int = 4096  # heads x head width
    dim_ffn: int = 10240  # gated feed-forward width
    num_heads: int = 64
    num_layers: int = 24
    num_buckets: int = 32  # relative-position buckets (half for each direction)
    max_distance: int = 128  # distances beyond this share the last bucket
    eps: float = 1e-6


UMT5_XXL = TextEncoderConfig()


class T5LayerNorm(nn.Module):
    """``x / rms(x) * weight`` computed in fp32, returned in the input dtype."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


def relative_buckets(length: int, num_buckets: int, max_distance: int, device=None) -> torch.Tensor:
    """Bucket of (key position - query position) for every pair: ``[L, L]`` long.

    Half the buckets for keys after the query, half for keys before; in each half, distances below
    a quarter of the buckets are exact, larger ones fall in log-spaced buckets up to ``max_distance``.
    """
    rel = torch.arange(length, device=device)[None, :] - torch.arange(length, device=device)[:, None]
    half = num_buckets // 2
    buckets = (rel > 0).long() * half
    distance = rel.abs()
    exact = half // 2
    log_bucket = exact + (torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact)
                          * (half - exact)).long()
    return buckets + torch.where(distance < exact, distance, log_bucket.clamp(max=half - 1))


class SelfAttention(nn.Module):
    def __init__(self, cfg: TextEncoderConfig, linear: LinearFactory):
        super().__init__()
        self.cfg = cfg
        self.q, self.k, self.v = (linear(cfg.dim, cfg.dim_attn, bias=False) for _ in range(3))
        self.o = linear(cfg.dim_attn, cfg.dim, bias=False)
        self.relative_attention_bias = nn.Embedding(cfg.num_buckets, cfg.num_heads)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """x ``[B, L, C]``; key_mask ``[B, L]`` bool (True: a real token) -> ``[B, L, C]``."""
        b, length, _ = x.shape
        heads = self.cfg.num_heads
        q, k, v = (p(x).view(b, length, heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v))
        buckets = relative_buckets(length, self.cfg.num_buckets, self.cfg.max_distance, x.device)
        bias = self.relative_attention_bias.weight.float()[buckets].permute(2, 0, 1)[None]  # [1, heads, L, L]
        bias = bias.masked_fill(~key_mask[:, None, None, :], torch.finfo(torch.float32).min)
        scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) + bias  # no 1/sqrt(d): T5
        out = torch.matmul(scores.softmax(-1).to(v.dtype), v)
        return self.o(out.transpose(1, 2).reshape(b, length, -1))


class GatedFeedForward(nn.Module):
    """``wo(gelu_tanh(wi_0(x)) * wi_1(x))``."""

    def __init__(self, cfg: TextEncoderConfig, linear: LinearFactory):
        super().__init__()
        self.wi_0 = linear(cfg.dim, cfg.dim_ffn, bias=False)
        self.wi_1 = linear(cfg.dim, cfg.dim_ffn, bias=False)
        self.wo = linear(cfg.dim_ffn, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wo(F.gelu(self.wi_0(x), approximate="tanh") * self.wi_1(x))


class AttentionLayer(nn.Module):
    def __init__(self, cfg: TextEncoderConfig, linear: LinearFactory):
        super().__init__()
        self.SelfAttention = SelfAttention(cfg, linear)
        self.layer_norm = T5LayerNorm(cfg.dim, cfg.eps)


class FeedForwardLayer(nn.Module):
    def __init__(self, cfg: TextEncoderConfig, linear: LinearFactory):
        super().__init__()
        self.DenseReluDense = GatedFeedForward(cfg, linear)
        self.layer_norm = T5LayerNorm(cfg.dim, cfg.eps)


class Block(nn.Module):
    def __init__(self, cfg: TextEncoderConfig, linear: LinearFactory):
        super().__init__()
        self.layer = nn.ModuleList([AttentionLayer(cfg, linear), FeedForwardLayer(cfg, linear)])

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        attn, ffn = self.layer
        x = x + attn.SelfAttention(attn.layer_norm(x), key_mask)
        return x + ffn.DenseReluDense(ffn.layer_norm(x))


class Stack(nn.Module):
    def __init__(self, cfg: TextEncoderConfig, linear: LinearFactory):
        super().__init__()
        self.block = nn.ModuleList(Block(cfg, linear) for _ in range(cfg.num_layers))
        self.final_layer_norm = T5LayerNorm(cfg.dim, cfg.eps)


class UMT5Encoder(nn.Module):
    """Token ids ``[B, L]`` and mask ``[B, L]`` -> hidden states ``[B, L, dim]`` (compute dtype)."""

    def __init__(self, config: TextEncoderConfig = UMT5_XXL, linear: LinearFactory = CastLinear,
                 compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.config = config
        self.compute_dtype = compute_dtype
        self.shared = nn.Embedding(config.vocab, config.dim)
        self.encoder = Stack(config, linear)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, runner: BlockRunner | None = None) -> torch.Tensor:
        """ids / mask ``[B, L]``; ``runner`` executes the 24 blocks (default: each where its weights are)."""
        # gathers rows where the table is (host memory when the blocks stream), then casts only those
        x = self.shared.weight[ids.to(self.shared.weight.device)].to(device=ids.device, dtype=self.compute_dtype)
        x = (runner or ResidentRunner())(self.encoder.block, x, mask.bool())
        return self.encoder.final_layer_norm(x)


Tokenizer = Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]
"""``tokenizer(texts) -> (ids [B, 512] long, mask [B, 512])`` (see ``wan_core.loading.tokenizer``)."""


class TextEncoder:
    """Prompts -> the DiT's text context: ``encode(list[str]) -> [B, 512, dim]`` float32.

    Rows after each prompt's last token (its end token) are zero, exactly as the official
    pipeline hands states to the DiT.
    """

    def __init__(self, model: UMT5Encoder, tokenizer: Tokenizer):
        self.model = model
        self.tokenizer = tokenizer

    @property
    def device(self) -> torch.device:
        return self.model.shared.weight.device

    def to(self, device) -> TextEncoder:
        """Move the weights (e.g. off the GPU once prompts are encoded); returns self."""
        self.model.to(device)
        return self

    def tokens_used(self, texts: list[str]) -> int:
        """Tokens of the longest of ``texts`` (its end token included): what :meth:`encode` computes over."""
        return int(self.tokenizer(texts)[1].sum(1).max())

    @torch.no_grad()
    def encode(self, texts: list[str], runner: BlockRunner | None = None,
               interrupt: Callable[[], bool] | None = None, plan: MemoryPlan | None = None,
               device: torch.device | None = None) -> torch.Tensor:
        """Prompts -> ``[B, 512, dim]`` float32; ``runner`` executes the encoder's block loop (default: resident;
        with ``interrupt``, one that stops between layers when it returns True). With a ``plan`` that streams
        (:func:`~wan_core.runtime.memory_plan.plan_text_encoder`), the layers it names are copied to ``device``
        one by one and the token table stays in host memory; the loaded encoder is not moved."""
        if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
            raise InputError(f"encode takes a non-empty list of prompt strings, got {texts!r}")
        ids, mask = self.tokenizer(texts)
        if runner is None and interrupt is not None:
            runner = InterruptibleRunner(interrupt, "text encoding")
        # Positions after the longest prompt are padding: their keys are masked out and their outputs
        # zeroed, and the position bias depends only on distances, so they need no compute at all.
        used = int(mask.sum(1).max())
        model = self.model
        if plan is not None and plan.streamed:
            model, _ = placed_view(model, device or self.device, plan.streamed, plan.prefetch, blocks="encoder.block",
                                   on_host=("shared",))
        compute = model.encoder.final_layer_norm.weight.device
        states = model(ids[:, :used].to(compute), mask[:, :used].to(compute), runner).float()
        out = torch.zeros(len(texts), ids.shape[1], states.shape[-1], device=states.device)
        out[:, :used] = states * mask[:, :used].to(states.device)[..., None]
        return check_output("text encoder", out, self.model)
