"""MagCache against diffusers' MagCacheConfig hooks (same random weights, schedule, ratios and settings);
TeaCache's rescaling and accumulation against values worked out by hand from the published coefficients;
the published tables and how a model's table is chosen."""

from __future__ import annotations

import pytest
import torch
from test_step_cache import CFG, REQUEST, SEED, SHIFT, STEPS, diffusers_render, setup_render
from torch import nn

import wan_core
from wan_core import MagCache, RenderContext, StepCacheSettings, TeaCache
from wan_core.models.dit import BlockInputs
from wan_core.runtime.cache_tables import MAG_RATIOS, TEA_COEFFICIENTS, table_for
from wan_core.runtime.step_cache import nearest_resample, polynomial

# the published t2v 1.3B ratios of the conditional branch, fitted to 10 steps as MagCache does
RATIOS = nearest_resample(MAG_RATIOS["t2v_1.3B"][0::2], STEPS)


def _diffusers_mag(threshold, retention, max_skips):
    from diffusers.hooks import MagCacheConfig, apply_mag_cache
    from diffusers.hooks.mag_cache import MagCacheHeadHook

    config = MagCacheConfig(threshold=threshold, max_skip_steps=max_skips, retention_ratio=retention,
                            num_inference_steps=STEPS, mag_ratios=RATIOS)
    return MagCacheHeadHook, "new_forward", lambda model: apply_mag_cache(model, config)


# the accumulated errors of these ratios at 10 steps: the thresholds sit between them, not on them
@pytest.mark.parametrize("threshold, retention, max_skips", [(0.005, 0.2, 3), (0.02, 0.2, 2), (0.12, 0.0, 3)])
def test_mag_cache_equals_diffusers_hooks(threshold, retention, max_skips):
    ours, state, context, negative = setup_render()
    cache = MagCache([RATIOS, RATIOS], threshold, int(retention * STEPS + 0.5), max_skips)
    raw = wan_core.sample(ours, context, negative, request=REQUEST, seed=SEED, steps=STEPS, cfg=CFG, shift=SHIFT,
                          sampler="euler", render=RenderContext(runner=cache))
    expected, decisions = diffusers_render(state, context, negative,
                                           _diffusers_mag(threshold, retention, max_skips))
    assert cache.decisions == decisions
    assert not all(all(d) for d in decisions), "no step was skipped: the test would not test the cache"
    got = wan_core.normalize_latents(raw)
    assert ((got - expected).abs().max() / expected.abs().max()).item() <= 1e-4


def test_ratios_are_split_per_branch_and_fitted_like_the_published_code():
    from diffusers.hooks.mag_cache import nearest_interp

    for length in (1, 4, 10, 37, 50, 80):
        source = MAG_RATIOS["i2v_480p"][1::2]
        assert nearest_resample(source, length) == nearest_interp(torch.tensor(source, dtype=torch.float64),
                                                                   length).tolist()
    cache = MagCache.from_table("x", [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], steps=5, branches=2, threshold=0.1)
    assert cache.ratios == [[1.0, 1.0, 3.0, 5.0, 5.0], [2.0, 2.0, 4.0, 6.0, 6.0]]  # index round(i / 2), ties even


@pytest.mark.parametrize("kind", ["mag", "tea"])
def test_threshold_zero_is_the_uncached_render_bit_exactly(kind):
    ours, _, context, negative = setup_render()
    settings = dict(request=REQUEST, seed=SEED, steps=STEPS, cfg=CFG, shift=SHIFT)
    cache = StepCacheSettings(kind, threshold=0.0).runner(STEPS, branches=2)
    cached = wan_core.sample(ours, context, negative, **settings, render=RenderContext(runner=cache))
    assert torch.equal(cached, wan_core.sample(ours, context, negative, **settings))
    assert cache.computed_steps == STEPS


def test_tea_polynomial_equals_hand_values():
    """The published t2v 1.3B coefficients (``use_ret_steps``), highest power first:
    c = (-5.21862437e4, 9.23041404e3, -5.28275948e2, 1.36987616e1, -4.99875664e-2).

    p(0)    = c4 = -0.0499875664
    p(0.01) = -5.21862437e4 * 1e-8 + 9.23041404e3 * 1e-6 - 5.28275948e2 * 1e-4 + 13.6987616 * 1e-2 - 0.0499875664
            = -0.000521862437 + 0.00923041404 - 0.0528275948 + 0.136987616 - 0.0499875664 = 0.042881006403
    p(0.02) = -5.21862437e4 * 1.6e-7 + 9.23041404e3 * 8e-6 - 5.28275948e2 * 4e-4 + 13.6987616 * 0.02 - 0.0499875664
            = -0.00834979899 + 0.07384331232 - 0.2113103792 + 0.273975232 - 0.0499875664 = 0.07817079973
    """
    c = TEA_COEFFICIENTS["t2v_1.3B"]
    assert c == (-5.21862437e04, 9.23041404e03, -5.28275948e02, 1.36987616e01, -4.99875664e-02)
    assert polynomial(c, 0.0) == pytest.approx(-0.0499875664, abs=1e-12)
    assert polynomial(c, 0.01) == pytest.approx(0.042881006403, abs=1e-11)
    assert polynomial(c, 0.02) == pytest.approx(0.07817079973, abs=1e-10)


