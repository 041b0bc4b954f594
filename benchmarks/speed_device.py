"""Speed on a GPU: the real t2v 1.3B config (random weights) at 832x480x81, 20 UniPC steps, cfg 5, for each
step cache x attention backend x compile, in one run: seconds per render, DiT block evaluations, and the
drift from the uncached render of the same backend (relative L2 of the final latent; PSNR of the frames
decoded by the real-config VAE with random weights). Random weights show the mechanism, not visual quality.

``python -m benchmarks speed --device cuda``; a smaller size (``--width/--height/--frames/--steps``) makes
a quick check of the same code on any device.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from pathlib import Path

import torch

import wan_core
from wan_core.models.config import PRESETS

from .dit import write_random_weights
from .speed import _Counting, _psnr

CACHES = {"none": None, "mag": wan_core.StepCacheSettings("mag"), "tea": wan_core.StepCacheSettings("tea"),
          "first_block": wan_core.StepCacheSettings("first_block")}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _render(dit, embeds, request, steps, cache, attention, compiled, device):
    runner = _Counting(None if cache is None else cache.runner(steps, 2, "t2v", dit.config.dim,
                                                                request.width * request.height))
    render = wan_core.RenderContext(device=device, attention=attention,
                                    runner=wan_core.CompiledRunner(runner) if compiled else runner)
    _sync(device)
    start = time.perf_counter()
    raw = wan_core.sample(dit, *embeds, request=request, seed=1, steps=steps, cfg=5.0, render=render)
    _sync(device)
    return raw, time.perf_counter() - start, runner.blocks


def main(device: str = "cuda", width: int = 832, height: int = 480, frames: int = 81, steps: int = 20) -> None:
    torch.set_grad_enabled(False)
    device = torch.device(device)
    config = PRESETS["t2v-1.3B"]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "dit.safetensors"
        write_random_weights(weights, config)
        dit = wan_core.load_dit(weights, storage_dtype=dtype, compute_dtype=dtype, device=device)
    vae = wan_core.WanVAE().to(device).eval()  # the real VAE config, default (random) initialization
    gen = torch.Generator().manual_seed(0)
    embeds = (torch.randn(1, 40, 4096, generator=gen).to(device, dtype),
              torch.randn(1, 30, 4096, generator=gen).to(device, dtype))
    request = wan_core.SampleRequest(width, height, frames)
    backends = [b for b in ("sdpa", "flash", "sage") if wan_core.get_attention(b).name == b]
    print(f"Renders of the real t2v 1.3B config ({config.num_layers} blocks, random {dtype} weights), {frames} frames "
          f"{width}x{height}, {steps} UniPC steps, cfg 5, {device}; backends here: {', '.join(backends)}; drift "
          "against the uncached render of the same backend")
    for attention, compiled in itertools.product(backends, (False, True)):
        _render(dit, embeds, request, 2, None, attention, compiled, device)  # warm-up (and the compile)
        reference = None
        for name, cache in CACHES.items():
            raw, seconds, blocks = _render(dit, embeds, request, steps, cache, attention, compiled, device)
            video = vae.decode(raw.float())
            if reference is None:
                reference = (raw, video)
            drift = (raw.float() - reference[0].float()).norm() / reference[0].float().norm()
            print(f"  {attention:5s} compile={compiled!s:5s} {name:12s} {blocks:6.0f} block evaluations "
                  f"({blocks / config.num_layers:5.1f} DiT)  {seconds:8.2f} s  drift: latent {drift:.2e} rel. L2, "
                  f"frames PSNR {_psnr(video, reference[1]):.1f} dB")
