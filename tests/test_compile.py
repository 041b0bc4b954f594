"""torch.compile of the DiT blocks on CPU (the CompiledRunner behind the sampler's compile option): one graph
per block (no graph break) and no complex-operator fallback, the same output as eager, and no
recompilation for a render with another seed and prompt (about 30 s on 2 cores: Inductor builds C++)."""

from __future__ import annotations

import logging
import warnings
from dataclasses import replace

import torch
from tiny import T2V, inputs, random_official_state

import wan_core
from wan_core import CompiledRunner, RenderContext

DEEP = replace(T2V, num_layers=12)  # more blocks than torch's recompile limit (8)


def test_compiled_blocks_have_no_graph_break_and_match_eager(caplog):
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = wan_core.WanDiT(DEEP)
    model.load_state_dict(random_official_state(DEEP, seed=8))
    model.eval().requires_grad_(False)
    x, t, context, _, _ = inputs(DEEP, batch=2)
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        eager = model(x, t, context)
        compiled = model(x, t, context, render=RenderContext(runner=CompiledRunner()))
    messages = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "complex" in m.lower()], messages
    assert not torch._dynamo.utils.counters["graph_break"], dict(torch._dynamo.utils.counters["graph_break"])
    assert ((compiled - eager).abs().max() / eager.abs().max()).item() <= 1e-5

    request = wan_core.SampleRequest(80, 64, 5)  # the latent size the forwards above used
    first = wan_core.sample(model, context[:1], context[1:], request=request, seed=1, steps=2,
                            render=RenderContext(runner=CompiledRunner()))
    compiles = dict(torch._dynamo.utils.counters["stats"])
    # the 12 blocks share their graphs (a few variants: with the render's precomputed keys / values or
    # without, per input shape); a graph per block would recompile past torch's limit and fail
    assert compiles.get("unique_graphs", 0) <= 4, compiles
    second = wan_core.sample(model, context[1:], context[:1], request=request, seed=2, steps=3,
                             render=RenderContext(runner=CompiledRunner()))  # new render, seed, prompt, steps
    assert dict(torch._dynamo.utils.counters["stats"]).get("unique_graphs") == compiles.get("unique_graphs")
    assert not torch._dynamo.utils.counters["recompiles"], dict(torch._dynamo.utils.counters["recompiles"])
    assert torch.isfinite(first).all() and torch.isfinite(second).all()
