"""Step caches against diffusers' cache hooks on WanTransformer3DModel (same random weights, schedule and
thresholds): the same skip decisions per step and CFG branch, and the same render."""

from __future__ import annotations

import pytest
import torch
from test_dit_parity import _diffusers_model
from tiny import T2V, random_official_state

import wan_core
from wan_core import RenderContext, SampleRequest
from wan_core.runtime.step_cache import FirstBlockCache
from wan_core.sampling.loop import build_schedule, make_noise

STEPS, CFG, SHIFT, SEED = 10, 5.0, 5.0, 4
REQUEST = SampleRequest(80, 64, 9)


def setup_render():
    state = random_official_state(T2V, seed=12)
    ours = wan_core.WanDiT(T2V)
    ours.load_state_dict(state)
    gen = torch.Generator().manual_seed(8)
    # a strong prompt and an empty negative, so the two CFG branches' residuals differ enough to decide apart
    context, negative = 4 * torch.randn(1, 7, T2V.text_dim, generator=gen), torch.zeros(1, 5, T2V.text_dim)
    return ours.eval().requires_grad_(False), state, context, negative


def _diffusers_fbc(threshold):
    """diffusers' first-block cache: (its hook class, the method that decides, a function applying it)."""
    from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache
    from diffusers.hooks.first_block_cache import FBCHeadBlockHook

    return FBCHeadBlockHook, "_should_compute_remaining_blocks", \
        lambda model: apply_first_block_cache(model, FirstBlockCacheConfig(threshold=threshold))


def diffusers_render(state, context, negative, cache, steps=STEPS):
    """The same CFG Euler render on diffusers' model with one of its cache hooks (``cache``: the hook class, its
    method that decides, which is recorded, and a function applying the hook to a model), one cache context
    per branch (as its WanPipeline runs them). Returns normalized latents and the decisions per step,
    (cond, uncond)."""
    model = _diffusers_model(T2V, state)
    hook, name, apply = cache
    decisions = []
    original = getattr(hook, name)

    def recording(self, *args, **kwargs):
        decision = original(self, *args, **kwargs)
        decisions.append(decision if isinstance(decision, bool) else self.state_manager.get_state().should_compute)
        return decision

    setattr(hook, name, recording)
    try:
        apply(model)
        schedule = build_schedule("euler", steps, SHIFT, 1.0)
        x = make_noise(REQUEST.latent_shape(), SEED)
        pad = lambda c: torch.nn.functional.pad(c, (0, 0, 0, 512 - c.shape[1]))  # noqa: E731
        with torch.no_grad():
            for i, t in enumerate(schedule.timesteps):
                with model.cache_context("cond"):
                    cond = model(x, t[None], pad(context), return_dict=False)[0]
                with model.cache_context("uncond"):
                    uncond = model(x, t[None], pad(negative), return_dict=False)[0]
                x = x + (schedule.sigmas[i + 1] - schedule.sigmas[i]) * (uncond + CFG * (cond - uncond))
    finally:
        setattr(hook, name, original)
    return x, [tuple(decisions[i:i + 2]) for i in range(0, len(decisions), 2)]


# With random weights the first block's residual moves by ~120-160% between steps (a trained model's moves
# by a few percent), so the thresholds that make some steps skip here are around 1.2-1.5; at 1.475 the two
# CFG branches decide differently at step 8 (the nearest change is 0.014 away from the threshold).
@pytest.mark.parametrize("threshold", [0.5, 1.25, 1.475])
def test_first_block_cache_equals_diffusers_hooks(threshold):
    ours, state, context, negative = setup_render()
    cache = FirstBlockCache(threshold, branches=2)
    raw = wan_core.sample(ours, context, negative, request=REQUEST, seed=SEED, steps=STEPS, cfg=CFG, shift=SHIFT,
                          sampler="euler", render=RenderContext(runner=cache))
    expected, decisions = diffusers_render(state, context, negative, _diffusers_fbc(threshold))
    assert cache.decisions == decisions
    got = wan_core.normalize_latents(raw)
    assert ((got - expected).abs().max() / expected.abs().max()).item() <= 1e-4
    if threshold > 1:
        assert not all(all(d) for d in decisions), "no step was skipped: the test would not test the cache"
    if threshold == 1.475:
        assert (True, False) in decisions, "the branches never decided differently"


def test_threshold_zero_is_the_uncached_render_bit_exactly():
    ours, _, context, negative = setup_render()
    settings = dict(request=REQUEST, seed=SEED, steps=STEPS, cfg=CFG, shift=SHIFT)
    cache = FirstBlockCache(0.0, branches=2)
    cached = wan_core.sample(ours, context, negative, **settings, render=RenderContext(runner=cache))
    assert torch.equal(cached, wan_core.sample(ours, context, negative, **settings))
    assert cache.computed_steps == STEPS


