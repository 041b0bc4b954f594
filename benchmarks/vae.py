"""VAE decode benchmark: ours untiled and tiled vs wan22's official VAE vs diffusers' AutoencoderKLWan.

The real-size Wan2.1 VAE with random fp32 weights, written once as the official state dict; each
implementation decodes the same random latents in its own process.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from wan_core.latents import normalize_latents
from wan_core.models.vae import WanVAE

from .common import PeakSampler, gib, median_seconds, peak_rss_bytes, run_worker

IMPLS = ("wan_core", "wan_core_tiled", "wan22", "diffusers")
SIZES = {"small": (9, 256, 256), "mid": (5, 480, 832), "full": (17, 480, 832)}
TILE, OVERLAP = 16, 4  # latent cells for the tiled run


def write_random_weights(path: Path) -> None:
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in WanVAE().state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    tensors = {}
    for key, shape in shapes.items():
        noise = torch.randn(shape, generator=gen)
        fan_in = max(1, shape[1:].numel()) if len(shape) > 1 else 1
        tensors[key] = 1 + 0.1 * noise if key.endswith("gamma") else noise / fan_in ** 0.5
    save_file(tensors, path)


def _latents(frames: int, height: int, width: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(1, 16, (frames - 1) // 4 + 1, height // 8, width // 8, generator=gen)


def _build(impl: str, weights: str):
    """``decode(raw latents) -> video`` for one implementation."""
    from safetensors.torch import load_file

    if impl.startswith("wan_core"):
        from wan_core import decode_tiled, load_vae

        vae = load_vae(weights)
        return (lambda z: decode_tiled(vae, z, TILE, OVERLAP)) if impl.endswith("tiled") else vae.decode
    if impl == "wan22":
        from .references import wan_module

        with torch.device("meta"):
            model = wan_module("modules.vae2_1").WanVAE_(
                dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                temperal_downsample=[False, True, True], dropout=0.0)
        model.load_state_dict(load_file(weights), assign=True)
        from wan_core import LATENT_MEAN, LATENT_STD

        scale = [torch.tensor(LATENT_MEAN), 1.0 / torch.tensor(LATENT_STD)]
        return lambda z: model.decode(normalize_latents(z), scale).clamp(-1, 1)
    if impl == "diffusers":
        from diffusers import AutoencoderKLWan
        from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

        model = AutoencoderKLWan()
        model.load_state_dict(convert_wan_vae_to_diffusers(load_file(weights)))
        return lambda z: model.decode(z).sample
    raise ValueError(impl)


def worker(impl: str, weights: str, size: str, runs: int) -> dict:
    torch.set_grad_enabled(False)
    decode = _build(impl, weights)
    z = _latents(*SIZES[size])
    last = {}
    with PeakSampler() as peak:
        seconds, times = median_seconds(lambda: last.update(out=decode(z)), runs)
    out = last["out"]
    return {"impl": impl, "seconds": seconds, "times": times, "peak": peak.peak, "peak_rss": peak_rss_bytes(),
            "shape": list(out.shape), "checksum": float(out.double().abs().mean())}


def main(runs: int = 1, size: str = "small", impls=IMPLS) -> None:
    frames, height, width = SIZES[size]
    print(f"VAE decode of random latents to {frames} frames at {width}x{height}, real-size Wan2.1 VAE, random "
          f"fp32 weights, CPU, {torch.get_num_threads()} threads, median of {runs}; tiled: {TILE}x{TILE} latent "
          f"tiles, overlap {OVERLAP}")
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "wan21_vae_random.safetensors"
        write_random_weights(weights)
        os.sync()
        results = {impl: run_worker("benchmarks.vae", impl, str(weights), size, str(runs)) for impl in impls}
    fastest_ref = min(results[i]["seconds"] for i in ("wan22", "diffusers") if i in results)
    ref_peak = min(results[i]["peak_rss"] for i in ("wan22", "diffusers") if i in results)
    for impl, r in results.items():
        print(f"  {impl:15s} {r['seconds']:8.2f} s ({r['seconds'] / fastest_ref:4.2f}x fastest reference)  "
              f"peak RSS {gib(r['peak_rss'])} ({r['peak_rss'] / ref_peak:4.2f}x the lower reference)  "
              f"|out| {r['checksum']:.5f}")


def device_main(device: str = "cuda", frames: int = 81, height: int = 480, width: int = 832) -> None:
    """The VAE decode on a device: the real-size VAE (random weights) in its default compute dtype there, whole
    and in 32x32 tiles (overlap 8), with seconds and peak allocated / reserved device memory for each."""
    import time

    from wan_core import decode_tiled, default_compute_dtype

    torch.set_grad_enabled(False)
    device = torch.device(device)
    dtype = default_compute_dtype("vae", device)
    vae = WanVAE(compute_dtype=dtype).to(device, dtype).eval()
    z = _latents(frames, height, width).to(device)
    print(f"VAE decode to {frames} frames at {width}x{height}, real-size Wan2.1 VAE, random {dtype} weights, {device}")
    for label, decode in (("whole", vae.decode), ("tiled 32/8", lambda latent: decode_tiled(vae, latent, 32, 8))):
        decode(z[:, :, :2])  # warm-up: kernels and the allocator
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        video = decode(z)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        memory = (f"  peak {gib(torch.cuda.max_memory_allocated(device))} allocated / "
                  f"{gib(torch.cuda.max_memory_reserved(device))} reserved" if device.type == "cuda" else "")
        print(f"  {label:11s} {seconds:7.2f} s{memory}  out {tuple(video.shape)}")
        del video


if __name__ == "__main__":
    impl, weights, size, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    print(json.dumps(worker(impl, weights, size, runs)))
