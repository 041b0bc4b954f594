"""The Wan2.2 expert pair: a render through ExpertPair against the official loop's expert switching (same tiny
weights, solver and boundary), the community's two-sampler wiring against the pair render, and starting a sampler
part-way from a LATENT."""

from __future__ import annotations

import sys

import pytest
import torch
from safetensors.torch import save_file
from test_dit_parity import _official_reference
from tiny import T2V
from wan_reference import wan_module

import wan_core
from wan_core import ExpertPair, SampleRequest

SEED, SHIFT, STEPS, BOUNDARY, CFG_HIGH, CFG_LOW = 42, 12.0, 8, 0.875, 4.0, 3.0
FRAMES, HEIGHT, WIDTH = 5, 64, 80
REQUEST = SampleRequest(WIDTH, HEIGHT, FRAMES)


def _official_pair_loop(high, low, context, negative):
    """The official A14B loop (``wan/text2video.py``): one UniPC scheduler; a timestep >= boundary x 1000 runs the
    high-noise model with its guidance (the config's (low, high) pair), every other step the low-noise one."""
    mod = wan_module("utils.fm_solvers_unipc")
    scheduler = mod.FlowUniPCMultistepScheduler(num_train_timesteps=1000, shift=1, use_dynamic_shifting=False)
    scheduler.set_timesteps(STEPS, shift=SHIFT)
    boundary = BOUNDARY * 1000
    generator = torch.Generator("cpu").manual_seed(SEED)
    latents = torch.randn(16, (FRAMES - 1) // 4 + 1, HEIGHT // 8, WIDTH // 8, dtype=torch.float32, generator=generator)
    seq_len = latents.shape[1] * latents.shape[2] * latents.shape[3] // 4
    used = []
    with torch.no_grad():
        for t in scheduler.timesteps:
            model, scale = (high, CFG_HIGH) if t.item() >= boundary else (low, CFG_LOW)
            used.append("high" if model is high else "low")
            timestep = torch.stack([t])
            cond = model([latents], t=timestep, context=[context], seq_len=seq_len)[0]
            uncond = model([latents], t=timestep, context=[negative], seq_len=seq_len)[0]
            pred = uncond + scale * (cond - uncond)
            latents = scheduler.step(pred.unsqueeze(0), t, latents.unsqueeze(0), return_dict=False)[0].squeeze(0)
    return latents, used


@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("experts")
    refs, ours = [], []
    for name, seed in (("high", 31), ("low", 32)):
        ref = _official_reference(T2V, seed=seed)
        save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, folder / f"{name}.safetensors")
        refs.append(ref)
        ours.append(wan_core.load_dit(folder / f"{name}.safetensors"))
    return refs, ours


def _prompts():
    gen = torch.Generator().manual_seed(5)
    return torch.randn(1, 6, T2V.text_dim, generator=gen), torch.randn(1, 9, T2V.text_dim, generator=gen)


class _Spy:
    """Wraps a DiT, recording which one runs each call."""

    def __init__(self, model, name, log):
        self.model, self.name, self.log = model, name, log
        self.config = model.config

    def __call__(self, *args, **kwargs):
        self.log.append(self.name)
        return self.model(*args, **kwargs)

    def check_conditioning(self, *args, **kwargs):
        return self.model.check_conditioning(*args, **kwargs)


def test_a_pair_render_equals_the_official_expert_switching(experts):
    (ref_high, ref_low), (high, low) = experts
    context, negative = _prompts()
    expected, official_used = _official_pair_loop(ref_high, ref_low, context[0], negative[0])
    calls = []
    pair = ExpertPair(_Spy(high, "high", calls), _Spy(low, "low", calls), BOUNDARY, CFG_HIGH, CFG_LOW)
    raw = wan_core.sample(pair, context, negative, request=REQUEST, seed=SEED, steps=STEPS, shift=SHIFT, cfg=9.0)
    assert calls == official_used  # CFG batched: one call per step
    assert 0 < official_used.count("high") < STEPS  # the switch happens inside the render
    got = wan_core.normalize_latents(raw)[0]
    assert ((got - expected).abs().max() / expected.abs().max()).item() <= 1e-5