class _Double(nn.Module):
    """A block whose residual is its input: f(h) = 2 h."""

    def forward(self, h, inputs):
        return 2 * h


def test_tea_accumulates_per_branch_as_worked_out_by_hand():
    """Branch 0's e0 grows by 1% per step (relative L1 change 0.01: rescaled 0.04288), branch 1's by 2%
    (0.07817); threshold 0.1. Summed since the last computed step, skipped while below 0.1:
    branch 0: 0.0429 skip, 0.0858 skip, 0.1286 compute (sum reset), again -> T F F T F F T;
    branch 1: 0.0782 skip, 0.1563 compute, ... -> T F T F T F T. A skipped step adds the residual of the
    branch's last computed step to its input (here: that step's input)."""
    cache = TeaCache(TEA_COEFFICIENTS["t2v_1.3B"], 0.1, branches=2)
    blocks = [_Double(), _Double()]
    outputs = []
    for step in range(7):
        e6 = torch.stack([torch.full((1, 6, 8), 1.01 ** step), torch.full((1, 6, 8), 1.02 ** step)]).squeeze(1)
        inputs = BlockInputs(e6, None, torch.zeros(2, 1, 8), None, None)
        h = torch.randn(2, 3, 8)
        outputs.append((h, cache(blocks, h, inputs)))
    assert [d[0] for d in cache.decisions] == [True, False, False, True, False, False, True]
    assert [d[1] for d in cache.decisions] == [True, False, True, False, True, False, True]
    (h0, out0), (h1, out1), (h2, out2) = outputs[:3]
    assert torch.equal(out0, 4 * h0)  # computed: two doublings
    assert torch.equal(out1, h1 + 3 * h0)  # both skipped: residual of step 0 = 4 h0 - h0
    assert torch.equal(out2[0], h2[0] + 3 * h0[0]) and torch.equal(out2[1], 4 * h2[1])


def test_published_tables_and_the_choice_of_one():
    assert {k: len(v) for k, v in MAG_RATIOS.items()} == {"t2v_1.3B": 100, "t2v_14B": 100, "i2v_480p": 80,
                                                          "i2v_720p": 80}
    assert MAG_RATIOS["t2v_1.3B"][:4] == (1.0, 1.0, 1.0124, 1.02213)
    assert MAG_RATIOS["t2v_14B"][-2:] == (0.86111, 0.86189)
    assert MAG_RATIOS["i2v_720p"][2:4] == (0.99428, 0.99498)
    assert table_for("t2v", 1536, 832 * 480) == "t2v_1.3B" and table_for("t2v", 5120, 1280 * 720) == "t2v_14B"
    assert table_for("t2v", 256, 64 * 48) == "t2v_1.3B"  # narrow test models
    assert table_for("i2v", 5120, 832 * 480) == "i2v_480p" and table_for("i2v", 5120, 1280 * 720) == "i2v_720p"
    assert table_for("flf2v", 5120, 832 * 480) == "i2v_720p"
    mag = StepCacheSettings("mag").runner(50, 2, "t2v", 5120, 1280 * 720)
    assert (mag.threshold, mag.start_steps, mag.max_skips) == (0.12, 10, 2)
    assert mag.ratios[1][:2] == [1.0, 1.03017]  # the uncond half of the 14B table
    tea = StepCacheSettings("tea").runner(50, 2, "i2v", 5120, 832 * 480)
    assert (tea.threshold, tea.start_steps, tea.max_skips) == (0.2, 5, None)
    assert tea.coefficients == TEA_COEFFICIENTS["i2v_480p"]
    mine = StepCacheSettings("tea", threshold=0.3, start=0.0, max_skips=4).runner(20, 1)
    assert (mine.threshold, mine.start_steps, mine.max_skips, mine.branches) == (0.3, 0, 4, 1)


@pytest.mark.parametrize("kind", ["mag", "tea"])
def test_a_cached_render_resumes_bit_identically(tmp_path, kind):
    from wan_core.sampling.resume import ResumeFile

    ours, _, context, negative = setup_render()
    settings = dict(request=REQUEST, seed=SEED, steps=STEPS, cfg=CFG, shift=SHIFT)
    cache = lambda: StepCacheSettings(kind, threshold=0.2, start=0.1).runner(STEPS, 2)  # noqa: E731
    whole_cache = cache()
    whole = wan_core.sample(ours, context, negative, **settings, render=RenderContext(runner=whole_cache))
    assert 0 < whole_cache.computed_steps < STEPS
    resume = ResumeFile(tmp_path / "slot.safetensors")
    seen = []
    with pytest.raises(wan_core.RenderInterrupted):
        wan_core.sample(ours, context, negative, **settings, resume=resume, render=RenderContext(runner=cache()),
                        interrupt=lambda: seen.append(1) or len(seen) >= 5)
    resumed_cache = cache()
    resumed = wan_core.sample(ours, context, negative, **settings, resume=resume,
                              render=RenderContext(runner=resumed_cache))
    assert torch.equal(resumed, whole) and resumed_cache.decisions == whole_cache.decisions
