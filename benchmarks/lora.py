"""LoRA costs: applying a rank-64 LoRA to the real 14B config, and the per-step cost of unmerged vs merged.

14B (meta shapes: its weights would not fit this machine): a random rank-64 LoRA on every block Linear
(400 layers, bf16 file), read, checked and attached (apply_loras), and a render's view built merged and
unmerged; then the merge of one real 14B block in bf16 on the CPU, times 40 for the whole model. 1.3B:
one forward of the real config (random fp32 weights) at [1, 16, 3, 32, 32] with no LoRA, merged and
unmerged, median of 3 after a warm-up that builds the render's view.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

import wan_core
from wan_core.models.config import PRESETS
from wan_core.models.dit import DiTBlock
from wan_core.models.layers import CastLinear
from wan_core.runtime.patches import patched_view

from .common import PeakSampler, gib, median_seconds, rss_bytes
from .dit import write_random_weights

RANK = 64
LINEARS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
           "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")


def _write_lora(path: Path, config, dtype=torch.bfloat16) -> int:
    """A random rank-64 LoRA (ComfyUI keys, alpha) on every block Linear; returns its size in bytes."""
    gen = torch.Generator().manual_seed(0)
    shapes = {"ffn.0": (config.ffn_dim, config.dim), "ffn.2": (config.dim, config.ffn_dim)}
    state = {}
    for i in range(config.num_layers):
        for name in LINEARS:
            rows, cols = shapes.get(name, (config.dim, config.dim))
            key = f"diffusion_model.blocks.{i}.{name}"
            state[f"{key}.lora_down.weight"] = (torch.randn(RANK, cols, generator=gen) / cols ** 0.5).to(dtype)
            state[f"{key}.lora_up.weight"] = (0.01 * torch.randn(rows, RANK, generator=gen)).to(dtype)
            state[f"{key}.alpha"] = torch.tensor(float(RANK))
    save_file(state, path)
    return path.stat().st_size


def _timed(fn):
    start = time.perf_counter()
    with PeakSampler() as peak:
        out = fn()
    return out, time.perf_counter() - start, peak.peak


def _fourteen(tmp: Path) -> None:
    config = PRESETS["t2v-14B"]
    size = _write_lora(tmp / "lora14.safetensors", config)
    with torch.device("meta"):
        model = wan_core.WanDiT(config, compute_dtype=torch.bfloat16)
    before = rss_bytes()
    handle, seconds, peak = _timed(lambda: wan_core.apply_loras(model, [(tmp / "lora14.safetensors", 1.0)]))
    print(f"\nreal {config.label} config (meta), rank-{RANK} LoRA on {config.num_layers * len(LINEARS)} Linears, "
          f"file {gib(size)}")
    print(f"  apply_loras (read, check, attach): {seconds:6.2f} s, RSS +{gib(peak - before)} (file memory-mapped)")
    for unmerged in (False, True):
        lora_handle = wan_core.apply_loras(model, [(tmp / "lora14.safetensors", 1.0)], unmerged=unmerged)
        _, seconds, _ = _timed(lambda h=lora_handle: wan_core.RenderContext().patched(h))
        print(f"  render view, {'unmerged' if unmerged else 'merged  '}: {seconds:6.2f} s of bookkeeping (meta)")
    block = DiTBlock(config, CastLinear).to(torch.bfloat16).eval()
    patches = {name[len("blocks.0."):]: p for name, p in handle.weight_patches.items() if name.startswith("blocks.0.")}
    _, seconds, peak = _timed(lambda: patched_view(block, patches, torch.bfloat16))
    weight_bytes = sum(p.numel() * p.element_size() for p in block.parameters())
    print(f"  merge of one real block (bf16, CPU): {seconds:6.2f} s, {gib(weight_bytes)} of new weights; "
          f"x{config.num_layers} = {seconds * config.num_layers:6.1f} s and "
          f"{gib(weight_bytes * config.num_layers)} per render (merged); unmerged: none of either")


def _one_point_three(tmp: Path) -> None:
    config = PRESETS["t2v-1.3B"]
    write_random_weights(tmp / "dit13.safetensors", config)
    _write_lora(tmp / "lora13.safetensors", config, torch.float32)
    model = wan_core.load_dit(tmp / "dit13.safetensors")
    gen = torch.Generator().manual_seed(1)
    x, t, context = torch.randn(1, 16, 3, 32, 32, generator=gen), torch.tensor([500.0]), torch.randn(1, 512, 4096)
    print(f"\nreal {config.label} config, random fp32 weights, one forward at [1, 16, 3, 32, 32], CPU, "
          f"{torch.get_num_threads()} threads, median of 3")
    rows = [("no LoRA", model, None)]
    for unmerged in (False, True):
        rows.append(("unmerged" if unmerged else "merged", wan_core.apply_loras(
            model, [(tmp / "lora13.safetensors", 1.0)], unmerged=unmerged), unmerged))
    base = None
    for name, handle, _ in rows:
        render = wan_core.RenderContext()
        _, build, _ = _timed(lambda h=handle, r=render: h(x, t, context, render=r))  # builds the view, warm-up
        seconds, _ = median_seconds(lambda h=handle, r=render: h(x, t, context, render=r), 3)
        base = base or seconds
        print(f"  {name:9s} {seconds:6.2f} s per forward ({seconds / base:5.3f}x no LoRA); first call with the "
              f"view's build {build:6.2f} s")


def main() -> None:
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as tmp:
        _fourteen(Path(tmp))
        _one_point_three(Path(tmp))