@pytest.mark.parametrize("sampler", ["unipc", "dpm++", "euler"])
def test_two_samplers_wired_by_hand_equal_the_pair_render(experts, sampler):
    """The high-noise sampler stopped at the switch hands its solver state to the low-noise sampler started there:
    bit for bit the pair render."""
    _, (high, low) = experts
    context, negative = _prompts()
    pair = ExpertPair(high, low, BOUNDARY, CFG_HIGH, CFG_LOW)
    common = dict(request=REQUEST, seed=SEED, steps=STEPS, shift=SHIFT, sampler=sampler)
    whole = wan_core.sample(pair, context, negative, **common)
    switch = pair.switch_step(wan_core.sampling.loop.build_schedule(sampler, STEPS, SHIFT, 1.0).timesteps)
    kept = []
    first = wan_core.sample(high, context, negative, cfg=CFG_HIGH, stop_after=switch, on_stop=kept.append, **common)
    assert kept[0].step == switch and first.shape == whole.shape
    second = wan_core.sample(low, context, negative, cfg=CFG_LOW, start_step=switch, start_state=kept[0],
                             latent=first, **common)
    assert torch.equal(second, whole)


def test_a_sampler_starts_from_a_plain_noisy_latent(experts):
    """Without a solver state (a LATENT with leftover noise from elsewhere), the LATENT is the noisy latent at that
    step and the solver starts afresh: for euler, which keeps no history, that is the same render (up to the
    rounding of the LATENT's RAW scaling)."""
    _, (high, low) = experts
    context, negative = _prompts()
    common = dict(request=REQUEST, seed=SEED, steps=STEPS, shift=SHIFT, sampler="euler", cfg=CFG_LOW)
    whole = wan_core.sample(high, context, negative, **common)
    kept = []
    wan_core.sample(high, context, negative, stop_after=3, on_stop=kept.append, **common)
    noisy = wan_core.denormalize_latents(kept[0].x)
    got = wan_core.sample(high, context, negative, start_step=3, latent=noisy, **common)
    assert ((got - whole).abs().max() / whole.abs().max()).item() <= 1e-5  # the RAW round trip, 5 steps on
    with pytest.raises(wan_core.InputError, match="set start_step to 3"):
        wan_core.sample(high, context, negative, start_step=4, start_state=kept[0], latent=noisy, **common)
    with pytest.raises(wan_core.InputError, match="needs a LATENT"):
        wan_core.sample(high, context, negative, start_step=3, **common)


def test_a_pair_checks_its_experts_and_settings(experts):
    _, (high, _) = experts
    other = wan_core.WanDiT(wan_core.DiTConfig("t2v", dim=256, ffn_dim=256, num_layers=2, text_dim=T2V.text_dim))
    with pytest.raises(wan_core.InputError, match="one architecture"):
        ExpertPair(high, other, 0.875)
    with pytest.raises(wan_core.InputError, match="between 0 and 1"):
        ExpertPair(high, high, 1.5)
    pair = ExpertPair.with_defaults(high, high)
    assert (pair.boundary, pair.cfg_high, pair.cfg_low) == (0.875, 4.0, 3.0)


@pytest.fixture()
def pack_models(tmp_path, monkeypatch):
    """The demo text encoder and two demo-size t2v experts in a models folder the nodes read."""
    from tiny import random_official_state

    from wan_core.demo import DIT, write_demo_models

    models = tmp_path / "models"
    demo = write_demo_models(models)
    for name, seed in (("high.safetensors", 1), ("low.safetensors", 2)):
        save_file(random_official_state(DIT, seed=seed), models / "diffusion_models" / name)
    monkeypatch.setenv("WANCORE_MODELS", str(models))
    monkeypatch.setenv("WANCORE_OUTPUT", str(tmp_path / "output"))
    return demo


