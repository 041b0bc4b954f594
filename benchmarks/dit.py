"""DiT forward benchmark: ours vs wan22's WanModel vs diffusers' WanTransformer3DModel.

The real t2v-1.3B config (or the TI2V-5B one, ``--model ti2v-5B``, with timesteps per token: the image's frame
at 0, as image-to-video runs) with random fp32 weights, written once to a safetensors file in the official
layout; each implementation runs in its own process on that file and the same inputs. ``--blocks N`` keeps N of
the config's blocks (the 5B in fp32 is ~20 GB per process, more than a 24 GB machine holds for three): the
figures are then for N blocks, and the whole model's time is about (layers / N) times the blocks' share.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from wan_core.models.config import PRESETS, DiTConfig
from wan_core.models.dit import WanDiT

from .common import PeakSampler, gib, median_seconds, peak_rss_bytes, run_worker

CELLS = ((3, 32, 32), (5, 30, 52))
"""Latent frames, height and width of the timed inputs (768 and 1,950 tokens)."""
IMPLS = ("wan_core", "wan22", "diffusers")
CONFIG = PRESETS["t2v-1.3B"]
DEFAULT_BLOCKS = {"t2v-1.3B": None, "ti2v-5B": 3}


def bench_config(model: str = "t2v-1.3B", blocks: int | None = None) -> DiTConfig:
    """The real config ``model`` with ``blocks`` of its blocks (None: all)."""
    cfg = PRESETS[model]
    return cfg if blocks is None else dataclasses.replace(cfg, num_layers=blocks)


def shapes_of(cfg: DiTConfig) -> list[tuple[int, ...]]:
    return [(1, cfg.in_dim, *cells) for cells in CELLS]


def forward_flops(cfg: DiTConfig, shape: tuple[int, ...], text_len: int = 512) -> float:
    """Multiply-adds x 2 of one forward: Linear layers, attention products and the patch embedding."""
    _, c, f, h, w = shape
    n = f * (h // 2) * (w // 2)  # video tokens
    d, ffn = cfg.dim, cfg.ffn_dim
    per_block = (n * (6 * d * d + 2 * d * ffn)  # self q,k,v,o + cross q,o + feed-forward
                 + text_len * 2 * d * d  # cross-attention k, v of the text tokens
                 + 2 * n * n * d + 2 * n * text_len * d)  # QK^T and AV of self and cross attention
    embed = n * c * 4 * d + text_len * (cfg.text_dim * d + d * d) + n * d * cfg.out_dim * 4
    return 2.0 * (cfg.num_layers * per_block + embed)


def write_random_weights(path: Path, cfg: DiTConfig = CONFIG) -> None:
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in WanDiT(cfg).state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    save_file({k: torch.randn(s, generator=gen) * 0.02 for k, s in shapes.items()}, path)


def _inputs(cfg: DiTConfig, shape):
    """``(x, t, context)``: t one timestep ``[1]``, or for the 5B one per latent frame ``[1, F]`` (the first 0)."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=gen)
    context = torch.randn(1, 512, cfg.text_dim, generator=gen)
    t = torch.tensor([500.0]) if cfg.model_type != "ti2v" else torch.tensor([[0.0] + [500.0] * (shape[2] - 1)])
    return x, t, context


