"""Speed and its cost in error: whole renders on the demo model with each shortcut, against the exact render.

Rows: no reuse (the text's keys / values at every step), exact reuse (the default), the first-block
cache at several thresholds, MagCache and TeaCache with the published t2v 1.3B tables and defaults. For
each: block evaluations per render (and the same in whole DiT calls, each call a batch of both CFG
branches), seconds, and the drift from the exact render (relative L2 of the final latent, PSNR of the
decoded frames). The demo model has random weights: its first block changes by ~120-160% between steps
where a trained model's changes by a few percent, so only large thresholds skip anything there; its
time modulation changes by less than the range TeaCache's polynomial was fitted on, where the polynomial
is negative, so TeaCache skips every step after its first ones unless max_skips bounds it. MagCache
decides from its published ratios alone, as on a real model. The drift shows the mechanism, not the
visual quality of a real render.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import torch

import wan_core
from wan_core.demo import DEMO_SIZE, write_demo_models

STEPS, CFG = 20, 5.0
SIZE = {"width": DEMO_SIZE["width"], "height": DEMO_SIZE["height"], "frames": DEMO_SIZE["frames"]}


class _Counting(wan_core.ResidentRunner):
    """Counts block evaluations, through a step cache when one is given."""

    def __init__(self, inner=None):
        self.inner, self.blocks = inner, 0

    def __call__(self, blocks, h, *args):
        if self.inner is None:
            self.blocks += len(blocks)
            return super().__call__(blocks, h, *args)
        before = len(self.inner.decisions)
        out = self.inner(blocks, h, *args)
        computed = self.inner.decisions[before]
        share = sum(computed) / len(computed)  # of the batch (per CFG branch)
        if isinstance(self.inner, wan_core.FirstBlockCache):  # the first block always runs
            self.blocks += 1 + share * (len(blocks) - 1)
        else:
            self.blocks += share * len(blocks)
        return out


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a - b) / 2).pow(2).mean().item()  # frames in [-1, 1] -> [0, 1]
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def main() -> None:
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_demo_models(Path(tmp))
        dit, vae = wan_core.load_dit(paths["diffusion_models"]), wan_core.load_vae(paths["vae"])
        embeds = wan_core.encode_prompts(wan_core.load_text_encoder(paths["text_encoders"]), "a red fox in snow")
    rows = [("exact reuse", {}, None), ("no reuse", dict(precompute_keys_values=False), None)]
    rows += [(f"first-block {t}", {}, wan_core.FirstBlockCache(t, branches=2)) for t in (0.05, 1.2, 1.3, 1.5)]
    published = (("mag", "mag default", {}), ("mag", "mag 0.3", dict(threshold=0.3)),
                 ("tea", "tea default", {}), ("tea", "tea max_skips 1", dict(max_skips=1)))
    pixels = SIZE["width"] * SIZE["height"]  # the published t2v 1.3B tables and defaults
    rows += [(name, {}, wan_core.StepCacheSettings(kind, **given).runner(STEPS, 2, pixels=pixels))
             for kind, name, given in published]
    print(f"Whole demo renders ({SIZE['frames']} frames {SIZE['width']}x{SIZE['height']}, {STEPS} UniPC steps, cfg "
          f"{CFG}), CPU, {torch.get_num_threads()} threads; drift against the exact render")
    wan_core.sample(dit, embeds.positive, embeds.negative, request=wan_core.SampleRequest(**SIZE), steps=2)  # warm-up
    reference, layers = None, dit.config.num_layers
    for name, options, cache in rows:
        runner = _Counting(cache)
        start = time.perf_counter()
        raw = wan_core.sample(dit, embeds.positive, embeds.negative, request=wan_core.SampleRequest(**SIZE), seed=1,
                              steps=STEPS, cfg=CFG, render=wan_core.RenderContext(runner=runner, **options))
        seconds = time.perf_counter() - start
        video = vae.decode(raw)
        if name == "exact reuse":
            reference = (raw, video)
        drift = "" if reference is None else (
            f"  drift: latent {(raw - reference[0]).norm() / reference[0].norm():.2e} rel. L2, "
            f"frames PSNR {_psnr(video, reference[1]):.1f} dB")
        print(f"  {name:18s} {runner.blocks:6.0f} block evaluations ({runner.blocks / layers:5.1f} DiT)  "
              f"{seconds:6.2f} s{drift}")
