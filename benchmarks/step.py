"""One CFG sampling step of the real 1.3B config at [1, 16, 3, 32, 32]: ours vs the official code's loop.

Ours: one batch of 2 (cond + uncond) through a render context, so the text's embedding and every
block's cross-attention keys / values are made once per render (the timed steps reuse them). The
official loop (``wan/text2video.py``): two batch-1 forwards per step, each embedding the text and
projecting its keys / values again. Same random fp32 weights (the official layout), same inputs,
each implementation in its own process; the step's CFG-combined flow is compared between them.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

from .common import gib, median_seconds, peak_rss_bytes, run_worker
from .dit import CONFIG, _build, write_random_weights

SHAPE = (1, 16, 3, 32, 32)
CFG = 5.0


def _inputs():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(SHAPE, generator=gen)
    context, negative = torch.randn(1, 120, CONFIG.text_dim, generator=gen), torch.randn(1, 90, CONFIG.text_dim,
                                                                                         generator=gen)
    return x, torch.tensor([937.0]), context, negative


def _step_fn(impl: str, weights: str):
    """``step() -> CFG-combined flow`` for one implementation (its per-render preparation done once)."""
    x, t, context, negative = _inputs()
    if impl == "wan_core":
        from wan_core import RenderContext, load_dit
        from wan_core.sampling.loop import cfg_denoiser

        denoise = cfg_denoiser(load_dit(weights), context, negative, CFG, render=RenderContext())
        return lambda: denoise(x, t)
    forward = _build("wan22", weights, CONFIG)  # it pads each prompt's states to 512 rows itself

    def official_step():
        cond = forward(x, t, context)
        uncond = forward(x, t, negative)
        return uncond + CFG * (cond - uncond)

    return official_step


def worker(impl: str, weights: str, runs: int) -> dict:
    torch.set_grad_enabled(False)
    step = _step_fn(impl, weights)
    out = step()  # warm-up (and, for ours, the once-per-render work)
    seconds, times = median_seconds(step, runs)
    path = Path(weights).with_name(f"{impl}_step.pt")
    torch.save(out, path)
    return {"impl": impl, "seconds": seconds, "times": times, "peak_rss": peak_rss_bytes(), "out": str(path)}


def main(runs: int = 3) -> None:
    print(f"One CFG step (cfg {CFG}), real {CONFIG.label} config, latent {list(SHAPE)}, random fp32 weights, CPU, "
          f"{torch.get_num_threads()} threads, median of {runs} after a warm-up")
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "t2v_1.3B_random.safetensors"
        write_random_weights(weights)
        results = {impl: run_worker("benchmarks.step", impl, str(weights), str(runs)) for impl in ("wan_core", "wan22")}
        ours, ref = (torch.load(results[i]["out"], weights_only=True) for i in ("wan_core", "wan22"))
    error = ((ours - ref).abs().max() / ref.abs().max()).item()
    for impl, r in results.items():
        print(f"  {impl:9s} {r['seconds']:7.2f} s per step ({r['seconds'] / results['wan_core']['seconds']:4.2f}x "
              f"ours)  peak RSS {gib(r['peak_rss'])}")
    print(f"  ours is {1 - results['wan_core']['seconds'] / results['wan22']['seconds']:.1%} faster; the two steps' "
          f"flows differ by {error:.1e} (relative max; batch 2 vs two batch-1 passes)")


if __name__ == "__main__":
    impl, weights, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    print(json.dumps(worker(impl, weights, runs)))
