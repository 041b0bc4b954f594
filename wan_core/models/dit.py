"""The Wan2.1 diffusion transformer (t2v, i2v and flf2v variants).

Module attributes mirror the official checkpoint keys (``blocks.N.self_attn.q.weight`` ...), so an
official state dict loads with no renaming. Shapes use B batch, C width, L tokens, f/h/w the token
grid after patching.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..errors import InputError
from ..runtime.attention import AttentionFn
from ..runtime.context import RenderContext
from .config import MAX_ROPE_POSITIONS, DiTConfig
from .layers import (
    TOKEN_CHUNK,
    CastLinear,
    FP32LayerNorm,
    LinearFactory,
    Rotation,
    TokenRMSNorm,
    apply_rope,
    by_rows,
    cast_weight,
    gelu_tanh,
    rope_grid,
    rope_tables,
    sinusoidal_embedding,
)

IMAGE_NORM_EPS = 1e-5
"""The CLIP-token projection uses LayerNorm's default epsilon, not the DiT's 1e-6."""


KeysValues = tuple[torch.Tensor, ...]
"""A block's cross-attention keys and values: (k, v) of the text, then (k_img, v_img) for i2v / flf2v."""


@dataclass(frozen=True)
class BlockInputs:
    """What every block of one forward pass reads besides the residual stream (made by ``embed``)."""

    e6: torch.Tensor  # [B, 6, C] fp32: the time projection (shift, scale, gate of attention and ffn)
    rotation: Rotation  # rotary cos / sin of the token grid, [L, 1, head_dim / 2] each
    text: torch.Tensor  # [B, 512, C] compute dtype: the embedded text context
    image: torch.Tensor | None  # [B, 257 or 514, C] compute dtype: the embedded CLIP tokens (i2v / flf2v)
    attend: AttentionFn  # the render's attention backend
    kv: tuple[KeysValues, ...] | None = None  # every block's cross-attention keys / values, made once per render
    hints: dict[int, torch.Tensor] | None = None  # VACE: {block index: [B, L, C] fp32 added after that block}
    ffn_chunks: int = 1  # feed-forward over the tokens in this many chunks (a memory plan's choice)
    frames: int | None = None  # timesteps per latent frame (Wan2.2 TI2V): e6 is [B, frames, 6, C]; None: [B, 6, C]
    self_attend: AttentionFn | None = None  # self-attention's kernel when it is not ``attend`` (sequence parallel)

    def select(self, part: slice) -> BlockInputs:
        """These inputs for the batch items ``part`` (the rotation is shared by all items)."""
        kv = None if self.kv is None else tuple(tuple(t[part] for t in block_kv) for block_kv in self.kv)
        image = None if self.image is None else self.image[part]
        hints = None if self.hints is None else {i: h[part] for i, h in self.hints.items()}
        return BlockInputs(self.e6[part], self.rotation, self.text[part], image, self.attend, kv, hints,
                           self.ffn_chunks, self.frames, self.self_attend)


@dataclass(frozen=True)
class Embedded:
    """The output of :meth:`WanDiT.embed`: the residual stream's start and what the blocks and head need."""

    tokens: torch.Tensor  # [B, L, C] fp32 patch tokens
    e: torch.Tensor  # [B, C] fp32 time embedding (the head's modulation)
    grid: tuple[int, int, int]  # (f, h, w) token grid
    inputs: BlockInputs
    vace: tuple[torch.Tensor, float] | None = None  # VACE: context tokens [B, L, C] fp32 and the hints' strength


class SelfAttention(nn.Module):
    """Self-attention with RMS-normed q/k and 3-axis rotary embedding."""

    def __init__(self, dim: int, heads: int, eps: float, linear: LinearFactory):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (linear(dim, dim) for _ in range(4))
        self.norm_q = TokenRMSNorm(dim, eps)
        self.norm_k = TokenRMSNorm(dim, eps)

    def forward(self, x: torch.Tensor, rotation: Rotation, attend: AttentionFn) -> torch.Tensor:
        """x ``[B, L, C]``; rotation: cos / sin ``[L, 1, head_dim/2]`` (see :func:`rope_grid`) -> ``[B, L, C]``."""
        q = apply_rope(by_rows(self.norm_q, self.q(x), x.dtype).unflatten(-1, (self.heads, -1)), rotation)
        k = apply_rope(by_rows(self.norm_k, self.k(x), x.dtype).unflatten(-1, (self.heads, -1)), rotation)
        return self.o(attend(q, k, self.v(x).unflatten(-1, (self.heads, -1))))  # q, k, v: [B, L, heads, d]


