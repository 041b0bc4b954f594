"""torch.compile of the DiT blocks on CPU: one graph per block (no graph break) and no complex-operator
fallback, with the same output as eager (about 30 s on 2 cores: Inductor builds C++ kernels)."""

from __future__ import annotations

import logging
import warnings

import torch
from tiny import T2V, inputs, random_official_state

import wan_core
from wan_core import RenderContext, ResidentRunner


class _CompiledBlocks(ResidentRunner):
    """Runs compiled twins of the blocks it is given (made once per render; the model keeps its own)."""

    def __init__(self, blocks):
        self.compiled = [torch.compile(block, fullgraph=True) for block in blocks]

    def __call__(self, blocks, h, *args):
        return super().__call__(self.compiled, h, *args)


def test_compiled_blocks_have_no_graph_break_and_match_eager(caplog):
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = wan_core.WanDiT(T2V)
    model.load_state_dict(random_official_state(T2V, seed=8))
    model.eval().requires_grad_(False)
    x, t, context, _, _ = inputs(T2V, batch=2)
    render = RenderContext(runner=_CompiledBlocks(model.blocks))
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        eager = model(x, t, context)
        compiled = model(x, t, context, render=render)
        again = model(x, t * 0.5, context.flip(0), render=render)  # new values, same shapes: no recompilation
    messages = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "complex" in m.lower()], messages
    assert not torch._dynamo.utils.counters["graph_break"], dict(torch._dynamo.utils.counters["graph_break"])
    assert ((compiled - eager).abs().max() / eager.abs().max()).item() <= 1e-5
    with torch.no_grad():
        assert ((again - model(x, t * 0.5, context.flip(0))).abs().max() / again.abs().max()).item() <= 1e-5
    recompiles = torch._dynamo.utils.counters["recompiles"]
    assert not recompiles, dict(recompiles)
