"""GGUF DiTs: the real t2v 1.3B config (random weights) as Q8_0 and Q4_K files against bf16 storage of the
same weights: load peak RSS against the file size, and one forward at [1, 16, 3, 32, 32], each in its own
process, in one run.

Q8_0 is quantized with the gguf package. The gguf package cannot quantize K formats, so the Q4_K file holds
random but well-formed blocks: its values are noise, its size, memory and dequantization cost are a real
Q4_K file's. ``--device cuda`` runs the forwards on a GPU (bf16 compute).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from .common import PeakSampler, gib, median_seconds, peak_rss_bytes, run_worker
from .dit import CONFIG, write_random_weights

SHAPE = (1, 16, 3, 32, 32)


def write_gguf(path: Path, weights: Path, qtype: str) -> None:
    """``weights`` (official keys, fp32 safetensors) as a city96-layout GGUF: Linear weights in ``qtype``,
    everything else F32, the 5-D patch embedding flattened with its shape recorded."""
    import gguf
    from safetensors import safe_open

    from wan_core.models.quantized import BLOCKS

    kind = getattr(gguf.GGMLQuantizationType, qtype)
    values, size = BLOCKS[qtype]
    writer = gguf.GGUFWriter(str(path), arch="wan")
    rng = np.random.default_rng(0)
    with safe_open(weights, "pt") as f:
        for name in f.keys():
            data = f.get_tensor(name).numpy()
            if data.ndim == 2 and data.shape[1] % values == 0 and data.shape[0] >= 256:
                if qtype == "Q8_0":
                    packed = gguf.quants.quantize(data, kind)
                else:  # random well-formed blocks: valid fp16 scales, random packed integers
                    packed = rng.integers(0, 256, (data.shape[0], data.shape[1] // values * size), dtype=np.uint8)
                    blocks = packed.reshape(-1, size)
                    blocks[:, 0:4] = (rng.standard_normal((blocks.shape[0], 2)) * 1e-3).astype(np.float16).view(
                        np.uint8)
                writer.add_tensor(name, packed, raw_dtype=kind)
                continue
            if data.ndim > 4:
                writer.add_array(f"comfy.gguf.orig_shape.{name}", list(data.shape))
                data = data.reshape(data.shape[0], -1)
            writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def worker(path: str, device: str, storage: str) -> dict:
    import wan_core

    torch.set_grad_enabled(False)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with PeakSampler() as load:
        model = wan_core.load_dit(path, storage_dtype=None if storage == "file" else storage, compute_dtype=dtype,
                                  device=device)
    gen = torch.Generator().manual_seed(1)
    x, context = torch.randn(SHAPE, generator=gen).to(device), torch.randn(1, 512, 4096, generator=gen).to(device)
    t = torch.tensor([500.0], device=device)

    def forward():
        out = model(x, t, context)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    forward()  # warm-up: pages the weights in
    with PeakSampler() as run:
        seconds, _ = median_seconds(forward, 3)
    return {"load_peak": load.peak, "forward_peak": run.peak, "seconds": seconds, "peak_rss": peak_rss_bytes(),
            "cuda_peak": torch.cuda.max_memory_allocated() if device == "cuda" else 0}


def main(device: str = "cpu") -> None:
    print(f"GGUF DiT, real {CONFIG.label} config, random weights, forward at {list(SHAPE)}, {device}, "
          f"{torch.get_num_threads()} threads, median of 3, each case in its own process")
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "dit.safetensors"
        write_random_weights(weights)
        files = {"bf16 storage": (weights, "bf16")}
        for qtype in ("Q8_0", "Q4_K"):
            path = Path(tmp) / f"dit-{qtype}.gguf"
            write_gguf(path, weights, qtype)
            files[qtype] = (path, "file")
        os.sync()
        results = {name: run_worker("benchmarks.gguf_files", str(path), device, storage)
                   for name, (path, storage) in files.items()}
        sizes = {name: path.stat().st_size for name, (path, _) in files.items()}
    base = results["bf16 storage"]["seconds"]
    for name, r in results.items():
        size = sizes[name] if name != "bf16 storage" else sizes[name] // 2  # bf16 holds half the fp32 file
        print(f"  {name:12s} weights {gib(size)}  load peak RSS {gib(r['load_peak'])} ({r['load_peak'] / size:4.2f}x)"
              f"  forward {r['seconds']:6.2f} s ({r['seconds'] / base:4.2f}x bf16)  forward peak RSS "
              f"{gib(r['forward_peak'])}" + (f"  CUDA peak {gib(r['cuda_peak'])}" if r["cuda_peak"] else ""))


if __name__ == "__main__":
    print(json.dumps(worker(*sys.argv[1:4])))