class CrossAttention(nn.Module):
    """Attention from video tokens to the text tokens, plus (i2v/flf2v) to the CLIP image tokens.

    The image branch has its own k/v (``k_img``, ``v_img``, ``norm_k_img``) and its attention output
    is added to the text attention's before the shared output projection.
    """

    def __init__(self, dim: int, heads: int, eps: float, linear: LinearFactory, image_branch: bool):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (linear(dim, dim) for _ in range(4))
        self.norm_q = TokenRMSNorm(dim, eps)
        self.norm_k = TokenRMSNorm(dim, eps)
        if image_branch:
            self.k_img = linear(dim, dim)
            self.v_img = linear(dim, dim)
            self.norm_k_img = TokenRMSNorm(dim, eps)

    def keys_values(self, context: torch.Tensor, context_img: torch.Tensor | None) -> KeysValues:
        """The text (and image) keys and values, ``[B, L, heads, d]`` each: the same for every step of a render."""
        split = (self.heads, -1)
        kv = (self.norm_k(self.k(context)).unflatten(-1, split), self.v(context).unflatten(-1, split))
        if context_img is not None:
            kv += (self.norm_k_img(self.k_img(context_img)).unflatten(-1, split),
                   self.v_img(context_img).unflatten(-1, split))
        return kv

    def forward(self, x: torch.Tensor, kv: KeysValues, attend: AttentionFn) -> torch.Tensor:
        """x ``[B, L, C]``; kv from :meth:`keys_values` (text, then image when present) -> ``[B, L, C]``."""
        q = by_rows(self.norm_q, self.q(x), x.dtype).unflatten(-1, (self.heads, -1))
        out = attend(q, kv[0], kv[1])
        if len(kv) == 4:
            out = out + attend(q, kv[2], kv[3])
        return self.o(out)