def test_through_the_nodes_two_samplers_equal_the_expert_pair_node(pack_models):
    """The community wiring (a high-noise sampler stopped at the switch feeding a low-noise sampler started there)
    and one sampler on the Wan Expert Pair node: the same LATENT, bit for bit; a LoRA loader on a pair is refused."""
    from workflow_runner import load_pack

    pack = load_pack()
    nodes = pack.NODE_CLASS_MAPPINGS
    load = nodes["WanCoreModelLoader"]().load
    high, low = load("high.safetensors", "default")[0], load("low.safetensors", "default")[0]
    encoder = nodes["WanCoreTextEncoderLoader"]().load(pack_models["text_encoders"].name, "default")[0]
    embeds = nodes["WanCoreTextEncode"]().encode(encoder, "a fox", "blurry")[0]
    pair = nodes["WanCoreExpertPair"]().join(high, low, 0.0, 4.0, 3.0)[0]
    sampler = nodes["WanCoreSampler"]()
    size = dict(width=64, height=48, frames=5, seed=7, steps=6, shift=12.0, sampler="unipc", denoise=1.0, resume="off")
    whole = sampler.run(pair, embeds, cfg=5.0, **size)[0]
    from wan_core.sampling.loop import build_schedule

    switch = pair.switch_step(build_schedule("unipc", 6, 12.0, 1.0).timesteps)
    first = sampler.run(high, embeds, cfg=4.0, stop_after=switch, **size)[0]
    assert "wancore_solver_state" in first
    second = sampler.run(low, embeds, cfg=3.0, latent=first, start_step=switch, **size)[0]
    assert torch.equal(second["samples"], whole["samples"])
    with pytest.raises(pack.wan_core.InputError, match="each expert"):
        nodes["WanCoreLoraLoader"]().load(pair, pack_models["lora"].name, 1.0)


def test_a_pair_render_places_one_expert_at_a_time(experts, monkeypatch):
    """Through the render job: the high-noise expert is placed for its steps, released at the switch (inside
    ComfyUI: its model manager unloads it) and the pages of its mapped file given back, then the low-noise expert
    is placed by its own memory plan."""
    import contextlib

    import wan_core.job

    _, (high, low) = experts
    events = []
    monkeypatch.setattr(wan_core.job, "release_file_pages",
                        lambda model: events.append(("pages", "high" if model is high else "low")))

    class Recording(wan_core.StandaloneHost):
        def hold(self, model, extra_bytes=0):
            @contextlib.contextmanager
            def held():
                events.append(("hold", "high" if model is high else "low"))
                with super(Recording, self).hold(model, extra_bytes) as device:
                    yield device
            return held()

        def release(self, model):
            events.append(("release", "high" if model is high else "low"))
            super().release(model)

        def report(self, line):
            if line.startswith("memory plan"):
                events.append(("plan",))

    context, negative = _prompts()
    settings = wan_core.RenderSettings(steps=STEPS, shift=SHIFT, seed=SEED, resume="off")
    job = wan_core.RenderJob(ExpertPair(high, low, BOUNDARY, CFG_HIGH, CFG_LOW),
                             wan_core.TextEmbeds(context, negative), settings, REQUEST)
    raw = job.run(Recording("cpu"))
    assert events == [("plan",), ("hold", "high"), ("release", "high"), ("pages", "high"), ("plan",), ("hold", "low")]
    expected = wan_core.sample(ExpertPair(high, low, BOUNDARY, CFG_HIGH, CFG_LOW), context, negative,
                               request=REQUEST, seed=SEED, steps=STEPS, shift=SHIFT)
    assert torch.equal(raw, expected)


