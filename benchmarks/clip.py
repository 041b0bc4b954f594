"""CLIP vision benchmark: the real ViT-H/14 with random fp32 weights, one 224x224 image, ours vs
transformers' CLIPVisionModel (penultimate hidden state) on the same file, each in its own process."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from wan_core.models.clip_vision import VIT_H_14, ClipVision, preprocess

from .common import PeakSampler, gib, median_seconds, peak_rss_bytes, run_worker


def _hf_config():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                            image_size=224, patch_size=14, hidden_act="gelu")


def write_weights(folder: Path) -> Path:
    """A transformers-style folder (config.json + model.safetensors) that both implementations load."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in ClipVision(VIT_H_14).state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    save_file({k.removeprefix("vision_model."): torch.randn(s, generator=gen) * 0.02
               + (1.0 if "norm" in k and k.endswith("weight") else 0.0) for k, s in shapes.items()},
              folder / "model.safetensors")
    _hf_config().save_pretrained(folder)
    return folder / "model.safetensors"


def worker(impl: str, weights: str) -> dict:
    torch.set_grad_enabled(False)
    image = torch.rand(1, 224, 224, 3, generator=torch.Generator().manual_seed(1))
    start = time.perf_counter()
    if impl == "wan_core":
        from wan_core import load_clip_vision

        model = load_clip_vision(weights)
        pixels = model.preprocess(image)
        run = lambda: model(pixels)  # noqa: E731
    else:
        from transformers import CLIPVisionModel

        model = CLIPVisionModel.from_pretrained(str(Path(weights).parent)).eval()
        pixels = preprocess(image)
        run = lambda: model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]  # noqa: E731
    load = time.perf_counter() - start
    run()  # warm-up: page the weights in
    with PeakSampler() as peak:
        seconds, _ = median_seconds(run, 3)
    return {"impl": impl, "load": load, "seconds": seconds, "peak": peak.peak, "peak_rss": peak_rss_bytes(),
            "checksum": float(run().double().abs().mean())}


def main() -> None:
    print(f"CLIP vision ViT-H/14, random fp32 weights, one 224x224 image, CPU, {torch.get_num_threads()} threads, "
          "median of 3 after a warm-up")
    with tempfile.TemporaryDirectory() as tmp:
        weights = write_weights(Path(tmp))
        os.sync()
        results = {impl: run_worker("benchmarks.clip", impl, str(weights)) for impl in ("wan_core", "transformers")}
    ref = results["transformers"]
    for impl, r in results.items():
        print(f"  {impl:12s} {r['seconds']:6.3f} s ({r['seconds'] / ref['seconds']:4.2f}x transformers)  load "
              f"{r['load']:5.2f} s  peak RSS {gib(r['peak_rss'])} ({r['peak_rss'] / ref['peak_rss']:4.2f}x)  "
              f"|out| {r['checksum']:.6f}")


if __name__ == "__main__":
    print(json.dumps(worker(sys.argv[1], sys.argv[2])))