def test_start_steps_and_max_skips_bound_the_skipping():
    ours, _, context, negative = setup_render()
    cache = FirstBlockCache(10.0, branches=2, start_steps=3, max_skips=2)  # would skip everything otherwise
    wan_core.sample(ours, context, negative, request=REQUEST, seed=SEED, steps=STEPS, cfg=CFG,
                    render=RenderContext(runner=cache))
    pattern = [all(d) for d in cache.decisions]
    assert pattern[:3] == [True] * 3 and pattern[3:] == [False, False, True] * 2 + [False]
    assert cache.decisions[3] == (False, False)


def test_a_cached_render_resumes_bit_identically(tmp_path):
    from wan_core.sampling.resume import ResumeFile

    ours, _, context, negative = setup_render()
    settings = dict(request=REQUEST, seed=SEED, steps=STEPS, cfg=CFG, shift=SHIFT)
    whole_cache = FirstBlockCache(1.25, branches=2)
    whole = wan_core.sample(ours, context, negative, **settings, render=RenderContext(runner=whole_cache))
    resume = ResumeFile(tmp_path / "slot.safetensors")
    seen = []
    with pytest.raises(wan_core.RenderInterrupted):
        wan_core.sample(ours, context, negative, **settings, resume=resume,
                        render=RenderContext(runner=FirstBlockCache(1.25, branches=2)),
                        interrupt=lambda: seen.append(1) or len(seen) >= 4)
    cache = FirstBlockCache(1.25, branches=2)
    resumed = wan_core.sample(ours, context, negative, **settings, resume=resume, render=RenderContext(runner=cache))
    assert torch.equal(resumed, whole) and cache.decisions == whole_cache.decisions
    other = FirstBlockCache(1.5, branches=2)  # another threshold is another render: never resumed from this one
    with pytest.raises(wan_core.RenderInterrupted):
        wan_core.sample(ours, context, negative, **settings, resume=resume, render=RenderContext(runner=other),
                        interrupt=lambda: True)
    assert len(other.decisions) == 1


def test_the_cache_through_the_nodes_and_the_cli(tmp_path, monkeypatch):
    from safetensors.torch import load_file
    from workflow_runner import load_pack

    from wan_core.cli import main
    from wan_core.demo import DEMO_FILES, write_demo_models
    from wan_core.replay import replay_argv

    write_demo_models(tmp_path / "models")
    monkeypatch.setenv("WANCORE_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("WANCORE_OUTPUT", str(tmp_path / "output"))
    nodes = load_pack().NODE_CLASS_MAPPINGS
    model = nodes["WanCoreModelLoader"]().load(DEMO_FILES["diffusion_models"], "default")[0]
    encoder = nodes["WanCoreTextEncoderLoader"]().load(DEMO_FILES["text_encoders"], "default")[0]
    embeds = nodes["WanCoreTextEncode"]().encode(encoder, "a fox", "")[0]
    settings = dict(width=64, height=48, frames=5, seed=1, steps=6, cfg=5.0, shift=5.0, sampler="unipc", denoise=1.0)
    plain = nodes["WanCoreSampler"]().run(model, embeds, **settings, resume="off")[0]["samples"]
    never = nodes["WanCoreCache"]().settings("first_block", 0.0, 0.0, 3)[0]
    with_zero = nodes["WanCoreSampler"]().run(model, embeds, **settings, resume="off", cache=never)[0]["samples"]
    assert torch.equal(with_zero, plain)
    always = nodes["WanCoreCache"]().settings("first_block", 10.0, 0.0, 100)[0]  # reuse after the first step
    reused = nodes["WanCoreSampler"]().run(model, embeds, **settings, resume="off", cache=always)[0]["samples"]
    assert torch.isfinite(reused).all() and not torch.equal(reused, plain)

    published = nodes["WanCoreCache"]().settings("mag", -1.0, -1.0, -1)[0]  # -1: the published defaults
    assert vars(published) == vars(wan_core.StepCacheSettings("mag"))
    mag = nodes["WanCoreSampler"]().run(model, embeds, **settings, resume="off", cache=published)[0]["samples"]
    assert torch.isfinite(mag).all() and not torch.equal(mag, plain)

    args = ["t2v", "--demo", "--models", str(tmp_path / "models"), "--prompt", "a fox", "--steps", "4", "--frames",
            "5", "--keep-latent", "--resume", "off"]
    assert main([*args, "--out", str(tmp_path / "plain.mp4")]) == 0
    assert main([*args, "--out", str(tmp_path / "zero.mp4"), "--cache", "first_block", "--cache-threshold", "0"]) == 0
    assert torch.equal(load_file(tmp_path / "zero.latent.safetensors")["latent"],
                       load_file(tmp_path / "plain.latent.safetensors")["latent"])
    assert wan_core.read_manifest(tmp_path / "zero.mp4")["cache"]["kind"] == "first_block"
    assert main([*args, "--out", str(tmp_path / "bad.mp4"), "--cache", "first_block", "--cache-start", "2"]) == 2
    assert main([*args, "--out", str(tmp_path / "tea.mp4"), "--cache", "tea", "--cache-max-skips", "1"]) == 0
    argv = replay_argv(tmp_path / "tea.mp4", tmp_path / "models", None, None)
    assert argv[argv.index("--cache"):argv.index("--cache") + 4] == ["--cache", "tea", "--cache-max-skips", "1"]