@pytest.mark.parametrize("task", ["t2v", "i2v"])
def test_the_cli_renders_a_pair_and_replays_it(pack_models, tmp_path, task):
    """``--dit`` / ``--dit-low`` (and a folder with high_noise_model/ and low_noise_model/) render the pair; the
    manifest names both experts and the pair's settings, and replay gives them back."""
    from tiny import random_official_state

    from wan_core.cli import main
    from wan_core.demo import DIT
    from wan_core.replay import replay_argv
    from wan_core.video import write_video

    models = tmp_path / "models"
    folder = models / "diffusion_models" / "pair"
    config = DIT if task == "t2v" else wan_core.DiTConfig("i2v", dim=DIT.dim, ffn_dim=DIT.ffn_dim, num_layers=4,
                                                          text_dim=DIT.text_dim, in_dim=36, clip_dim=0)
    for name, seed in (("high_noise_model", 3), ("low_noise_model", 4)):
        (folder / name).mkdir(parents=True)
        save_file(random_official_state(config, seed=seed), folder / name / "diffusion_pytorch_model.safetensors")
    args = [task, "--models", str(models), "--text-encoder", pack_models["text_encoders"].name, "--vae",
            pack_models["vae"].name, "--prompt", "a fox", "--width", "64", "--height", "48", "--frames", "5",
            "--steps", "4", "--boundary", "0.9", "--cfg-high", "2.0"]
    if task == "i2v":
        image = write_video(torch.rand(1, 48, 64, 3), tmp_path / "start", fmt="png") / "frame_00000.png"
        args += ["--image", str(image)]
    out = tmp_path / f"{task}.mp4"
    assert main([*args, "--dit", "pair", "--out", str(out)]) == 0
    manifest = wan_core.read_manifest(out)
    assert manifest["models"]["dit_low"]["path"].endswith("low_noise_model/diffusion_pytorch_model.safetensors")
    assert manifest["expert_pair"] == {"boundary": 0.9, "cfg_high": 2.0, "cfg_low": None}
    argv = replay_argv(out, models, tmp_path / "again.mp4", None)
    assert "--dit-low" in argv and argv[argv.index("--boundary") + 1] == "0.9"
    assert main(argv) == 0


def test_wan22_models_take_only_the_first_block_cache(experts):
    """No MagCache / TeaCache tables are published for Wan2.2: a pair (or the 5B) refuses them before any work and
    renders with the first-block cache."""
    _, (high, low) = experts
    context, negative = _prompts()
    pair = ExpertPair(high, low, BOUNDARY, CFG_HIGH, CFG_LOW)
    for kind in ("mag", "tea"):
        settings = wan_core.RenderSettings(steps=STEPS, shift=SHIFT, resume="off",
                                           cache=wan_core.StepCacheSettings(kind))
        with pytest.raises(wan_core.InputError, match="first_block"):
            wan_core.RenderJob(pair, wan_core.TextEmbeds(context, negative), settings, REQUEST).run(
                wan_core.StandaloneHost("cpu"))
    settings = wan_core.RenderSettings(steps=STEPS, shift=SHIFT, resume="off",
                                       cache=wan_core.StepCacheSettings("first_block"))
    raw = wan_core.RenderJob(pair, wan_core.TextEmbeds(context, negative), settings, REQUEST).run(
        wan_core.StandaloneHost("cpu"))
    assert torch.isfinite(raw).all()


def test_the_standalone_host_gives_a_moved_model_its_own_tensors_back(tmp_path):
    """After a stage on another device a network gets back the very tensors it had (a memory-mapped file stays
    mapped), not a copy: an expert that leaves the GPU at the switch leaves no copy of itself in system memory."""
    from tiny import random_official_state

    save_file(random_official_state(T2V, seed=3), tmp_path / "dit.safetensors")
    model = wan_core.load_dit(tmp_path / "dit.safetensors")
    before = {name: t.data_ptr() for name, t in model.state_dict(keep_vars=True).items()}
    values = {name: t.clone() for name, t in model.state_dict().items()}
    with wan_core.StandaloneHost("meta").on_device(model) as device:
        assert device.type == "meta" and next(model.parameters()).device.type == "meta"
    assert {name: t.data_ptr() for name, t in model.state_dict(keep_vars=True).items()} == before
    assert all(torch.equal(t, values[name]) for name, t in model.state_dict().items())


