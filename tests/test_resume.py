"""Renders that are never lost: checkpointed sampling resumes bit-identically, stale or damaged resume files
are ignored, and a render can stop after N steps and continue later with the same result as one go."""

from __future__ import annotations

import logging

import pytest
import torch
from tiny import I2V, T2V, inputs, random_official_state

import wan_core
from wan_core import RenderInterrupted, SampleRequest
from wan_core.sampling.resume import ResumeFile

REQUEST = SampleRequest(80, 64, 9)
STEPS = 6


def _model(cfg=T2V, seed=2):
    model = wan_core.WanDiT(cfg)
    model.load_state_dict(random_official_state(cfg, seed=seed))
    return model.eval().requires_grad_(False)


def _conditioning(cfg):
    x, t, context, clip_fea, y = inputs(cfg, frames=3, h=8, w=10, seed=5)
    negative = context.flip(1)
    return context, negative, ({"clip_fea": clip_fea, "y": y} if cfg.has_image_branch else {})


def _interrupt_at(step):
    seen = []
    return lambda: seen.append(1) or len(seen) >= step


@pytest.mark.parametrize("sampler", ["unipc", "dpm++", "euler"])
@pytest.mark.parametrize("cfg", [T2V, I2V], ids=["t2v", "i2v"])
def test_an_interrupted_render_resumes_bit_identically(tmp_path, caplog, sampler, cfg):
    model = _model(cfg)
    context, negative, image = _conditioning(cfg)
    settings = dict(request=REQUEST, seed=7, steps=STEPS, cfg=5.0, sampler=sampler, **image)
    whole = wan_core.sample(model, context, negative, **settings)
    resume = ResumeFile(tmp_path / "slot.safetensors")
    with pytest.raises(RenderInterrupted, match="after step 3 of 6"):
        wan_core.sample(model, context, negative, **settings, resume=resume, interrupt=_interrupt_at(3))
    assert resume.path.is_file()
    calls = []
    counting = wan_core.RenderContext(runner=lambda blocks, h, *a: calls.append(1) or
                                      wan_core.ResidentRunner()(blocks, h, *a))
    with caplog.at_level(logging.INFO):
        resumed = wan_core.sample(model, context, negative, **settings, resume=resume, render=counting)
    assert "resuming from step 3 of 6" in caplog.text
    assert len(calls) == STEPS - 3  # only the remaining steps ran
    assert torch.equal(resumed, whole)
    assert not resume.path.exists()  # removed when the render finished


@pytest.mark.parametrize("change", [{"seed": 8}, {"cfg": 4.0}, {"shift": 3.0}, {"request": SampleRequest(96, 64, 9)},
                                    {"prompt": True}, {"model": True}])
def test_a_resume_file_of_another_render_is_ignored(tmp_path, caplog, change):
    model, other_model = _model(), _model(seed=3)
    context, negative, _ = _conditioning(T2V)
    settings = dict(request=REQUEST, seed=7, steps=STEPS, cfg=5.0, shift=5.0)
    resume = ResumeFile(tmp_path / "slot.safetensors")
    with pytest.raises(RenderInterrupted):
        wan_core.sample(model, context, negative, **settings, resume=resume, interrupt=_interrupt_at(2))
    prompt = context * 1.01 if change.pop("prompt", False) else context
    use = other_model if change.pop("model", False) else model
    settings.update(change)
    fresh = wan_core.sample(use, prompt, negative, **settings)
    with caplog.at_level(logging.INFO):
        got = wan_core.sample(use, prompt, negative, **settings, resume=resume)
    assert "belongs to another render" in caplog.text and "resuming" not in caplog.text
    assert torch.equal(got, fresh)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_a_damaged_resume_file_is_ignored(tmp_path, caplog, damage):
    model = _model()
    context, negative, _ = _conditioning(T2V)
    settings = dict(request=REQUEST, seed=7, steps=STEPS)
    resume = ResumeFile(tmp_path / "slot.safetensors")
    with pytest.raises(RenderInterrupted):
        wan_core.sample(model, context, negative, **settings, resume=resume, interrupt=_interrupt_at(2))
    data = resume.path.read_bytes()
    resume.path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x10" * 100, "empty": b""}[damage])
    with caplog.at_level(logging.WARNING):
        got = wan_core.sample(model, context, negative, **settings, resume=resume)
    assert "is damaged" in caplog.text
    assert torch.equal(got, wan_core.sample(model, context, negative, **settings))


@pytest.mark.parametrize("sampler", ["unipc", "dpm++"])
def test_stop_after_n_then_continue_equals_one_go(tmp_path, sampler):
    model = _model()
    context, negative, _ = _conditioning(T2V)
    settings = dict(request=REQUEST, seed=7, steps=STEPS, sampler=sampler)
    resume = ResumeFile(tmp_path / "slot.safetensors")
    preview = wan_core.sample(model, context, negative, **settings, resume=resume, stop_after=2)
    assert preview.shape == (1, 16, 3, 8, 10) and resume.path.is_file()
    middle = wan_core.sample(model, context, negative, **settings, resume=resume, stop_after=4)
    assert not torch.equal(middle, preview)  # a later, sharper prediction
    final = wan_core.sample(model, context, negative, **settings, resume=resume)
    assert torch.equal(final, wan_core.sample(model, context, negative, **settings))
    assert not resume.path.exists()