class DiTBlock(nn.Module):
    """One transformer block: modulated self-attention, cross-attention, modulated feed-forward.

    The residual stream and the modulation run in fp32; the attention and feed-forward layers run
    in the model's compute dtype.
    """

    def __init__(self, cfg: DiTConfig, linear: LinearFactory, index: int = 0):
        super().__init__()
        dim = cfg.dim
        self.index = index  # position in the stack: which of a render's precomputed keys / values are its own
        self.norm1 = FP32LayerNorm(dim, cfg.eps, affine=False)
        self.self_attn = SelfAttention(dim, cfg.num_heads, cfg.eps, linear)
        self.norm3 = FP32LayerNorm(dim, cfg.eps, affine=True)
        self.cross_attn = CrossAttention(dim, cfg.num_heads, cfg.eps, linear, cfg.has_image_branch)
        self.norm2 = FP32LayerNorm(dim, cfg.eps, affine=False)
        self.ffn = nn.Sequential(linear(dim, cfg.ffn_dim), gelu_tanh(), linear(cfg.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.zeros(1, 6, dim))

    def forward(self, x: torch.Tensor, inputs: BlockInputs) -> torch.Tensor:
        """x ``[B, L, C]`` fp32 residual stream -> ``[B, L, C]`` fp32 (plus this block's VACE hint, if any)."""
        return self.add_hint(self.transform(x, inputs, self.own_keys_values(inputs)), inputs)

    def keys_values(self, text: torch.Tensor, image: torch.Tensor | None) -> KeysValues:
        """This block's cross-attention keys / values of the render's text (and image) tokens."""
        return self.cross_attn.keys_values(text, image)

    def own_keys_values(self, inputs: BlockInputs) -> KeysValues | None:
        """This block's cross-attention keys / values when the render made them once, else None."""
        return inputs.kv[self.index] if inputs.kv is not None else None

    def add_hint(self, x: torch.Tensor, inputs: BlockInputs) -> torch.Tensor:
        """``x`` plus the VACE hint meant for this block (a VACE render), else ``x``."""
        hint = inputs.hints.get(self.index) if inputs.hints is not None else None
        return x if hint is None else x + hint

    def compiled(self, compile_fn: Callable) -> Callable[[torch.Tensor, BlockInputs], torch.Tensor]:
        """This block with :meth:`transform` compiled by ``compile_fn``: the block index is read outside, so
        every block of a stack shares one compiled graph (an int attribute read inside the compiled code
        would make torch specialize on it, recompile per block and fail past its recompile limit)."""
        body = compile_fn(self.transform)
        return lambda x, inputs: self.add_hint(body(x, inputs, self.own_keys_values(inputs)), inputs)

    def transform(self, x: torch.Tensor, inputs: BlockInputs, kv: KeysValues | None) -> torch.Tensor:
        """:meth:`forward` with the block's keys / values given (None: computed here from the text)."""
        dtype, frames = inputs.text.dtype, inputs.frames
        shift1, scale1, gate1, shift2, scale2, gate2 = modulation(self.modulation, inputs.e6, frames)
        # norm * (1 + scale) + shift in fp32, cast to the compute dtype a slice of tokens at a time (by_rows), and
        # compute-dtype results added to the fp32 stream by type promotion: the same bits as whole-tensor fp32
        # copies, without holding them (at 720p each is 1.44 GiB)
        h = modulate(self.norm1, x, shift1, scale1, dtype, frames)
        x = gated_add(x, self.self_attn(h, inputs.rotation, inputs.self_attend or inputs.attend), gate1, frames)
        kv = kv if kv is not None else self.cross_attn.keys_values(inputs.text, inputs.image)
        x = x + self.cross_attn(by_rows(self.norm3, x, dtype), kv, inputs.attend)
        h = modulate(self.norm2, x, shift2, scale2, dtype, frames)
        if inputs.ffn_chunks > 1:  # the hidden layer for a share of the tokens at a time (a memory plan's choice)
            y = torch.cat([self.ffn(part) for part in h.chunk(inputs.ffn_chunks, dim=1)], dim=1)
        else:
            y = self.ffn(h)
        del h
        return gated_add(x, y, gate2, frames)


def modulation(table: torch.Tensor, e: torch.Tensor, frames: int | None) -> tuple[torch.Tensor, ...]:
    """A modulation ``table [1, n, C]`` plus the time projection ``e``: ``[B, n, C]`` -> n tensors ``[B, 1, C]``
    (one value per sequence), or per latent frame ``[B, frames, n, C]`` -> n tensors ``[B, frames, 1, C]``."""
    if frames is None:
        return (table.float() + e).unsqueeze(2).unbind(1)
    return (table.float().unsqueeze(1) + e).unsqueeze(3).unbind(2)


def modulate(norm: nn.Module, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype,
             frames: int | None) -> torch.Tensor:
    """``norm(x) * (1 + scale) + shift`` in fp32, written in ``dtype`` a slice of tokens at a time; x ``[B, L, C]``.
    Per latent frame (``frames``; tokens frame-major): a slice of whole frames at a time, each with its own."""
    if frames is None:
        return by_rows(lambda rows: torch.addcmul(shift, norm(rows), 1 + scale), x, dtype)
    b, length, c = x.shape
    grid = x.view(b, frames, length // frames, c)
    out = torch.empty(b, length, c, dtype=dtype, device=x.device)
    view = out.view(b, frames, length // frames, c)
    step = max(1, TOKEN_CHUNK // (length // frames))
    for start in range(0, frames, step):
        part = slice(start, start + step)
        view[:, part] = torch.addcmul(shift[:, part], norm(grid[:, part]), 1 + scale[:, part])
    return out


def gated_add(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor, frames: int | None) -> torch.Tensor:
    """``x + y * gate`` (fp32 stream ``x``, ``y`` any dtype, both ``[B, L, C]``); the gate per sequence or per frame."""
    if frames is None:
        return torch.addcmul(x, y, gate)
    b, length, c = x.shape
    return torch.addcmul(x.view(b, frames, -1, c), y.view(b, frames, -1, c), gate).view(b, length, c)


class VaceBlock(DiTBlock):
    """A VACE block: a transformer block over the VACE stream ``c`` (its own weights and cross-attention),
    the first one adding the video stream through ``before_proj``; ``after_proj`` makes its hint."""

    def __init__(self, cfg: DiTConfig, linear: LinearFactory, index: int, first: bool):
        super().__init__(cfg, linear, index)
        if first:
            self.before_proj = linear(cfg.dim, cfg.dim)
        self.after_proj = linear(cfg.dim, cfg.dim)

    def forward(self, c: torch.Tensor, x: torch.Tensor, inputs: BlockInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """c: VACE stream, x: video stream ``[B, L, C]`` fp32 -> (next c, this block's hint), fp32."""
        dtype = inputs.text.dtype
        if hasattr(self, "before_proj"):
            c = self.before_proj(c.to(dtype)).float() + x
        c = self.transform(c, inputs, None)
        return c, self.after_proj(c.to(dtype)).float()


class Head(nn.Module):
    """Final modulated norm and projection to ``out_dim * prod(patch)`` channels per token (fp32)."""

    def __init__(self, cfg: DiTConfig, linear: LinearFactory):
        super().__init__()
        pt, ph, pw = cfg.patch_size
        self.norm = FP32LayerNorm(cfg.dim, cfg.eps, affine=False)
        self.head = linear(cfg.dim, cfg.out_dim * pt * ph * pw)
        self.modulation = nn.Parameter(torch.zeros(1, 2, cfg.dim))

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """x ``[B, L, C]``, e ``[B, C]`` time embedding (or ``[B, frames, C]``, one per latent frame) ->
        ``[B, L, out_dim * prod(patch)]`` fp32."""
        if e.dim() == 2:
            shift, scale = (self.modulation.float() + e.unsqueeze(1)).unsqueeze(2).unbind(1)
            return self.head(torch.addcmul(shift, self.norm(x), 1 + scale))
        b, length, c = x.shape
        shift, scale = modulation(self.modulation, e.unsqueeze(2), e.shape[1])
        grid = self.norm(x).view(b, e.shape[1], -1, c)
        return self.head(torch.addcmul(shift, grid, 1 + scale).view(b, length, c))


class ImageProjection(nn.Module):
    """CLIP tokens ``[B, T, 1280]`` -> context tokens ``[B, T, C]`` (keys ``img_emb.proj.N``).

    flf2v adds ``emb_pos``, a learned position embedding over the start and end images' 514 tokens.
    """

    def __init__(self, cfg: DiTConfig, linear: LinearFactory):
        super().__init__()
        self.proj = nn.Sequential(
            FP32LayerNorm(cfg.clip_dim, IMAGE_NORM_EPS, affine=True), linear(cfg.clip_dim, cfg.clip_dim),
            nn.GELU(), linear(cfg.clip_dim, cfg.dim), FP32LayerNorm(cfg.dim, IMAGE_NORM_EPS, affine=True))
        if cfg.model_type == "flf2v":
            self.emb_pos = nn.Parameter(torch.zeros(1, cfg.clip_tokens, cfg.clip_dim))

    def forward(self, clip_fea: torch.Tensor) -> torch.Tensor:
        x = clip_fea.float()
        if hasattr(self, "emb_pos"):
            x = x + self.emb_pos.float()
        return self.proj(x)


class PatchEmbedding(nn.Module):
    """Non-overlapping 3-D patches to tokens; stored like the official ``Conv3d`` (same keys)."""

    def __init__(self, in_dim: int, dim: int, patch: tuple[int, int, int]):
        super().__init__()
        self.patch = patch
        self.weight = nn.Parameter(torch.empty(dim, in_dim, *patch))
        self.bias = nn.Parameter(torch.zeros(dim))
        nn.init.xavier_uniform_(self.weight.view(dim, -1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """x ``[B, C_in, F, H, W]`` -> tokens ``[B, f*h*w, C]`` and the grid (f, h, w)."""
        b, c, frames, height, width = x.shape
        pt, ph, pw = self.patch
        f, h, w = frames // pt, height // ph, width // pw
        patches = x.view(b, c, f, pt, h, ph, w, pw).permute(0, 2, 4, 6, 1, 3, 5, 7)  # [B, f, h, w, C, pt, ph, pw]
        patches = patches.reshape(b, f * h * w, c * pt * ph * pw)
        weight = cast_weight(self.weight, x.dtype).flatten(1)
        return torch.nn.functional.linear(patches, weight, self.bias.to(x.dtype)), (f, h, w)


class WanDiT(nn.Module):
    """Wan2.1 diffusion transformer; predicts the flow ``v = noise - x0`` of normalized latents.

    ``linear`` builds every Linear layer (default :class:`CastLinear`); ``compute_dtype`` is the
    dtype of the matrix products (fp32 on CPU, bf16 or fp16 on GPU); weights may be stored in any
    float dtype, time embedding and modulation always run in fp32.
    """

    fp8_matmul: bool = False
    """Set at load (``load_dit(fp8_matmul=True)``): renders on GPUs with fp8 tensor cores multiply the blocks' fp8
    layers in fp8 (:mod:`wan_core.runtime.fp8_matmul`); the render context decides and makes the view."""

    def __init__(self, config: DiTConfig, linear: LinearFactory = CastLinear,
                 compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        cfg = self.config = config
        self.compute_dtype = compute_dtype
        self.patch_embedding = PatchEmbedding(cfg.in_dim, cfg.dim, cfg.patch_size)
        self.text_embedding = nn.Sequential(linear(cfg.text_dim, cfg.dim), gelu_tanh(), linear(cfg.dim, cfg.dim))
        self.time_embedding = nn.Sequential(linear(cfg.freq_dim, cfg.dim), nn.SiLU(), linear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), linear(cfg.dim, cfg.dim * 6))
        self.blocks = nn.ModuleList(DiTBlock(cfg, linear, i) for i in range(cfg.num_layers))
        self.head = Head(cfg, linear)
        if cfg.has_image_branch:
            self.img_emb = ImageProjection(cfg, linear)
        if cfg.vace_layers:
            self.vace_patch_embedding = PatchEmbedding(cfg.vace_in_dim, cfg.dim, cfg.patch_size)
            self.vace_blocks = nn.ModuleList(VaceBlock(cfg, linear, i, i == 0) for i in range(len(cfg.vace_layers)))
        cos, sin = rope_tables(cfg.head_dim, MAX_ROPE_POSITIONS)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                clip_fea: torch.Tensor | None = None, y: torch.Tensor | None = None,
                render: RenderContext | None = None, vace_context: torch.Tensor | None = None,
                vace_strength: float = 1.0) -> torch.Tensor:
        """Predict the flow for a batch: :meth:`embed`, then :meth:`run_blocks`, then :meth:`apply_head`.

        x: ``[B, 16, F', h, w]`` normalized latents; t: ``[B]`` (or a scalar) in [0, 1000];
        context: ``[B, L<=512, 4096]`` text states (zero-padded to 512 here, as the official code);
        clip_fea: ``[B, 257, 1280]`` (i2v) or ``[B, 514, 1280]`` (flf2v: start then end image);
        y: ``[B, 20, F', h, w]`` mask + image latents (i2v/flf2v). render: this render's context
        (attention backend, block runner, compute dtype, weight patches); None: the defaults.
        vace_context: ``[B, 96, F', h, w]`` (VACE models: see :mod:`wan_core.vace`); vace_strength scales
        the VACE hints. Returns ``[B, out_dim, F', h, w]`` float32.
        """
        render = render or RenderContext()
        net = render.patched(self)  # this model, or this render's patched view of it
        embedded = net.embed(x, t, context, clip_fea, y, render, vace_context, vace_strength)
        return net.apply_head(net.run_blocks(embedded, render), embedded)

    def embed(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, clip_fea: torch.Tensor | None = None,
              y: torch.Tensor | None = None, render: RenderContext | None = None,
              vace_context: torch.Tensor | None = None, vace_strength: float = 1.0) -> Embedded:
        """Inputs (as :meth:`forward`) -> patch tokens, time embedding, embedded text and image tokens."""
        cfg = self.config
        render = render or RenderContext()
        self._check_inputs(x, context, clip_fea, y, vace_context)
        dtype = render.dtype_for(self)
        if y is not None:
            x = torch.cat([x, y.to(x.dtype)], dim=1)
        tokens, grid = self.patch_embedding(x.to(dtype))
        rotation = rope_grid(self.rope_cos, self.rope_sin, grid, cfg.head_dim)

        t = torch.as_tensor(t, device=x.device)
        frames = None
        if t.dim() == 2:  # one timestep per latent frame (Wan2.2 TI2V: the image's frame at 0)
            if tuple(t.shape) != (x.shape[0], grid[0]):
                raise InputError(f"per-frame timesteps must be [B, frames] = {(x.shape[0], grid[0])}, got "
                                 f"{tuple(t.shape)}")
            frames = grid[0]
            e = self.time_embedding(sinusoidal_embedding(t.reshape(-1), cfg.freq_dim)).unflatten(0, t.shape)
            e6 = self.time_projection(e).unflatten(-1, (6, cfg.dim))  # [B, f, 6, C] fp32
        else:
            t = t.reshape(-1).expand(x.shape[0])
            e = self.time_embedding(sinusoidal_embedding(t, cfg.freq_dim))  # [B, C] fp32
            e6 = self.time_projection(e).unflatten(1, (6, cfg.dim))  # [B, 6, C] fp32

        with_kv = render.precompute_keys_values and (render.plan is None or render.plan.keys_values)
        # keyed by the prompt too: CFG one branch at a time alternates two prompts, each made once per render
        text, image, kv = render.reuse(("conditioning", self, id(context)), (context, clip_fea),
                                       lambda: self._conditioning(context, clip_fea, dtype, with_kv))
        vace = None
        if vace_context is not None:
            vace = (self.vace_patch_embedding(vace_context.to(dtype))[0].float(), float(vace_strength))
        chunks = render.plan.ffn_chunks if render.plan is not None else 1
        inputs = BlockInputs(e6, rotation, text, image, render.attend, kv, ffn_chunks=chunks, frames=frames)
        return Embedded(tokens.float(), e, grid, inputs, vace)

    def _conditioning(self, context: torch.Tensor, clip_fea: torch.Tensor | None, dtype: torch.dtype,
                      with_kv: bool) -> tuple:
        """Embedded text ``[B, 512, C]``, image tokens and (``with_kv``) every block's keys / values: all
        constant over a render, so a render context computes them once, not at every step and branch."""
        context = nn.functional.pad(context.to(dtype), (0, 0, 0, self.config.text_len - context.shape[1]))
        text = self.text_embedding(context)  # [B, 512, C]
        image = self.img_emb(clip_fea).to(dtype) if clip_fea is not None else None
        kv = tuple(block.keys_values(text, image) for block in self.blocks) if with_kv else None
        return text, image, kv

    def run_blocks(self, embedded: Embedded, render: RenderContext | None = None) -> torch.Tensor:
        """The residual stream through every block, by the render's runner: ``[B, L, C]`` fp32."""
        runner = (render or RenderContext()).runner
        inputs = embedded.inputs
        if embedded.vace is not None:
            inputs = replace(inputs, hints=self.vace_hints(embedded.tokens, *embedded.vace, inputs))
        return runner(self.blocks, embedded.tokens, inputs)

    def vace_hints(self, x: torch.Tensor, c: torch.Tensor, strength: float, inputs: BlockInputs) -> dict:
        """The VACE blocks over the context tokens ``c`` (starting from the video tokens ``x``, both
        ``[B, L, C]`` fp32): ``{main block index: strength * hint}``."""
        hints = {}
        for block, layer in zip(self.vace_blocks, self.config.vace_layers):
            c, hint = block(c, x, inputs)
            hints[layer] = hint * strength
        return hints

    def apply_head(self, h: torch.Tensor, embedded: Embedded) -> torch.Tensor:
        """Residual stream ``[B, L, C]`` -> flow ``[B, out_dim, F', h, w]`` float32."""
        return self._unpatchify(self.head(h, embedded.e), embedded.grid)

    def _unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """``[B, f*h*w, pt*ph*pw*C]`` -> ``[B, C, f*pt, h*ph, w*pw]``."""
        f, h, w = grid
        pt, ph, pw = self.config.patch_size
        c = self.config.out_dim
        x = x.view(x.shape[0], f, h, w, pt, ph, pw, c).permute(0, 7, 1, 4, 2, 5, 3, 6)  # [B, C, f, pt, h, ph, w, pw]
        return x.reshape(x.shape[0], c, f * pt, h * ph, w * pw)

    def check_conditioning(self, context: torch.Tensor, clip_fea=None, y=None, vace_context=None) -> None:
        """Raise :class:`InputError` unless the text width and the image / VACE conditioning fit this model."""
        cfg = self.config
        if cfg.vace_layers and vace_context is None:
            raise InputError("this is a VACE model: it needs VACE conditioning (WanCoreVACEConditioning / "
                             "vace_conditioning; with no control video, mask or reference it renders from text)")
        if not cfg.vace_layers and vace_context is not None:
            raise InputError(f"VACE conditioning was given to a {cfg.model_type} model; load a Wan2.1 VACE model "
                             "(1.3B or 14B) to use control videos, masks or reference images")
        if vace_context is not None and (vace_context.dim() != 5 or vace_context.shape[1] != cfg.vace_in_dim):
            raise InputError(f"vace_context must be [B, {cfg.vace_in_dim}, F', h, w], got {tuple(vace_context.shape)}")
        needs = "clip_fea and y" if cfg.has_image_branch else "y"
        if (cfg.takes_image_latents and y is None) or (cfg.has_image_branch and clip_fea is None):
            raise InputError(f"this is an {cfg.model_type} model: it needs image conditioning ({needs}, from "
                             "WanCoreImageToVideo / image_to_video); got none")
        if not cfg.takes_image_latents and (clip_fea is not None or y is not None):
            what = "VACE model (give it a reference image through VACE conditioning)" if cfg.vace_layers \
                else "text-to-video model"
            raise InputError(f"this is a {what}: it takes no image conditioning; "
                             "load an i2v / flf2v checkpoint to animate an image")
        if not cfg.has_image_branch and clip_fea is not None:
            raise InputError(f"this is {cfg.label}, which has no CLIP image branch (Wan2.2 takes the image through "
                             "y only): give it no CLIP vision tokens")
        if clip_fea is not None and tuple(clip_fea.shape[1:]) != (cfg.clip_tokens, cfg.clip_dim):
            raise InputError(f"clip_fea must be [B, {cfg.clip_tokens}, {cfg.clip_dim}] for {cfg.model_type}, "
                             f"got {tuple(clip_fea.shape)}")
        if context.dim() != 3 or context.shape[-1] != cfg.text_dim or context.shape[1] > cfg.text_len:
            raise InputError(f"context must be [B, L<={cfg.text_len}, {cfg.text_dim}] text states, "
                             f"got {tuple(context.shape)}; use the text encoder that belongs to this model")

    def _check_inputs(self, x, context, clip_fea, y, vace_context=None) -> None:
        cfg = self.config
        if x.dim() != 5:
            raise InputError(f"x must be [B, C, F, H, W] latents, got shape {tuple(x.shape)}")
        self.check_conditioning(context, clip_fea, y, vace_context)
        if vace_context is not None and vace_context.shape[2:] != x.shape[2:]:
            raise InputError(f"the VACE context covers {tuple(vace_context.shape[2:])} latent cells (frames, height, "
                             f"width) but the latent is {tuple(x.shape[2:])}; render at the conditioning's size")
        noise_channels = cfg.in_dim - (y.shape[1] if y is not None else 0)
        if x.shape[1] != noise_channels:
            raise InputError(f"x has {x.shape[1]} channels; this model expects {cfg.in_dim} with y included")
        cfg.check_latent_shape(x.shape)