def _per_token(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The references' timesteps: one per token ``[1, L]`` (each latent frame's value for its cells)."""
    cells = x.shape[3] * x.shape[4] // 4
    return t.repeat_interleave(cells, dim=1) if t.dim() == 2 else t


def _build(impl: str, weights: str, cfg: DiTConfig):
    """A callable ``(x, t, context) -> flow`` for one implementation, weights loaded the cheap way."""
    from safetensors.torch import load_file

    if impl == "wan_core":
        from wan_core import load_dit

        if cfg in PRESETS.values():
            model = load_dit(weights)
        else:  # part of the blocks, which detection rightly refuses as an incomplete file: the same mapped weights
            from wan_core.loading.safetensors_io import load_mmap

            with torch.device("meta"):
                model = WanDiT(cfg)
            model.load_state_dict(load_mmap(weights), assign=True)
            model = model.to("cpu").eval()
        return lambda x, t, c: model(x, t, c)
    if impl == "wan22":
        from .references import wan_module

        with torch.device("meta"):
            model = wan_module("modules.model").WanModel(
                model_type=cfg.model_type, dim=cfg.dim, ffn_dim=cfg.ffn_dim, num_heads=cfg.num_heads,
                num_layers=cfg.num_layers, in_dim=cfg.in_dim, out_dim=cfg.out_dim)
        model.load_state_dict(load_file(weights), assign=True)
        model_mod = wan_module("modules.model")
        d = cfg.head_dim  # its rotary table is a plain attribute, computed on meta above: rebuild on CPU
        model.freqs = torch.cat([model_mod.rope_params(1024, d - 4 * (d // 6)),
                                 model_mod.rope_params(1024, 2 * (d // 6)),
                                 model_mod.rope_params(1024, 2 * (d // 6))], dim=1)
        seq = lambda x: x.shape[2] * x.shape[3] * x.shape[4] // 4  # noqa: E731
        return lambda x, t, c: model(list(x), t=_per_token(t, x), context=list(c), seq_len=seq(x))[0]
    if impl == "diffusers":
        from diffusers import WanTransformer3DModel
        from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

        with torch.device("meta"):
            model = WanTransformer3DModel(num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
                                          in_channels=cfg.in_dim, out_channels=cfg.out_dim, ffn_dim=cfg.ffn_dim,
                                          num_layers=cfg.num_layers)
        model.load_state_dict(convert_wan_transformer_to_diffusers(load_file(weights)), assign=True)
        model.rope = type(model.rope)(cfg.head_dim, cfg.patch_size, 1024)  # its rotary buffers, on CPU
        return lambda x, t, c: model(x, _per_token(t, x), c, return_dict=False)[0]
    raise ValueError(impl)


def worker(impl: str, weights: str, runs: int, cfg: DiTConfig = CONFIG) -> dict:
    """Run in a fresh process: load, warm up, then time ``runs`` forwards per shape (JSON-able dict)."""
    torch.set_grad_enabled(False)
    with PeakSampler() as load_peak:
        fn = _build(impl, weights, cfg)
    result = {"impl": impl, "load_peak": load_peak.peak, "shapes": []}
    for shape in shapes_of(cfg):
        x, t, c = _inputs(cfg, shape)
        fn(x, t, c)  # warm-up: page the weights in, so every implementation is timed warm
        with PeakSampler() as fwd_peak:
            seconds, times = median_seconds(lambda x=x, t=t, c=c: fn(x, t, c), runs)
        out = fn(x, t, c)
        result["shapes"].append({"shape": shape, "seconds": seconds, "times": times, "peak": fwd_peak.peak,
                                 "checksum": float(out.double().abs().mean())})
    result["peak_rss"] = peak_rss_bytes()
    return result


def matmul_roof(cfg: DiTConfig, shape: tuple[int, ...], runs: int = 15) -> float:
    """GFLOP/s of a plain fp32 ``torch.mm`` at the feed-forward's size for this token count."""
    n = shape[2] * (shape[3] // 2) * (shape[4] // 2)
    a, b = torch.randn(n, cfg.dim), torch.randn(cfg.dim, cfg.ffn_dim)
    for _ in range(3):  # warm-up
        torch.mm(a, b)
    seconds, _ = median_seconds(lambda: torch.mm(a, b), runs)
    return 2 * n * cfg.dim * cfg.ffn_dim / seconds / 1e9


def main(runs: int = 3, impls=IMPLS, model: str = "t2v-1.3B", blocks: int | None = None) -> None:
    blocks = DEFAULT_BLOCKS.get(model) if blocks is None else blocks
    cfg = bench_config(model, blocks)
    part = "" if blocks is None else f" ({blocks} of its {PRESETS[model].num_layers} blocks)"
    print(f"DiT forward, real {model} config{part}, random fp32 weights, CPU, {torch.get_num_threads()} threads, "
          f"median of {runs} after a warm-up")
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "dit_random.safetensors"
        write_random_weights(weights, cfg)
        os.sync()  # finish writing the file before timing anything
        results = {impl: run_worker("benchmarks.dit", impl, str(weights), str(runs), model, str(blocks or 0))
                   for impl in impls}
    ours = results["wan_core"]
    for i, shape in enumerate(shapes_of(cfg)):
        flops = forward_flops(cfg, shape)
        roof = matmul_roof(cfg, shape)
        print(f"\nlatent {list(shape)}: {flops / 1e12:.2f} TFLOP per forward; torch.mm roof {roof:.1f} GFLOP/s")
        for impl, res in results.items():
            s = res["shapes"][i]
            ratio = s["seconds"] / ours["shapes"][i]["seconds"]
            rate = flops / s["seconds"] / 1e9
            print(f"  {impl:10s} {s['seconds']:8.2f} s  ({ratio:4.2f}x ours)  {rate:6.1f} GFLOP/s "
                  f"({rate / roof:4.0%} of roof)  forward peak RSS {gib(s['peak'])}  "
                  f"|out| {s['checksum']:.6f}")
    print()
    for impl, res in results.items():
        print(f"  {impl:10s} load peak RSS {gib(res['load_peak'])}, whole-run peak RSS {gib(res['peak_rss'])}")


if __name__ == "__main__":
    impl, weights, runs, model, blocks = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
    print(json.dumps(worker(impl, weights, runs, bench_config(model, blocks or None))))
