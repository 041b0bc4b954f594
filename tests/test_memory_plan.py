"""The memory planner on the real configs, block streaming (same output as resident, bit for bit, on the
CPU; bytes placed within the budget), CFG one branch at a time and feed-forward chunks against the default."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from tiny import T2V, inputs, random_official_state

import wan_core
from wan_core.models.config import PRESETS
from wan_core.runtime.memory_plan import MemoryPlan, plan_for, plan_memory
from wan_core.runtime.streaming import module_bytes

GIB = 2**30


def _meta_model(name: str, dtype: torch.dtype):
    with torch.device("meta"):
        model = wan_core.WanDiT(PRESETS[name], compute_dtype=torch.bfloat16)
    return model.to(dtype)


@pytest.mark.parametrize("name, dtype, size", [("t2v-1.3B", torch.bfloat16, (832, 480)),
                                               ("t2v-14B", torch.float8_e4m3fn, (1280, 720))])
def test_less_budget_never_keeps_more_resident(name, dtype, size):
    model = _meta_model(name, dtype)
    shape = wan_core.SampleRequest(*size, 81).latent_shape()
    blocks = [module_bytes(b) for b in model.blocks]
    resident, plans = [], {}
    for gib in (80, 24, 16, 12, 8, 6, 4):
        try:
            plan = plan_for(model, shape, cfg=True, device="cuda", budget=gib * GIB, compute_dtype=torch.bfloat16)
        except wan_core.InputError as err:
            plans[gib] = str(err)
            continue
        plans[gib] = plan
        resident.append(sum(blocks[i] for i in plan.resident))
        assert plan.peak <= plan.budget and plan.resident == tuple(range(len(plan.resident)))
        assert plan.describe().startswith("memory plan: ") and f"of {gib:.2f} GiB" in plan.describe()
    assert resident == sorted(resident, reverse=True), resident
    if name == "t2v-1.3B":  # 2.6 GiB of bf16 weights: all resident with room; streaming only at 4-6 GiB
        assert plans[24].streamed == () and not plans[24].cfg_sequential and plans[24].ffn_chunks == 1
    else:  # 14B fp8: 13.3 GiB of weights at 720p: resident at 24 GiB, streamed at 12 (the target), not at 8
        assert plans[24].streamed == () and plans[12].streamed and plans[12].prefetch == 1
        assert plans[12].peak <= 12 * GIB and plans[12].cfg_sequential
        assert isinstance(plans[8], str) and "needs at least" in plans[8] and "fp8" in plans[8]


def test_cannot_fit_error_names_the_minimum():
    """Other weights 1 GiB + activations at batch 1 in chunks 0.25 GiB + staging of two 0.5 GiB blocks
    (the one computing, the one copying ahead) = 2.25 GiB."""
    with pytest.raises(wan_core.InputError, match=r"at least 2\.25 GiB .* budget is 1\.00 GiB"):
        plan_memory(GIB, [GIB // 2] * 4, GIB, lambda batch, chunks: GIB // 2 * batch // (1 if chunks == 1 else 2),
                    cfg=True)


def _model(config=T2V):
    model = wan_core.WanDiT(config)
    model.load_state_dict(random_official_state(config, seed=2))
    return model.eval().requires_grad_(False)


I2V_TINY = replace(T2V, model_type="i2v", in_dim=36, clip_dim=64)
VACE_TINY = replace(T2V, model_type="vace", num_layers=4, vace_layers=(0, 2))


@pytest.mark.parametrize("config, streamed", [(T2V, (0, 1)), (T2V, (1,)), (I2V_TINY, (0, 1)),
                                              (VACE_TINY, (1, 2, 3))], ids=["t2v-all", "t2v-half", "i2v", "vace"])
def test_streamed_forward_is_the_resident_forward_bit_for_bit(config, streamed):
    """Also for the image branch (i2v) and with VACE hints added to streamed blocks."""
    model = _model(config)
    x, t, context, clip_fea, y = inputs(config, batch=2)
    kwargs = {"clip_fea": clip_fea, "y": y} if config.has_image_branch else {}
    if config.vace_layers:
        gen = torch.Generator().manual_seed(5)
        kwargs["vace_context"] = torch.randn(2, config.vace_in_dim, *x.shape[2:], generator=gen)
    plan = MemoryPlan(tuple(i for i in range(config.num_layers) if i not in streamed), streamed, False, 1, 1, 0, 0)
    render = wan_core.RenderContext(plan=plan)
    with torch.no_grad():
        got = model(x, t, context, render=render, **kwargs)
        want = model(x, t, context, **kwargs)
    assert torch.equal(got, want)
    streamer = render.streamer_for(model)
    assert streamer.placed == module_bytes(model) - sum(module_bytes(model.blocks[i]) for i in streamed)
    assert model.blocks[0].__class__.__name__ == "DiTBlock"  # the loaded model is untouched


@pytest.mark.parametrize("case", ["everything", "no keys / values", "streamed"])
def test_bytes_placed_through_the_runner_stay_within_the_budget(case):
    """The streamer counts every byte it puts on the device (resident tensors, blocks in flight); their peak
    is at most the weights the plan counted (other + resident + two streamed blocks), so with the plan's
    activation share the render stays within the budget. Budgets: all of it; all but the text keys / values
    (2 x 8 blocks x 512 tokens x 256 wide x 2 prompts x 4 bytes = 16 MiB, the first thing given up); and 40%
    of the weights less on top of that (blocks stream)."""
    deep = replace(T2V, num_layers=8)
    model = _model(deep)
    request = wan_core.SampleRequest(80, 64, 5)
    shape = request.latent_shape()
    weights = module_bytes(model)
    blocks = [module_bytes(b) for b in model.blocks]
    everything = plan_for(model, shape, cfg=True, device="cpu").peak
    kv = 2 * 8 * 512 * 256 * 2 * 4
    budget = {"everything": everything, "no keys / values": everything - kv,
              "streamed": everything - kv - int(0.4 * weights)}[case]
    plan = plan_for(model, shape, cfg=True, device="cpu", budget=budget)
    assert (plan.keys_values, bool(plan.streamed)) == {"everything": (True, False), "no keys / values": (False, False),
                                                       "streamed": (False, True)}[case]
    render = wan_core.RenderContext(plan=plan)
    context = torch.randn(1, 7, deep.text_dim)
    wan_core.sample(model, context, torch.zeros(1, 5, deep.text_dim), request=request, steps=2, render=render)
    streamer = render.streamer_for(model)
    if plan.streamed:
        planned = weights - sum(blocks[i] for i in plan.streamed) + 2 * max(blocks[i] for i in plan.streamed)
        assert streamer.peak <= planned and streamer.peak < weights
        assert streamer.peak + (plan.peak - planned) <= budget
    else:
        assert streamer is None


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_sequential_cfg_and_ffn_chunks_match_the_default():
    """Each CFG branch's prediction is the batched one's within 1e-6 (a GEMM over 1 or 2 sequences rounds a
    little differently); the guided flow ``uncond + 5 (cond - uncond)`` then within 5 x 2 of that."""
    from wan_core.sampling.loop import cfg_denoiser

    model = _model()
    x, t, _, _, _ = inputs(T2V, batch=1)
    t = t[:1]
    context, negative = torch.randn(1, 7, T2V.text_dim), torch.randn(1, 7, T2V.text_dim)
    chunks = wan_core.RenderContext(plan=MemoryPlan((0, 1), (), False, 4, 0, 0, 0))
    with torch.no_grad():
        both = model(torch.cat([x, x]), t.expand(2), torch.cat([context, negative]))
        for i, text in enumerate((context, negative)):
            assert _rel(model(x, t, text), both[i:i + 1]) <= 1e-6
            assert _rel(model(x, t, text, render=chunks), model(x, t, text)) <= 1e-6
        batched = cfg_denoiser(model, context, negative, 5.0)(x, t)
        sequential = cfg_denoiser(model, context, negative, 5.0, True)(x, t)
    assert _rel(sequential, batched) <= 10e-6
    settings = dict(request=wan_core.SampleRequest(80, 64, 5), steps=3, cfg=5.0, seed=3)
    plan = MemoryPlan((0, 1), (), True, 4, 0, 0, 0)
    render = wan_core.sample(model, context, negative, **settings, render=wan_core.RenderContext(plan=plan))
    assert _rel(render, wan_core.sample(model, context, negative, **settings)) <= 1e-5


def test_cli_budget_writes_the_same_video(tmp_path, caplog):
    import logging

    from safetensors.torch import load_file

    from wan_core.cli import main
    from wan_core.video import read_video

    args = ["t2v", "--demo", "--models", str(tmp_path / "models"), "--prompt", "a fox", "--steps", "3", "--frames",
            "5", "--width", "64", "--height", "48", "--keep-latent", "--resume", "off"]
    assert main([*args, "--out", str(tmp_path / "plain.mp4")]) == 0
    with caplog.at_level(logging.INFO, logger="wan_core.cli"):
        assert main([*args, "--out", str(tmp_path / "budget.mp4"), "--vram-budget", "0.01"]) == 0
    assert "blocks resident" in caplog.text and "streamed" in caplog.text
    plain, budget = (load_file(tmp_path / f"{n}.latent.safetensors")["latent"] for n in ("plain", "budget"))
    assert ((budget - plain).abs().max() / plain.abs().max()).item() <= 1e-5
    frames = [read_video(tmp_path / f"{n}.mp4").images() for n in ("plain", "budget")]
    assert (frames[0] - frames[1]).abs().max() <= 2 / 255  # the same video, to a level of the 8-bit encode
    assert main([*args, "--out", str(tmp_path / "tiny.mp4"), "--vram-budget", "0.001"]) == 2
    assert not (tmp_path / "tiny.mp4").exists()


@pytest.mark.parametrize("streamed", [(0, 1), (1,)])
def test_streamed_text_encoder_is_the_resident_one_bit_for_bit(tmp_path, streamed):
    from wan_core.demo import write_demo_models

    encoder = wan_core.load_text_encoder(write_demo_models(tmp_path)["text_encoders"])
    prompts = ["a red fox trotting through snow", "blurry, static"]
    plan = MemoryPlan(tuple(i for i in range(2) if i not in streamed), streamed, False, 1, 1, 0, 0)
    want = encoder.encode(prompts)
    got = encoder.encode(prompts, plan=plan, device="cpu")
    assert torch.equal(got, want)
    assert all(type(b).__name__ == "Block" for b in encoder.model.encoder.block)  # the loaded encoder is untouched


def test_text_encoder_plan_for_the_real_umt5_xxl():
    """UMT5-XXL in fp16 (11.4 GB with its 2.1 GB token table): whole on a 24 GiB budget; on 8 GiB its layers
    stream and the table stays in host memory; on 0.5 GiB not even two streamed layers fit."""
    from wan_core.models.text_encoder import UMT5_XXL, UMT5Encoder
    from wan_core.runtime.memory_plan import plan_text_encoder

    with torch.device("meta"):
        model = UMT5Encoder(UMT5_XXL).to(torch.float16)
    whole = plan_text_encoder(model, "cuda", 24 * GIB)
    assert whole.streamed == () and whole.peak > module_bytes(model)
    tight = plan_text_encoder(model, "cuda", 8 * GIB)
    layers = [module_bytes(b) for b in model.encoder.block]
    assert tight.streamed and tight.peak <= 8 * GIB and len(tight.resident) + len(tight.streamed) == 24
    assert tight.peak < module_bytes(model) - module_bytes(model.shared) + 2 * max(layers)
    with pytest.raises(wan_core.InputError, match="text encoder as fp8_e4m3fn"):
        plan_text_encoder(model, "cuda", GIB // 2)


class _OutOfMemoryOnce:
    """A runner whose first block loop fails as a CUDA allocation would (torch.OutOfMemoryError)."""

    def __init__(self):
        self.failed = 0

    def __call__(self, blocks, h, *args):
        if not self.failed:
            self.failed += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        for block in blocks:
            h = block(h, *args)
        return h


def test_out_of_memory_remakes_the_plan_once_and_retries_the_step(caplog):
    deep = replace(T2V, num_layers=8)
    model = _model(deep)
    request = wan_core.SampleRequest(80, 64, 5)
    shape = request.latent_shape()
    context, negative = torch.randn(1, 7, deep.text_dim), torch.randn(1, 5, deep.text_dim)
    settings = dict(request=request, steps=2, cfg=5.0, seed=4)
    want = wan_core.sample(model, context, negative, **settings)
    plan = plan_for(model, shape, cfg=True, device="cpu", budget=module_bytes(model) * 4)
    budgets = []

    def replan(budget):
        budgets.append(budget)
        return plan_for(model, shape, cfg=True, device="cpu", budget=budget)

    render = wan_core.RenderContext(plan=plan, replan=replan, runner=_OutOfMemoryOnce())
    got = wan_core.sample(model, context, negative, **settings, render=render)
    assert budgets == [plan.peak * 3 // 4] and render.plan.peak <= budgets[0] and not render.plan.keys_values
    assert "out of device memory" in caplog.text
    assert _rel(got, want) <= 1e-5  # keys / values made per call, perhaps streamed: 1e-6-level rounding
    again = wan_core.RenderContext(plan=plan, runner=_OutOfMemoryOnce())  # nothing to remake: the error stands
    with pytest.raises(torch.OutOfMemoryError):
        wan_core.sample(model, context, negative, **settings, render=again)


@pytest.mark.parametrize("config", [T2V, replace(T2V, model_type="i2v", in_dim=36, clip_dim=64)],
                         ids=["t2v", "i2v"])
def test_row_slices_give_the_same_bits(monkeypatch, config):
    """Norms, modulation and rotary run a slice of tokens at a time on long sequences (their fp32 copies
    would be 1.44 GiB each at 720p on the 14B model); on a short one forced into 7-token slices the
    forward is bit-identical to the whole-tensor one."""
    from wan_core.models import layers

    model = _model(config)
    x, t, context, clip_fea, y = inputs(config, batch=2)
    kwargs = {"clip_fea": clip_fea, "y": y} if config.model_type == "i2v" else {}
    with torch.no_grad():
        want = model(x, t, context, **kwargs)
        monkeypatch.setattr(layers, "TOKEN_CHUNK", 7)
        got = model(x, t, context, **kwargs)
    assert model.config.tokens(x.shape) > 7 and torch.equal(got, want)


def _fused_attention(q, k, v):
    """What a fused attention kernel allocates (flash / memory-efficient): the output and a per-row log-sum-exp.
    The math SDPA that runs on ``meta`` would materialize the [L, L] scores, which no GPU kernel we use does."""
    b, length, heads, d = q.shape
    torch.empty(b, heads, length, device=q.device)
    return q.new_empty(b, length, heads * d)


@pytest.mark.parametrize("name, dtype, size, batch, chunks, fp8_matmul", [
    *[("t2v-14B", torch.float8_e4m3fn, (1280, 720), 1, chunks, fp8) for fp8 in (False, True) for chunks in (1, 16)],
    ("t2v-1.3B", torch.bfloat16, (832, 480), 2, 1, False), ("t2v-1.3B", torch.bfloat16, (832, 480), 1, 4, False)])
def test_the_activation_estimate_covers_the_forward_it_plans(name, dtype, size, batch, chunks, fp8_matmul):
    """The estimate the planner uses is checked against the tensors our forward really holds at once: the real
    configs at real sizes run on ``meta`` with every live storage counted (tests/live_bytes.py). It must cover
    the measured peak (a plan that undercounts runs out of memory) without wasting more than a quarter; fp8
    matrix products (their quantized inputs instead of the cast weights) fit the same estimate."""
    from live_bytes import LiveBytes

    from wan_core.runtime.attention import _BACKENDS, AttentionBackend
    from wan_core.runtime.memory import dit_activation_bytes

    _BACKENDS.setdefault("fused_probe", AttentionBackend("fused_probe", _fused_attention))
    with torch.device("meta"):
        model = wan_core.WanDiT(PRESETS[name], compute_dtype=torch.bfloat16).to(dtype)
        shape = (batch, *wan_core.SampleRequest(*size, 81).latent_shape()[1:])
        x, t, context = torch.randn(shape), torch.full((batch,), 500.0), torch.randn(batch, 512, 4096)
    model.rope_cos, model.rope_sin = model.rope_cos.to("meta"), model.rope_sin.to("meta")
    render = wan_core.RenderContext(attention="fused_probe", plan=MemoryPlan((), (), False, chunks, 0, 0, 0, False),
                                    fp8_matmul=fp8_matmul)
    held = [*model.parameters(), *model.buffers(), x, t, context]
    with torch.no_grad(), torch.device("meta"), LiveBytes(held) as live:
        model(x, t, context, render=render)
    cfg = model.config
    estimate = dit_activation_bytes(cfg.dim, cfg.ffn_dim, cfg.tokens(shape), batch, torch.bfloat16, chunks)
    print(f"{name} {size} x{batch}, {chunks} chunks, fp8 products {fp8_matmul}: live {live.peak / GIB:.2f} GiB, "
          f"estimate {estimate / GIB:.2f}")
    assert live.peak <= estimate <= 1.25 * live.peak, (live.peak / GIB, estimate / GIB)


def test_a_failed_render_drops_its_device_copies_at_once():
    """The error's traceback still holds the render context; its placed view and kept keys / values are gone."""
    model = _model()
    plan = MemoryPlan((0,), (1,), False, 1, 1, 0, 0)

    class Failing:
        def __call__(self, blocks, h, *args):
            raise RuntimeError("a kernel failed")

    render = wan_core.RenderContext(plan=plan, runner=Failing())
    with pytest.raises(RuntimeError, match="a kernel failed"):
        wan_core.sample(model, torch.randn(1, 7, T2V.text_dim), None, request=wan_core.SampleRequest(64, 48, 5),
                        steps=2, cfg=1.0, render=render)
    assert render.streamer_for(model) is None and not render._reused


