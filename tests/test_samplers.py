"""Samplers: step-for-step parity with the official Wan schedulers, and exactness on known flows."""

from __future__ import annotations

import pytest
import torch
from wan_reference import wan_module

import wan_core
from wan_core.errors import InputError, RenderInterrupted
from wan_core.sampling.loop import SampleRequest, build_schedule, cfg_denoiser, make_noise
from wan_core.sampling.schedules import UNIPC_SIGMA_MAX, flow_schedule, shift_sigmas
from wan_core.sampling.solvers import dpmpp_2m, euler, unipc

STEPS = [10, 50]
SHIFTS = [1.0, 3.0, 5.0, 16.0]


def _toy_flow():
    """A deterministic nonlinear stand-in for the DiT that also depends on t."""
    a = torch.randn(8, 8, generator=torch.Generator().manual_seed(0)) * 0.3
    return lambda x, t: torch.tanh(x @ a) + 1e-3 * float(t) * x.mean()


def _run_reference(scheduler, timesteps, flow, x):
    outputs = []
    for t in timesteps:
        x = scheduler.step(flow(x, t), t, x, return_dict=False)[0]
        outputs.append(x)
    return outputs


def _run_ours(solver, schedule, flow, x):
    outputs = []
    solver(flow, x, schedule, lambda i, x_i, x0: outputs.append(x_i))
    return outputs


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("shift", SHIFTS)
def test_unipc_matches_official(steps, shift):
    sched_mod = wan_module("utils.fm_solvers_unipc")
    ref = sched_mod.FlowUniPCMultistepScheduler(num_train_timesteps=1000, shift=1, use_dynamic_shifting=False)
    ref.set_timesteps(steps, shift=shift)  # exactly as wan/text2video.py does for "unipc"
    ours = flow_schedule(steps, shift, UNIPC_SIGMA_MAX)
    assert torch.equal(ours.timesteps, ref.timesteps.float())
    assert torch.equal(ours.sigmas, ref.sigmas)
    x = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(1))
    flow = _toy_flow()
    for got, want in zip(_run_ours(unipc, ours, flow, x.clone()), _run_reference(ref, ref.timesteps, flow, x.clone()),
                         strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("shift", SHIFTS)
def test_dpmpp_matches_official(steps, shift):
    sched_mod = wan_module("utils.fm_solvers")
    ref = sched_mod.FlowDPMSolverMultistepScheduler(num_train_timesteps=1000, shift=1, use_dynamic_shifting=False)
    timesteps, _ = sched_mod.retrieve_timesteps(ref, sigmas=sched_mod.get_sampling_sigmas(steps, shift))
    ours = flow_schedule(steps, shift, 1.0)
    assert torch.equal(ours.timesteps, timesteps.float())
    assert torch.equal(ours.sigmas, ref.sigmas)
    x = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(2))
    flow = _toy_flow()
    for got, want in zip(_run_ours(dpmpp_2m, ours, flow, x.clone()), _run_reference(ref, timesteps, flow, x.clone()),
                         strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def _single_point_flow(x0: torch.Tensor, sigmas: torch.Tensor):
    """The exact flow towards one data point: along x_s = x0 + s (noise - x0), v = (x - x0) / s."""
    index = {float(t): i for i, t in enumerate(sigmas[:-1] * 1000)}
    return lambda x, t: (x - x0) / sigmas[index[float(t)]]


@pytest.mark.parametrize("shift", [1.0, 5.0])
def test_euler_is_exact_on_a_straight_flow(shift):
    """The path x_s = x0 + s (noise - x0) is a straight line in s, which Euler integrates exactly."""
    schedule = flow_schedule(12, shift)
    schedule = type(schedule)(schedule.sigmas, schedule.sigmas[:-1] * 1000)  # exact t to look sigma up
    gen = torch.Generator().manual_seed(3)
    x0, noise = torch.randn(3, 5, generator=gen), torch.randn(3, 5, generator=gen)
    outs = _run_ours(euler, schedule, _single_point_flow(x0, schedule.sigmas), noise.clone())
    for sigma, x in zip(schedule.sigmas[1:], outs, strict=True):
        torch.testing.assert_close(x, x0 + sigma * (noise - x0), rtol=0, atol=1e-6)


@pytest.mark.parametrize("solver", [unipc, dpmpp_2m, euler], ids=["unipc", "dpm++", "euler"])
def test_solvers_land_on_the_data_point(solver):
    schedule = flow_schedule(8, 5.0)
    schedule = type(schedule)(schedule.sigmas, schedule.sigmas[:-1] * 1000)
    gen = torch.Generator().manual_seed(4)
    x0, noise = torch.randn(2, 6, generator=gen), torch.randn(2, 6, generator=gen)
    torch.testing.assert_close(solver(_single_point_flow(x0, schedule.sigmas), noise, schedule), x0,
                               rtol=0, atol=1e-5)


def test_shift_formula():
    sigma = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(shift_sigmas(sigma, 3.0), torch.tensor([0.0, 0.5, 0.75, 1.0], dtype=torch.float64))


def test_partial_denoise_uses_the_tail_of_the_longer_schedule():
    full = flow_schedule(20, 5.0, UNIPC_SIGMA_MAX)
    part = build_schedule("unipc", 10, 5.0, denoise=0.5)
    assert torch.equal(part.sigmas, full.sigmas[-11:]) and torch.equal(part.timesteps, full.timesteps[-10:])


class _Recorder:
    """A model stand-in that records its inputs and predicts a constant flow."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, context, clip_fea=None, y=None, render=None):
        self.calls.append((x.clone(), t.clone(), context.clone()))
        return torch.ones_like(x) * context[:, :1, :1, None, None]


def test_noise_and_start_latent():
    """Noise is float32 randn [16, F', H/8, W/8] from a CPU generator seeded with the seed (official)."""
    model = _Recorder()
    ctx = torch.ones(1, 3, 4)
    wan_core.sample(model, ctx, request=SampleRequest(width=32, height=16, frames=5), seed=42, steps=3, cfg=1.0)
    official = torch.randn(16, 2, 2, 4, dtype=torch.float32, generator=torch.Generator("cpu").manual_seed(42))
    assert torch.equal(model.calls[0][0][0], official)
    assert torch.equal(make_noise((1, 16, 2, 2, 4), 42)[0], official)

    raw = torch.randn(1, 16, 2, 2, 4)
    model = _Recorder()
    wan_core.sample(model, ctx, latent=raw, seed=7, steps=4, cfg=1.0, denoise=0.5, sampler="euler")
    s0 = build_schedule("euler", 4, 5.0, 0.5).sigmas[0]
    expected = (1 - s0) * wan_core.normalize_latents(raw) + s0 * make_noise(raw.shape, 7)
    torch.testing.assert_close(model.calls[0][0], expected)


def test_cfg_combines_cond_and_uncond_in_one_batch():
    model = _Recorder()
    cond, uncond = torch.full((1, 3, 4), 2.0), torch.full((1, 5, 4), -1.0)
    denoise = cfg_denoiser(model, cond, uncond, 5.0)
    out = denoise(torch.zeros(1, 16, 1, 2, 2), torch.tensor(500.0))
    assert len(model.calls) == 1 and model.calls[0][0].shape[0] == 2  # one forward of batch 2
    torch.testing.assert_close(out, torch.full_like(out, -1.0 + 5.0 * (2.0 - -1.0)))


def test_progress_and_interrupt():
    model = _Recorder()
    seen = []
    with pytest.raises(RenderInterrupted):
        wan_core.sample(model, torch.ones(1, 3, 4), request=SampleRequest(32, 16, 5), steps=10, cfg=1.0,
                        callback=lambda i, n, x0: seen.append((i, n)), interrupt=lambda: len(seen) >= 2)
    assert seen == [(0, 10), (1, 10)] and len(model.calls) == 2


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"request": SampleRequest(832, 480, 14)}, "use 13 or 17"),
    ({"request": SampleRequest(833, 480, 81)}, r"width 833 is not a multiple of 16 \(.*\); use 832 or 848"),
    ({"sampler": "ddim"}, "choose one of unipc, dpm\\+\\+, euler"),
    ({"denoise": 0.0}, r"denoise must be a finite number above 0 and at most 1, got 0.0; 1.0 renders from pure"),
    ({"denoise": 0.5}, "needs a start latent"),
    ({"steps": 0}, "steps must be an integer from 1 to 1000, got 0"),
])
def test_bad_requests_fail_before_any_model_call(kwargs, message):
    model = _Recorder()
    with pytest.raises(InputError, match=message):
        wan_core.sample(model, torch.ones(1, 3, 4), **kwargs)
    assert model.calls == []
