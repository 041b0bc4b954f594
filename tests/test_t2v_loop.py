"""A tiny full T2V denoising loop (our DiT + our sampler, CFG 5, seed 42) against the same loop
composed from the official pieces the way ``wan/text2video.py`` composes them: wan22's WanModel,
its scheduler, float32 noise from a CPU generator, separate cond / uncond passes.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from test_dit_parity import _official_reference
from tiny import T2V
from wan_reference import wan_module

import wan_core
from wan_core import SampleRequest

SEED, CFG, SHIFT, STEPS = 42, 5.0, 5.0, 6
FRAMES, HEIGHT, WIDTH = 5, 64, 80  # latent [16, 2, 8, 10]


def _official_loop(model, context, negative, solver):
    if solver == "unipc":
        mod = wan_module("utils.fm_solvers_unipc")
        scheduler = mod.FlowUniPCMultistepScheduler(num_train_timesteps=1000, shift=1, use_dynamic_shifting=False)
        scheduler.set_timesteps(STEPS, shift=SHIFT)
        timesteps = scheduler.timesteps
    else:
        mod = wan_module("utils.fm_solvers")
        scheduler = mod.FlowDPMSolverMultistepScheduler(num_train_timesteps=1000, shift=1, use_dynamic_shifting=False)
        timesteps, _ = mod.retrieve_timesteps(scheduler, sigmas=mod.get_sampling_sigmas(STEPS, SHIFT))
    generator = torch.Generator("cpu").manual_seed(SEED)
    latents = torch.randn(16, (FRAMES - 1) // 4 + 1, HEIGHT // 8, WIDTH // 8, dtype=torch.float32, generator=generator)
    seq_len = latents.shape[1] * latents.shape[2] * latents.shape[3] // 4
    with torch.no_grad():
        for t in timesteps:
            timestep = torch.stack([t])
            cond = model([latents], t=timestep, context=[context], seq_len=seq_len)[0]
            uncond = model([latents], t=timestep, context=[negative], seq_len=seq_len)[0]
            pred = uncond + CFG * (cond - uncond)
            latents = scheduler.step(pred.unsqueeze(0), t, latents.unsqueeze(0), return_dict=False)[0].squeeze(0)
    return latents  # normalized latents, as the official pipeline hands them to its VAE


@pytest.mark.parametrize("solver", ["unipc", "dpm++"])
def test_tiny_t2v_loop_equals_the_official_composition(solver, tmp_path):
    reference = _official_reference(T2V, seed=21)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, tmp_path / "dit.safetensors")
    ours = wan_core.load_dit(tmp_path / "dit.safetensors")
    gen = torch.Generator().manual_seed(5)
    context, negative = torch.randn(6, T2V.text_dim, generator=gen), torch.randn(9, T2V.text_dim, generator=gen)

    raw = wan_core.sample(ours, context[None], negative[None], request=SampleRequest(WIDTH, HEIGHT, FRAMES),
                          seed=SEED, steps=STEPS, cfg=CFG, shift=SHIFT, sampler=solver)
    expected = _official_loop(reference, context, negative, solver)
    got = wan_core.normalize_latents(raw)[0]
    assert ((got - expected).abs().max() / expected.abs().max()).item() <= 1e-5