def _resident_file_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssFile:"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MADV_PAGEOUT and /proc are Linux's")
def test_released_mapped_weights_leave_resident_memory_and_read_back_unchanged(tmp_path):
    """The first expert's pages are given back at the switch: after :func:`release_file_pages` the clean pages of
    a module's mapped file are no longer resident (a 64 MiB file: RssFile falls by most of it), the weights read
    back equal, a weight the process wrote (copy-on-write) keeps what was written, and a module of ordinary
    tensors has nothing to give back."""
    from wan_core.loading.safetensors_io import load_mmap
    from wan_core.runtime.file_pages import release_file_pages

    gen = torch.Generator().manual_seed(0)
    values = {f"w{i}": torch.randn(1024, 2048, generator=gen) for i in range(8)}  # 8 x 8 MiB
    save_file(values, tmp_path / "big.safetensors")
    module = torch.nn.Module()
    for name, tensor in load_mmap(tmp_path / "big.safetensors").items():
        module.register_parameter(name, torch.nn.Parameter(tensor, requires_grad=False))
    module.w0.data[0, 0] = 7.0  # a written page: private to this process now
    assert sum(float(p.sum()) for p in module.parameters())  # every page read: resident
    before = _resident_file_bytes()
    assert release_file_pages(module) >= 64 * 2**20
    assert before - _resident_file_bytes() > 48 * 2**20
    assert module.w0[0, 0] == 7.0
    assert torch.equal(module.w0[1:], values["w0"][1:])
    assert all(torch.equal(getattr(module, name), values[name]) for name in values if name != "w0")
    assert release_file_pages(torch.nn.Linear(256, 256)) == 0


def test_a_pair_killed_in_the_low_noise_stretch_resumes_without_the_high_noise_one(experts, tmp_path, monkeypatch):
    """The high-noise stretch keeps its state at the hand-over: a render killed after step 7 of 8 (in the low-noise
    stretch, which starts at step 7 at shift 12) and run again computes only the low-noise expert's last step,
    equals the uninterrupted render bit for bit, and leaves no resume file behind."""
    from test_resume import _interrupt_at

    _, (high, low) = experts
    calls = []
    for name, model in (("high", high), ("low", low)):
        forward = model.forward
        monkeypatch.setattr(model, "forward", lambda *a, _f=forward, _n=name, **k: calls.append(_n) or _f(*a, **k))
    context, negative = _prompts()
    settings = wan_core.RenderSettings(steps=STEPS, shift=SHIFT, seed=SEED)
    pair = ExpertPair(high, low, BOUNDARY, CFG_HIGH, CFG_LOW)

    def run(folder, interrupt=None):
        job = wan_core.RenderJob(pair, wan_core.TextEmbeds(context, negative), settings, REQUEST)
        return job.run(wan_core.StandaloneHost("cpu", resume_folder=folder, interrupt=interrupt))

    whole = run(tmp_path / "a")
    switch = calls.count("high")
    assert switch == 6 and not list((tmp_path / "a").iterdir())  # CFG batched: one call a step
    calls.clear()
    with pytest.raises(wan_core.RenderInterrupted, match="after step 7 of 8"):
        run(tmp_path / "b", _interrupt_at(6))  # asked once a step, not at the hand-over (step 6)
    assert len(list((tmp_path / "b").iterdir())) == 2  # the hand-over state and the low-noise stretch's step 7
    calls.clear()
    assert torch.equal(run(tmp_path / "b"), whole)
    assert calls == ["low"] and not list((tmp_path / "b").iterdir())