def test_the_first_streamed_block_copies_while_the_last_resident_one_computes(monkeypatch):
    from wan_core.models.dit import DiTBlock
    from wan_core.runtime.streaming import BlockStreamer

    model = _model()
    x, t, context, _, _ = inputs(T2V, batch=1)
    events = []
    start, forward = BlockStreamer.start, DiTBlock.forward
    monkeypatch.setattr(BlockStreamer, "start", lambda self, i: events.append(("copy", i)) or start(self, i))
    monkeypatch.setattr(DiTBlock, "forward", lambda self, *a: events.append(("run", self.index)) or forward(self, *a))
    plan = MemoryPlan((0,), (1,), False, 1, 1, 0, 0)
    with torch.no_grad():
        model(x, t, context, render=wan_core.RenderContext(plan=plan, precompute_keys_values=False))
    # streamed block 1 is the streamer's block 0: its copy starts before resident block 0 computes
    assert events[:2] == [("copy", 0), ("run", 0)] and events[-1] == ("run", 1)


@pytest.mark.parametrize("kind", ["first_block", "mag", "tea"])
def test_step_caches_over_streamed_blocks_render_the_same(kind):
    """A cache decides from what the blocks compute; streaming changes where their weights are, not a bit."""
    deep = replace(T2V, num_layers=4)
    model = _model(deep)
    context, negative = torch.randn(1, 7, deep.text_dim), torch.randn(1, 5, deep.text_dim)
    settings = dict(request=wan_core.SampleRequest(80, 64, 5), steps=6, cfg=5.0, seed=6)
    cache = wan_core.StepCacheSettings(kind, {"first_block": 2.0, "mag": 0.5, "tea": 0.3}[kind], 0.2, 2)
    plans = [None, MemoryPlan((0,), (1, 2, 3), False, 1, 1, 0, 0)]
    runners = [cache.runner(6, 2, "t2v", deep.dim, 80 * 64) for _ in plans]
    renders = [wan_core.sample(model, context, negative, **settings,
                               render=wan_core.RenderContext(plan=plan, runner=runner))
               for plan, runner in zip(plans, runners)]
    assert torch.equal(renders[0], renders[1]) and runners[0].decisions == runners[1].decisions
    assert any(not all(d) for d in runners[1].decisions)  # some branch of some step was reused, not computed
