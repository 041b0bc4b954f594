"""Context windows for long videos: the window lists of each schedule (worked out by hand from the native rules),
fuse weights that sum to 1 at every latent frame, a single window equal to the plain render, conditioning sliced
per window (i2v, VACE, TI2V per-frame timesteps), per-window step caches and a resumed windowed render."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from test_resume import _interrupt_at, _model
from test_ti2v_dit import TI2V
from test_vace_dit import VACE
from tiny import I2V, T2V, TEXT_DIM, random_official_state

import wan_core
from wan_core import ContextWindows, InputError, RenderInterrupted, SampleRequest

R = lambda a, b: list(range(a, b))  # noqa: E731  [a, b)
SCHEDULES_ALL = ("static", "uniform", "looped")


def test_static_windows_follow_the_native_rule():
    """241 frames (61 latent), windows of 81 frames (21 latent), overlap 30 frames (8 latent): a window every
    21 - 8 = 13 frames, 0, 13, 26, 39; the next would start at 52 and pass the end (52 + 21 >= 61), so the last is
    moved back to end flush: 40..60. A clip that one window covers is that one window."""
    w = ContextWindows(81, 30)
    assert (w.length, w.latent_overlap) == (21, 8)
    assert w.windows(61) == [R(0, 21), R(13, 34), R(26, 47), R(39, 60), R(40, 61)]
    assert w.windows(61, step=5) == w.windows(61)  # static: every step the same
    assert ContextWindows(33, 9).windows(16) == [R(0, 9), R(6, 15), R(7, 16)]  # 9 latent, overlap 3, stride 6
    assert w.windows(21) == [R(0, 21)] and w.windows(10) == [R(0, 10)]


def test_uniform_and_looped_windows_follow_the_native_rules():
    """61 latent frames, windows of 21, overlap 8 (a window every 13 frames).

    Step 0: offset 0, windows start at 0, 13, 26, 39, 52 (up to 61 - 8); the last wraps (52..60, 0..11). Looped
    keeps it; uniform moves it to end flush (40..60) and, as the next window (0..20) holds frame 0, adds none.
    Step 1: the bit-reversed step is 1/2, so the offset is int(1/2) + round(61 / 2) = 30 (round half to even) and
    the windows start at 30, 43, 56, 69, 82 (to 61 + 30 - 8), i.e. 30..50, 43..60+0..2, 56..60+0..15, 8..28,
    21..41. Uniform: the 2nd wraps at frame 0 -> 40..60 (the 3rd holds 0: nothing added); the 3rd wraps at 0 ->
    40..60, and as 8..28 lacks frame 0, 0..20 is added after it; the 3rd is then a repeat of the 2nd and dropped.
    Closed loop: looped windows start up to the clip's end, not its end less the overlap: 60 frames at step 0
    start at 0, 13, 26, 39 (below 60 - 8), closed also at 52 (52..59, 0..12)."""
    uniform, looped = ContextWindows(81, 30, "uniform"), ContextWindows(81, 30, "looped")
    wrap = lambda a, n: [i % 61 for i in range(a, a + n)]  # noqa: E731
    assert looped.windows(61, 0) == [R(0, 21), R(13, 34), R(26, 47), R(39, 60), wrap(52, 21)]
    assert uniform.windows(61, 0) == [R(0, 21), R(13, 34), R(26, 47), R(39, 60), R(40, 61)]
    assert looped.windows(61, 1) == [R(30, 51), wrap(43, 21), wrap(56, 21), R(8, 29), R(21, 42)]
    assert uniform.windows(61, 1) == [R(30, 51), R(40, 61), R(0, 21), R(8, 29), R(21, 42)]
    closed = ContextWindows(81, 30, "looped", closed_loop=True)
    assert looped.windows(60, 0) == [R(0, 21), R(13, 34), R(26, 47), R(39, 60)]
    assert closed.windows(60, 0) == looped.windows(60, 0) + [[i % 60 for i in range(52, 73)]]


def test_fuse_weights_follow_the_native_rules():
    """pyramid over 5 frames: 1 2 3 2 1, over 4: 1 2 2 1; overlap-linear with an overlap of 3: a ramp in
    (1e-37, 0.5, 1) after a window before, a ramp out before a window after; flat: 1."""
    pyramid = ContextWindows(17, 5, fuse="pyramid")  # 5 latent frames
    assert pyramid.weights(R(0, 5), 20).tolist() == [1, 2, 3, 2, 1]
    assert pyramid.weights(R(0, 4), 20).tolist() == [1, 2, 2, 1]
    linear = ContextWindows(25, 9, fuse="overlap-linear")  # 7 latent frames, overlap 3
    assert torch.allclose(linear.weights(R(0, 7), 20), torch.tensor([1, 1, 1, 1, 1, 0.5, 1e-37]))
    assert torch.allclose(linear.weights(R(5, 12), 20), torch.tensor([1e-37, 0.5, 1, 1, 1, 0.5, 1e-37]))
    assert torch.allclose(linear.weights(R(13, 20), 20), torch.tensor([1e-37, 0.5, 1, 1, 1, 1, 1]))
    assert ContextWindows(fuse="flat").weights(R(3, 9), 20).tolist() == [1] * 6


@pytest.mark.parametrize("schedule", ["static", "uniform", "looped"])
@pytest.mark.parametrize("fuse", ["pyramid", "overlap-linear", "flat"])
def test_normalized_fuse_weights_sum_to_one_at_every_latent_frame(schedule, fuse):
    """For many clip lengths, window lengths, overlaps, strides and steps: every latent frame is in some window
    and the weights of all windows there, divided by their sum as the blend does, add up to 1."""
    checked = 0
    for frames_px in (5, 9, 17, 33, 49, 81):
        for overlap_px in range(0, frames_px, 4):
            for stride in (1, 2):
                w = ContextWindows(frames_px, overlap_px, schedule, fuse, stride)
                for clip in range(1, 70, 4):
                    for step in (0, 1, 2, 5):
                        total = torch.zeros(clip, dtype=torch.float64)
                        weight = torch.zeros(clip, dtype=torch.float64)
                        lists = w.windows(clip, step)
                        for window in lists:
                            weight.index_add_(0, torch.tensor(window), w.weights(window, clip).double())
                        assert (weight > 0).all(), (w, clip, step, lists)
                        for window in lists:
                            share = w.weights(window, clip).double() / weight[window]
                            total.index_add_(0, torch.tensor(window), share)
                        assert torch.allclose(total, torch.ones(clip, dtype=torch.float64)), (w, clip, step)
                        checked += 1
    assert checked > 500


def test_bad_context_settings_name_the_value_and_the_fix():
    with pytest.raises(InputError, match=r"frames must be 4n\+1 .* got 80; use 77 or 81"):
        ContextWindows(80)
    with pytest.raises(InputError, match="overlap must be at least 0 and less than the window"):
        ContextWindows(17, 17)
    with pytest.raises(InputError, match="schedule 'spiral' is unknown; choose one of static, uniform, looped"):
        ContextWindows(schedule="spiral")
    with pytest.raises(InputError, match="fuse method 'relative' is unknown"):
        ContextWindows(fuse="relative")


REQUEST = SampleRequest(80, 64, 21)  # 6 latent frames
SETTINGS = dict(request=REQUEST, seed=7, steps=4, cfg=5.0)


def _prompts(seed=5):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, 6, TEXT_DIM, generator=gen), torch.randn(1, 9, TEXT_DIM, generator=gen)


class _Shapes:
    """Wraps a DiT, recording the frames of x, t and each sliced conditioning at every call."""

    def __init__(self, model):
        self.model, self.config, self.calls, self.timesteps = model, model.config, [], []

    def __call__(self, x, t, context, **kw):
        seen = {"x": x.shape[2], "t": tuple(t.shape)}
        self.timesteps.append(t.clone())
        seen.update({k: v.shape[2] for k, v in kw.items() if k in ("y", "vace_context") and v is not None})
        self.calls.append(seen)
        return self.model(x, t, context, **kw)

    def check_conditioning(self, *args, **kwargs):
        return self.model.check_conditioning(*args, **kwargs)


def test_one_window_over_the_whole_clip_is_the_plain_render_bit_exactly():
    model = _model(T2V)
    context, negative = _prompts()
    plain = wan_core.sample(model, context, negative, **SETTINGS)
    for frames in (21, 81):  # exactly the clip, and longer
        assert torch.equal(wan_core.sample(model, context, negative, **SETTINGS,
                                           windows=ContextWindows(frames, 8)), plain)


def test_a_windowed_render_runs_each_window_and_blends_them():
    """6 latent frames, windows of 3 with overlap 1: 0..2, 2..4, 3..5 each step; the blend differs from the plain
    render but is finite and of the clip's shape."""
    spy = _Shapes(_model(T2V))
    context, negative = _prompts()
    out = wan_core.sample(spy, context, negative, **SETTINGS, windows=ContextWindows(9, 1))
    assert [c["x"] for c in spy.calls] == [3] * 3 * 4 and out.shape == (1, 16, 6, 8, 10)
    assert not torch.equal(out, wan_core.sample(_model(T2V), context, negative, **SETTINGS))


