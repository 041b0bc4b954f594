"""GGUF-quantized weights: ggml block formats dequantized with torch on the compute device, and the Linear
that keeps its weight quantized and dequantizes it where it computes.

Each format stores a row (the Linear's input features) as blocks; ``BLOCKS[name] = (values per block,
bytes per block)``. A block holds fp16 scale(s) then packed integers (the ggml layouts, as in
llama.cpp's ``ggml-quants.c``); values are computed in float32 with the same operations in the same
order as the reference ``gguf.quants.dequantize``, so results are bit-identical to it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..runtime import memory
from .layers import CastLinear, add_low_rank_terms

QK_K = 256
BLOCKS: dict[str, tuple[int, int]] = {
    "Q8_0": (32, 34), "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24),
    "Q2_K": (256, 84), "Q3_K": (256, 110), "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210),
}
PLAIN = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def _f16(b: torch.Tensor) -> torch.Tensor:
    """Little-endian fp16 from byte pairs ``[..., 2k]`` -> float32 ``[..., k]``."""
    return b.contiguous().view(torch.float16).float()


def _nibbles(qs: torch.Tensor, groups: int) -> torch.Tensor:
    """Bytes ``[n, groups * 32]`` -> ``[n, groups, 64]``: per 32-byte group, the low nibbles then the high ones."""
    qs = qs.reshape(qs.shape[0], groups, 1, 32)
    return torch.cat([qs & 0x0F, qs >> 4], dim=2).reshape(qs.shape[0], groups, 64)


def _bits(b: torch.Tensor, shifts: range | list[int], mask: int) -> torch.Tensor:
    """Bytes ``[n, g, 32]`` -> ``[n, g, len(shifts), 32]``: each shift's ``(b >> s) & mask``."""
    return torch.stack([(b >> s) & mask for s in shifts], dim=2)


def _q8_0(b):
    return b[:, 2:].contiguous().view(torch.int8).float() * _f16(b[:, :2])


def _q4_0(b):
    q = (torch.cat([b[:, 2:] & 0x0F, b[:, 2:] >> 4], dim=1).to(torch.int8) - 8).float()
    return _f16(b[:, :2]) * q


def _q4_1(b):
    q = torch.cat([b[:, 4:] & 0x0F, b[:, 4:] >> 4], dim=1).float()
    return _f16(b[:, :2]) * q + _f16(b[:, 2:4])


