"""VACE forward against the plain t2v forward: the real 1.3B VACE config (random fp32 weights; its 15 VACE
blocks run next to the 30 main ones) and the same main weights as a t2v model, one forward each at
[1, 16, 3, 32, 32] with a VACE context, CPU, median of 3 after a warm-up, in one run."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

import wan_core
from wan_core.loading.safetensors_io import load_mmap
from wan_core.models.config import PRESETS

from .common import median_seconds
from .dit import write_random_weights

SHAPE = (1, 16, 3, 32, 32)


def main() -> None:
    torch.set_grad_enabled(False)
    vace_config, t2v_config = PRESETS["vace-1.3B"], PRESETS["t2v-1.3B"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vace.safetensors"
        write_random_weights(path, vace_config)
        vace = wan_core.load_dit(path)
        t2v = wan_core.WanDiT(t2v_config)
        main_weights = {k: v for k, v in load_mmap(path).items() if not k.startswith("vace_")}  # shared pages
        t2v.load_state_dict(main_weights, assign=True)
        t2v.eval()
    gen = torch.Generator().manual_seed(1)
    x, context = torch.randn(SHAPE, generator=gen), torch.randn(1, 512, 4096, generator=gen)
    control, t = torch.randn(1, 96, *SHAPE[2:], generator=gen), torch.tensor([500.0])
    cases = {"t2v": lambda: t2v(x, t, context), "vace": lambda: vace(x, t, context, vace_context=control)}
    print(f"real {vace_config.label} config ({len(vace_config.vace_layers)} VACE blocks + {vace_config.num_layers} "
          f"main) vs {t2v_config.label}, random fp32 weights, one forward at {list(SHAPE)}, CPU, "
          f"{torch.get_num_threads()} threads, median of 3")
    times = {}
    for name, fn in cases.items():
        fn()  # warm-up
        times[name], _ = median_seconds(fn, 3)
        print(f"  {name:5s} {times[name]:6.2f} s  ({times[name] / times['t2v']:4.2f}x t2v)")