def test_windowed_i2v_and_vace_renders_slice_their_conditioning():
    """Every call of a windowed i2v render sees 3 frames of the latent and of ``y`` (mask + image latents); a VACE
    render with one reference frame sees that frame plus 3 of the latent and of the VACE context."""
    i2v = _Shapes(_model(I2V))
    context, negative = _prompts()
    gen = torch.Generator().manual_seed(3)
    y, clip_fea = torch.randn(1, 20, 6, 8, 10, generator=gen), torch.randn(1, 257, 64, generator=gen)
    wan_core.sample(i2v, context, negative, **SETTINGS, y=y, clip_fea=clip_fea, windows=ContextWindows(9, 1))
    assert i2v.calls and all(c["x"] == 3 and c["y"] == 3 for c in i2v.calls)

    vace = wan_core.WanDiT(VACE)
    vace.load_state_dict(random_official_state(VACE, seed=4))
    spy = _Shapes(vace.eval())
    control = torch.randn(1, 96, 7, 8, 10, generator=gen)  # one reference frame, then the 6 frames
    out = wan_core.sample(spy, context, negative, request=SampleRequest(80, 64, 25), seed=7, steps=2,
                          vace_context=control, windows=ContextWindows(9, 1), reference_frames=1)
    assert out.shape[2] == 7 and spy.calls and all(c["x"] == 4 and c["vace_context"] == 4 for c in spy.calls)