def _high_bits(qh: torch.Tensor) -> torch.Tensor:
    """4 bytes -> the 32 bits of their little-endian uint32, bit i at position i."""
    return torch.stack([(qh[:, i // 8] >> (i % 8)) & 1 for i in range(32)], dim=1)


def _q5(b, offset: int, with_min: bool):
    head = 4 if with_min else 2
    qh, qs = b[:, head:head + 4], b[:, head + 4:]
    q = torch.cat([qs & 0x0F, qs >> 4], dim=1) | (_high_bits(qh) << 4)
    d = _f16(b[:, :2])
    if with_min:
        return d * q.float() + _f16(b[:, 2:4])
    return d * (q.to(torch.int8) - offset).float()


def _q2_k(b):
    n = b.shape[0]
    scales, qs, d, dmin = b[:, :16], b[:, 16:80], _f16(b[:, 80:82]), _f16(b[:, 82:84])
    dl = (d * (scales & 0x0F).float()).reshape(n, 16, 1)
    ml = (dmin * (scales >> 4).float()).reshape(n, 16, 1)
    q = _bits(qs.reshape(n, 2, 32), (0, 2, 4, 6), 3).reshape(n, 16, 16).float()
    return (dl * q - ml).reshape(n, QK_K)


def _q3_k(b):
    n = b.shape[0]
    hmask, qs, scales, d = b[:, :32], b[:, 32:96], b[:, 96:108], _f16(b[:, 108:110])
    low = torch.cat([scales[:, :8] & 0x0F, scales[:, :8] >> 4], dim=1)  # [n, 16]
    high = _bits(scales[:, 8:12].reshape(n, 1, 4), (0, 2, 4, 6), 3).reshape(n, 16)
    sc = ((low | (high << 4)).to(torch.int8) - 32).float()
    dl = (d * sc).reshape(n, 16, 1)
    ql = _bits(qs.reshape(n, 2, 32), (0, 2, 4, 6), 3).reshape(n, 16, 16)
    qh = _bits(hmask.reshape(n, 1, 32), range(8), 1).reshape(n, 16, 16) ^ 1  # a set bit means no offset
    q = (ql.to(torch.int8) - (qh << 2).to(torch.int8)).float()
    return (dl * q).reshape(n, QK_K)


def _k_scales(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8 six-bit scales and mins of a Q4_K / Q5_K block's 12 scale bytes -> ``[n, 8]`` each."""
    d, m, md = scales[:, 0:4], scales[:, 4:8], scales[:, 8:12]
    sc = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=1)
    mins = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=1)
    return sc, mins


def _q4_k(b):
    n = b.shape[0]
    sc, mins = _k_scales(b[:, 4:16])
    d = (_f16(b[:, :2]) * sc.float()).reshape(n, 8, 1)
    dm = (_f16(b[:, 2:4]) * mins.float()).reshape(n, 8, 1)
    q = _nibbles(b[:, 16:], 4).reshape(n, 8, 32).float()
    return (d * q - dm).reshape(n, QK_K)


def _q5_k(b):
    n = b.shape[0]
    sc, mins = _k_scales(b[:, 4:16])
    d = (_f16(b[:, :2]) * sc.float()).reshape(n, 8, 1)
    dm = (_f16(b[:, 2:4]) * mins.float()).reshape(n, 8, 1)
    qh = _bits(b[:, 16:48].reshape(n, 1, 32), range(8), 1).reshape(n, 8, 32)
    q = (_nibbles(b[:, 48:], 4).reshape(n, 8, 32) | (qh << 4)).float()
    return (d * q - dm).reshape(n, QK_K)


def _q6_k(b):
    n = b.shape[0]
    ql, qh, scales, d = b[:, :128], b[:, 128:192], b[:, 192:208], _f16(b[:, 208:210])
    dl = (d * scales.contiguous().view(torch.int8).float()).reshape(n, 16, 1)
    low = torch.cat([ql.reshape(n, 2, 1, 64) & 0x0F, ql.reshape(n, 2, 1, 64) >> 4], dim=2).reshape(n, 8, 32)
    high = _bits(qh.reshape(n, 2, 32), (0, 2, 4, 6), 3).reshape(n, 8, 32)
    q = ((low | (high << 4)).to(torch.int8) - 32).reshape(n, 16, 16).float()
    return (dl * q).reshape(n, QK_K)


_DEQUANTIZE = {"Q8_0": _q8_0, "Q4_0": _q4_0, "Q4_1": _q4_1, "Q5_0": lambda b: _q5(b, 16, False),
               "Q5_1": lambda b: _q5(b, 0, True), "Q2_K": _q2_k, "Q3_K": _q3_k, "Q4_K": _q4_k, "Q5_K": _q5_k,
               "Q6_K": _q6_k}


def dequantize(raw: torch.Tensor, qtype: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32):
    """Packed ggml blocks (uint8, any shape holding whole blocks) -> a ``shape`` tensor in ``dtype``, computed
    ``runtime.memory.DEQUANTIZE_CHUNK`` values at a time into the result (the same bits as all at once)."""
    if qtype in PLAIN:
        return raw.contiguous().view(PLAIN[qtype]).reshape(shape).to(dtype)
    values, size = BLOCKS[qtype]
    blocks = raw.reshape(-1, size)
    step = max(1, memory.DEQUANTIZE_CHUNK // values)  # blocks per chunk
    if blocks.shape[0] <= step:
        return _DEQUANTIZE[qtype](blocks).reshape(shape).to(dtype)
    out = torch.empty(blocks.shape[0], values, dtype=dtype, device=raw.device)
    for start in range(0, blocks.shape[0], step):
        out[start:start + step] = _DEQUANTIZE[qtype](blocks[start:start + step])
    return out.reshape(shape)


class QuantizedLinear(CastLinear):
    """A Linear whose weight stays in its GGUF block format (``weight``: the packed uint8 blocks, flat) and is
    dequantized on the input's device, in the input's dtype, at each call. ``weight_shape`` is the logical
    ``(out, in)``; ``qtype`` the format name. Unmerged LoRA terms (``low_rank``) add as in :class:`CastLinear`."""

    quantized = True  # False for a layer whose file tensor is plain (F16 / F32): then a CastLinear
    qtype: str | None = None
    weight_shape: tuple[int, ...] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.quantized:  # a render's view merged a LoRA into a plain weight
            return super().forward(x)
        out = F.linear(x, self.dequantized_weight(x.dtype), None if self.bias is None else self.bias.to(x.dtype))
        return add_low_rank_terms(out, x, self.low_rank)

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        return dequantize(self.weight, self.qtype, self.weight_shape, dtype)
