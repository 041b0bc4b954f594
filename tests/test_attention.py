"""Attention backends: sdpa everywhere; flash / sage on CUDA when installed, else sdpa with one log line saying
why; auto picks the fastest that can run. CUDA parity runs where a GPU and the packages are present."""

from __future__ import annotations

import importlib.util
import logging

import pytest
import torch
from tiny import T2V, inputs, random_official_state

import wan_core
from wan_core import RenderContext
from wan_core.runtime import attention


def _model():
    model = wan_core.WanDiT(T2V)
    model.load_state_dict(random_official_state(T2V, seed=9))
    return model.eval().requires_grad_(False)


def test_the_choices_are_listed():
    assert wan_core.attention_backends() == ["sdpa", "flash", "sage", "auto"]


@pytest.mark.parametrize("name", ["flash", "sage", "auto"])
def test_a_backend_that_cannot_run_here_falls_back_to_sdpa_with_one_log_line(name, caplog, monkeypatch):
    if torch.cuda.is_available() and importlib.util.find_spec({"flash": "flash_attn", "sage": "sageattention",
                                                               "auto": "flash_attn"}[name]):
        pytest.skip(f"{name} can run on this machine")
    monkeypatch.setattr(attention, "_WARNED", set())
    model = _model()
    x, t, context, _, _ = inputs(T2V)
    with torch.no_grad(), caplog.at_level(logging.WARNING):
        want = model(x, t, context)
        got = model(x, t, context, render=RenderContext(attention=name))
        model(x, t, context, render=RenderContext(attention=name))
    assert torch.equal(got, want)
    lines = [r.getMessage() for r in caplog.records if "cannot run here" in r.getMessage()]
    if name == "auto":
        assert lines == []  # auto quietly takes the best that runs
    else:
        assert len(lines) == 1 and "using sdpa" in lines[0]
        assert "is not installed" in lines[0] or "needs a CUDA GPU" in lines[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: flash / sage parity not run")
@pytest.mark.parametrize(("name", "module", "tolerance"),
                         [("flash", "flash_attn", 0.02), ("sage", "sageattention", 0.05)])
def test_cuda_backends_match_sdpa(name, module, tolerance):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed: {name} parity not run")
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 300, 4, 128, generator=gen).cuda().bfloat16() for _ in range(3))
    want = attention.sdpa_attention(q.float(), k.float(), v.float())
    got = attention.get_attention(name).attend(q, k, v).float()
    assert ((got - want).norm() / want.norm()).item() <= tolerance