def test_the_ti2v_models_per_frame_timesteps_are_sliced_per_window():
    """The 5B's image-to-video gives the first latent frame timestep 0: the first window's timesteps start at 0,
    the others' do not (they hold later frames only)."""
    model = wan_core.WanDiT(TI2V)
    model.load_state_dict(random_official_state(TI2V, seed=6))
    spy = _Shapes(model.eval())
    context, negative = _prompts()
    first = torch.randn(1, 48, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    wan_core.sample(spy, context, negative, request=SampleRequest(64, 64, 21), seed=1, steps=2, first_frame=first,
                    windows=ContextWindows(9, 1))
    assert all(c["x"] == 3 and c["t"] == (2, 3) for c in spy.calls)
    assert [bool((t[:, 0] == 0).all()) for t in spy.timesteps[:3]] == [True, False, False]


def _job(model, settings, embeds):
    return wan_core.RenderJob(model, wan_core.TextEmbeds(*embeds), settings, REQUEST)


def test_a_windowed_render_with_a_step_cache_resumes_bit_exactly(tmp_path):
    """First-block cache per window (each window's own state), resume on: killed after step 3 of 6 and run again,
    it equals the uninterrupted render; the cache skipped steps (it is not a plain render)."""
    model, embeds = _model(T2V), _prompts()
    windows = ContextWindows(9, 1)
    settings = wan_core.RenderSettings(steps=6, seed=3, cfg=5.0, context=windows,
                                       cache=wan_core.StepCacheSettings("first_block", 2.0, 0.2, 2))
    whole = _job(model, settings, embeds).run(wan_core.StandaloneHost("cpu", resume_folder=tmp_path / "a"))
    plain = _job(model, wan_core.RenderSettings(steps=6, seed=3, cfg=5.0, context=windows), embeds).run(
        wan_core.StandaloneHost("cpu"))
    assert not torch.equal(whole, plain)  # the caches skipped some steps
    folder = tmp_path / "b"
    with pytest.raises(RenderInterrupted, match="after step 3 of 6"):
        _job(model, settings, embeds).run(wan_core.StandaloneHost("cpu", resume_folder=folder,
                                                                  interrupt=_interrupt_at(3)))
    assert list(folder.iterdir())
    resumed = _job(model, settings, embeds).run(wan_core.StandaloneHost("cpu", resume_folder=folder))
    assert torch.equal(resumed, whole)


def test_a_step_cache_refuses_moving_windows_and_a_single_cache():
    model, (context, negative) = _model(T2V), _prompts()
    cache = wan_core.StepCacheSettings("first_block")
    settings = wan_core.RenderSettings(steps=4, context=ContextWindows(9, 1, "uniform"), cache=cache)
    with pytest.raises(InputError, match="the uniform schedule moves them: use the static schedule"):
        _job(model, settings, (context, negative)).run(wan_core.StandaloneHost("cpu"))
    render = wan_core.RenderContext(runner=cache.runner(4, 2))
    with pytest.raises(InputError, match="needs one cache per window"):
        wan_core.sample(model, context, negative, **SETTINGS, render=render, windows=ContextWindows(9, 1))


def test_memory_is_planned_for_the_window_not_the_video():
    """241 frames at 832x480 with 81-frame windows: the job plans one call of 21 latent frames, as an 81-frame
    render; without windows 61 frames."""
    from wan_core.job import call_shape

    windowed = wan_core.RenderSettings(context=ContextWindows(81, 30))
    shape = SampleRequest(832, 480, 241).latent_shape()
    assert call_shape(windowed, shape) == (1, 16, 21, 60, 104) == SampleRequest(832, 480, 81).latent_shape()
    assert call_shape(wan_core.RenderSettings(), shape) == shape
    assert call_shape(windowed, (1, 16, 62, 60, 104), references=1) == (1, 16, 22, 60, 104)


NATIVE_PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
sys.argv = [sys.argv[0], "--cpu"]
import comfy.options
comfy.options.enable_args_parsing()
import comfy.context_windows as cw
out = []
for frames, length, overlap, schedule, fuse, stride, closed, step in json.load(sys.stdin):
    handler = cw.IndexListContextHandler(cw.get_matching_context_schedule(schedule), cw.get_matching_fuse_method(fuse),
                                         length, overlap, stride, closed, dim=2)
    handler._step = step
    try:
        windows = [list(map(int, w)) for w in handler.context_schedule.func(frames, handler, {})]
        weights = [[float(v) for v in cw.get_context_weights(len(w), frames, w, handler)] for w in windows]
        out.append({"windows": windows, "weights": weights})
    except Exception as err:
        out.append({"error": repr(err)})
print(json.dumps(out))
"""
NATIVE_NAMES = {"static": "standard_static", "uniform": "standard_uniform", "looped": "looped_uniform"}


@pytest.mark.skipif(not os.environ.get("COMFYUI_PATH"), reason="COMFYUI_PATH is not set: no ComfyUI checkout to "
                    "compare the windows with")
def test_windows_and_weights_equal_comfyuis_own_context_windows(tmp_path):
    """Our windows and fuse weights equal ComfyUI's ``comfy.context_windows`` (run in its own Python) for the same
    latent length, window, overlap, schedule, fuse method, stride, closed loop and step, wherever its windows are
    usable (distinct frames inside the clip, every frame covered: with stride 2 it can make others, which we
    replace)."""
    cases, ours = [], []
    for frames_px, overlaps in ((17, (0, 9)), (33, (9, 17)), (81, (17, 30))):
        for schedule in SCHEDULES_ALL:
            for fuse in ("pyramid", "overlap-linear", "flat"):
                for overlap_px in overlaps:
                    for stride, closed in ((1, False), (2, False), (1, True)):
                        w = ContextWindows(frames_px, overlap_px, schedule, fuse, stride, closed)
                        for clip in (5, 16, 21, 25, 37, 61):
                            for step in (0, 1, 2, 3, 5):
                                cases.append([clip, w.length, w.latent_overlap, NATIVE_NAMES[schedule], fuse, stride,
                                              closed, step])
                                ours.append((w, clip, step))
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    run = subprocess.run([python, "-c", NATIVE_PROBE, os.environ["COMFYUI_PATH"]], input=json.dumps(cases),
                         capture_output=True, text=True, timeout=600, check=True)
    native = json.loads(run.stdout.strip().splitlines()[-1])
    compared = 0
    for (w, clip, step), theirs in zip(ours, native, strict=True):
        windows = theirs.get("windows")
        usable = windows is not None and all(len(set(x)) == len(x) and 0 <= min(x) and max(x) < clip
                                             for x in windows) and {i for x in windows for i in x} == set(range(clip))
        if not usable:
            continue
        assert w.windows(clip, step) == windows, (w, clip, step)
        for window, weights in zip(windows, theirs["weights"]):
            assert torch.allclose(w.weights(window, clip), torch.tensor(weights), rtol=1e-6, atol=1e-37), (w, clip)
        compared += 1
    print(f"compared {compared} of {len(cases)} settings with ComfyUI")
    assert compared > 0.9 * len(cases), (compared, len(cases))
