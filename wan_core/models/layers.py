"""Small building blocks shared by the networks: casting Linear, norms, rotary and time embeddings.

Weights may be stored in fp32 / bf16 / fp16 / fp8_e4m3fn; every layer casts its weights to the
dtype of the activations it receives, so compute runs in a chosen compute dtype (fp32 on CPU).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..runtime import memory
from ..runtime.fp8_matmul import fp8_linear


class CastLinear(nn.Linear):
    """``nn.Linear`` whose stored weight dtype is independent of the compute dtype.

    The weight is cast to the input's dtype at use. ``scale_weight`` (a scalar or per-output-row
    tensor, ``None`` unless set by the loader) multiplies the cast weight: ComfyUI's "scaled fp8"
    files store ``weight / scale`` in float8 next to the scale.
    """

    fp8_scaling: str | None = None
    """Set only on a render's view (:func:`~wan_core.runtime.fp8_matmul.fp8_view`): the fp8 weight multiplies in
    fp8 with this input scaling (``"token"`` / ``"tensor"``) instead of being cast."""

    low_rank_scales: tuple[float, ...] = ()
    """The scale of each unmerged low-rank update (:attr:`low_rank`); set only on a render's patched copy."""

    @property
    def low_rank(self) -> tuple:
        """Unmerged low-rank updates ``(down [r, in], up [out, r], scale)`` in the compute dtype, each adding
        ``scale * x down^T up^T``. Their tensors are buffers (``lora_down_<k>`` / ``lora_up_<k>``), so placing,
        streaming and moving the layer moves them with its weight and their bytes count as its own."""
        return tuple((self._buffers[f"lora_down_{k}"], self._buffers[f"lora_up_{k}"], scale)
                     for k, scale in enumerate(self.low_rank_scales))

    def add_low_rank(self, down: torch.Tensor, up: torch.Tensor, scale: float) -> None:
        """Attach one unmerged update: only on a render's patched copy (its buffer dict is its own)."""
        k = len(self.low_rank_scales)
        self._buffers[f"lora_down_{k}"], self._buffers[f"lora_up_{k}"] = down, up
        self.low_rank_scales = (*self.low_rank_scales, float(scale))

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.register_buffer("scale_weight", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fp8_scaling is not None:
            out = fp8_linear(x, self.weight, self.scale_weight, self.bias, self.fp8_scaling)
        else:
            out = F.linear(x, cast_weight(self.weight, x.dtype, self.scale_weight),
                           None if self.bias is None else self.bias.to(x.dtype))
        return add_low_rank_terms(out, x, self.low_rank)


def add_low_rank_terms(out: torch.Tensor, x: torch.Tensor, terms) -> torch.Tensor:
    """``out [..., N] += scale * (x down^T) up^T`` for each ``(down, up, scale)``, in place (``out``: a Linear's new
    output): the only temporary is the ``[..., r]`` projection, no second output-sized tensor."""
    if not terms:
        return out
    flat = out.view(-1, out.shape[-1])
    for down, up, scale in terms:
        flat.addmm_(F.linear(x, down).reshape(-1, down.shape[0]), up.t(), alpha=scale)
    return out


def cast_weight(weight: torch.Tensor, dtype: torch.dtype, scale: torch.Tensor | None = None) -> torch.Tensor:
    """``weight`` in ``dtype``, multiplied by ``scale`` when given (dequantization of scaled fp8; in place on the
    cast copy, so one weight-sized temporary)."""
    w = weight.to(dtype)
    if scale is None:
        return w
    s = scale.to(dtype)
    if s.numel() > 1:  # one scale per output row
        s = s.reshape(-1, *([1] * (w.dim() - 1)))
    return w * s if w is weight else w.mul_(s)


LinearFactory = Callable[..., nn.Module]
"""``factory(in_features, out_features, bias=True) -> module`` used for every Linear of a network."""


class TokenRMSNorm(nn.Module):
    """RMS norm of each token's features (the last dim), computed in fp32, returned in the input dtype,
    times ``weight`` (the DiT's q / k norms; the VAE's channel norm is :class:`~.vae.ChannelRMSNorm`)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)
        return y * self.weight.to(x.dtype)


class FP32LayerNorm(nn.Module):
    """LayerNorm over the last dim computed in fp32 and returned in fp32.

    ``affine=False`` has no parameters (and no state-dict keys), as the DiT's modulated norms.
    """

    def __init__(self, dim: int, eps: float, affine: bool):
        super().__init__()
        self.dim = dim
        self.eps = eps
        if affine:
            self.weight = nn.Parameter(torch.ones(dim))
            self.bias = nn.Parameter(torch.zeros(dim))
        else:
            self.weight = self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), (self.dim,), w, b, self.eps)


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Time embedding ``[cos(t f_k), sin(t f_k)]`` with f_k = 10000^(-k / (dim/2)).

    t: ``[B]`` timesteps in [0, 1000]. Returns ``[B, dim]`` float32 (computed in float64 for
    accuracy at large t).
    """
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = torch.outer(t.to(torch.float64), freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1).float()


def rope_axis_sizes(head_dim: int) -> tuple[int, int, int]:
    """Rotary frequency pairs given to the (frame, height, width) axes of one attention head.

    The height and width axes get ``pairs // 3`` each and the frame axis the rest
    (head_dim 128 -> 64 pairs -> (22, 21, 21)).
    """
    pairs = head_dim // 2
    return pairs - 2 * (pairs // 3), pairs // 3, pairs // 3


def rope_tables(head_dim: int, max_positions: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables ``[max_positions, head_dim // 2]`` (float32) for 3-axis rotary embedding.

    Columns are the frame axis' pairs, then height's, then width's; the axis with ``n`` pairs uses
    the frequencies theta^(-2k / 2n), k < n. Always built on CPU (even inside a ``meta`` device
    context): these are derived values, not weights, so a model built on ``meta`` still has them.
    """
    columns = []
    for pairs in rope_axis_sizes(head_dim):
        exponents = torch.arange(pairs, dtype=torch.float64, device="cpu") * 2 / (2 * pairs)
        inv = 1.0 / torch.pow(theta, exponents)
        columns.append(torch.outer(torch.arange(max_positions, dtype=torch.float64, device="cpu"), inv))
    angles = torch.cat(columns, dim=1)
    return torch.cos(angles).float(), torch.sin(angles).float()


Rotation = tuple[torch.Tensor, torch.Tensor]
"""Rotary embedding of a token grid: ``(cos, sin)``, each ``[L, 1, head_dim // 2]`` float32."""


def rope_grid(cos: torch.Tensor, sin: torch.Tensor, grid: tuple[int, int, int], head_dim: int) -> Rotation:
    """cos and sin of every token's rotation angles for an ``(f, h, w)`` grid, frame-major: ``[L, 1, head_dim//2]``.

    Real-valued (no complex tensors), so compilers handle it like any other elementwise math.
    """
    f, h, w = grid
    a, b, _ = rope_axis_sizes(head_dim)

    def expand(table: torch.Tensor) -> torch.Tensor:
        parts = (table[:f, :a].view(f, 1, 1, -1).expand(f, h, w, -1),
                 table[:h, a:a + b].view(1, h, 1, -1).expand(f, h, w, -1),
                 table[:w, a + b:].view(1, 1, w, -1).expand(f, h, w, -1))
        return torch.cat(parts, dim=-1).reshape(f * h * w, 1, -1)

    return expand(cos.float()), expand(sin.float())


TOKEN_CHUNK = memory.TOKEN_CHUNK
"""Tokens per slice of row-wise work (see ``runtime.memory.TOKEN_CHUNK``, which the memory estimate counts)."""


def by_rows(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, dtype: torch.dtype,
            chunk: int | None = None) -> torch.Tensor:
    """``fn(x).to(dtype)`` for a row-wise ``fn`` (each token's result depends on that token only), computed over
    slices of ``chunk`` tokens (dim 1; default :data:`TOKEN_CHUNK`) into one ``dtype`` tensor: the same bits, a
    slice's temporaries at a time."""
    chunk = chunk or TOKEN_CHUNK
    if x.shape[1] <= chunk:
        return fn(x).to(dtype)
    first = fn(x[:, :chunk]).to(dtype)
    out = first.new_empty(x.shape[0], x.shape[1], *first.shape[2:])
    out[:, :chunk] = first
    del first
    for start in range(chunk, x.shape[1], chunk):
        out[:, start:start + chunk] = fn(x[:, start:start + chunk])
    return out


def apply_rope(x: torch.Tensor, rotation: Rotation) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i+1) of ``x [B, L, heads, head_dim]`` by the pair's angle (fp32 math).

    ``(a, b) -> (a cos - b sin, a sin + b cos)``: the complex product ``(a + ib)(cos + i sin)``,
    written out in the same order of operations, so it is bit-identical to it. Long sequences are rotated
    :data:`TOKEN_CHUNK` tokens at a time (the fp32 temporaries of one slice), with the same bits.
    """
    cos, sin = rotation
    if x.shape[1] > TOKEN_CHUNK:
        out = torch.empty_like(x)
        for start in range(0, x.shape[1], TOKEN_CHUNK):
            part = slice(start, start + TOKEN_CHUNK)
            out[:, part] = apply_rope(x[:, part], (cos[part], sin[part]))
        return out
    a, b = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # [B, L, heads, head_dim/2] each
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2).to(x.dtype)


def gelu_tanh() -> nn.Module:
    return nn.GELU(approximate="tanh")


__all__ = ["TOKEN_CHUNK", "by_rows",
           "CastLinear", "FP32LayerNorm", "LinearFactory", "Rotation", "TokenRMSNorm", "apply_rope", "cast_weight",
           "gelu_tanh", "rope_grid", "rope_tables", "sinusoidal_embedding"]
