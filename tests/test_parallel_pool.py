"""The worker pool of parallel renders from one process (ComfyUI's way; here the standalone host, CPU, gloo): a
render through the sampler node with workers equals the single-process render, the pool is reused and shut down
without leftovers, an interrupt stops every rank, a killed or failing worker is a clear error within the timeout
and the next render starts a new pool."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch
from workflow_runner import load_pack

import wan_core
from wan_core import ParallelSettings, PoolSpec, RenderJob, RenderSettings, SampleRequest, StandaloneHost
from wan_core.demo import DEMO_FILES, DEMO_IMAGE_FILES, write_demo_models
from wan_core.pool import workers as pool_module

SIZE = dict(width=64, height=48, frames=5)
CHOICES = dict(seed=3, steps=3, cfg=4.0, shift=3.0, sampler="unipc", denoise=1.0, resume="off")
TIMEOUT = 60.0


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "demo"
    return folder, write_demo_models(folder)


@pytest.fixture
def pack(demo, monkeypatch, tmp_path):
    monkeypatch.setenv("WANCORE_MODELS", str(demo[0]))
    monkeypatch.setenv("WANCORE_OUTPUT", str(tmp_path / "output"))
    nodes = load_pack()
    yield nodes
    nodes.wan_core.shutdown_pool()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_render_through_the_sampler_node_with_workers_equals_the_single_process_render(pack):
    """ulysses=2 twice (another seed, the same workers), then cfg=2 (other degrees: a new pool); the shutdown that
    ComfyUI's /free runs leaves no process behind."""
    nodes = pack.NODE_CLASS_MAPPINGS
    model = nodes["WanCoreModelLoader"]().load(DEMO_FILES["diffusion_models"], "default")[0]
    model = nodes["WanCoreLoraLoader"]().load(model, DEMO_IMAGE_FILES["lora"][1], 0.8)[0]
    encoder = nodes["WanCoreTextEncoderLoader"]().load(DEMO_FILES["text_encoders"], "default")[0]
    embeds = nodes["WanCoreTextEncode"]().encode(encoder, "a fox", "")[0]
    sampler = nodes["WanCoreSampler"]()

    def render(parallel=None, **change):
        return sampler.run(model, embeds, **SIZE, **{**CHOICES, **change}, parallel=parallel)[0]["samples"]

    seen = []
    for ulysses, cfg, seed in ((2, 1, 3), (2, 1, 4), (1, 2, 3)):
        spec = nodes["WanCoreParallel"]().settings(ulysses, cfg, "cpu", int(TIMEOUT))[0]
        assert spec.devices == ("cpu", "cpu")
        split, one = render(spec, seed=seed), render(seed=seed)
        assert ((split - one).abs().max() / one.abs().max()).item() <= 1e-5, (ulysses, cfg)
        seen.append(pack.wan_core.pool.current_pool().pids)
    assert seen[0] == seen[1] != seen[2]  # the same degrees: the same workers; others: new ones
    processes = pack.wan_core.pool.current_pool().processes
    pack.wan_core.shutdown_pool()
    assert all(p.poll() is not None for p in processes) and all(_gone(pid) for pid in seen[0] + seen[2])
    assert pack.wan_core.pool.current_pool() is None


def _job(paths, seed: int = 3) -> RenderJob:
    model = wan_core.load_dit(paths["diffusion_models"])
    encoder = wan_core.load_text_encoder(paths["text_encoders"])
    embeds = wan_core.encode_prompts(encoder, "a fox", "blurry")
    settings = RenderSettings(**{**CHOICES, "seed": seed}, parallel=ParallelSettings(2))
    return RenderJob(model, embeds, settings, SampleRequest(**SIZE))


def _spec() -> PoolSpec:
    return PoolSpec(("cpu", "cpu"), ParallelSettings(2), TIMEOUT)


def test_a_killed_worker_is_a_clear_error_within_the_timeout_and_the_next_render_succeeds(demo):
    paths = demo[1]
    job = _job(paths)

    def kill_at_the_first_step(stage, done, total):
        if stage == "sampling" and done == 1:
            os.kill(pool_module.current_pool().pids[0], signal.SIGKILL)

    started = time.monotonic()
    try:
        with pytest.raises(wan_core.RenderError, match=r"worker rank 1 \(cpu, process \d+\) was killed \(signal 9\)"
                                                       r".*the next render starts them again"):
            wan_core.render_parallel(job, StandaloneHost("cpu", on_progress=kill_at_the_first_step), _spec())
        assert time.monotonic() - started < TIMEOUT
        assert pool_module.current_pool() is None
        single = RenderJob(job.model, job.embeds, RenderSettings(**CHOICES), job.request).run(StandaloneHost("cpu"))
        again = wan_core.render_parallel(job, StandaloneHost("cpu"), _spec())
        assert ((again - single).abs().max() / single.abs().max()).item() <= 1e-5
    finally:
        wan_core.shutdown_pool()


def test_a_worker_that_fails_names_its_error_and_an_interrupt_stops_every_rank(demo, tmp_path):
    """The workers load the model from its file: a file gone since the main process loaded it fails them, and
    rank 0 says why. An interrupt at step 1 of rank 0 ends every rank there; the same workers render next."""
    import shutil

    paths = demo[1]
    moved = dict(paths, diffusion_models=tmp_path / "moved.safetensors")
    shutil.copy(paths["diffusion_models"], moved["diffusion_models"])
    job = _job(moved)
    moved["diffusion_models"].unlink()  # mapped here, gone for the workers
    try:
        with pytest.raises(wan_core.RenderError, match=r"worker rank 1 \(cpu\) failed: .*moved.safetensors"):
            wan_core.render_parallel(job, StandaloneHost("cpu"), _spec())
        assert pool_module.current_pool() is None

        job, asked = _job(paths), []
        host = StandaloneHost("cpu", interrupt=lambda: bool(asked), on_progress=lambda s, d, t: asked.append(d))
        with pytest.raises(wan_core.RenderInterrupted, match="after step 1 of 3"):
            wan_core.render_parallel(job, host, _spec())
        pids = pool_module.current_pool().pids
        assert pool_module.current_pool().alive()
        wan_core.render_parallel(job, StandaloneHost("cpu"), _spec())
        assert pool_module.current_pool().pids == pids
    finally:
        wan_core.shutdown_pool()


def test_bad_parallel_input_fails_before_any_process_starts(demo):
    job = _job(demo[1])
    four = RenderJob(job.model, job.embeds, RenderSettings(**CHOICES, parallel=ParallelSettings(4)), job.request)
    with pytest.raises(wan_core.InputError, match="degree of 4 does not divide the 2 attention heads"):
        wan_core.render_parallel(four, StandaloneHost("cpu"), PoolSpec(("cpu",) * 4, ParallelSettings(4), TIMEOUT))
    assert pool_module.current_pool() is None
    with pytest.raises(wan_core.InputError, match=r"ulysses=2,cfg=2 needs 4 devices .* got 2: cpu, cpu"):
        PoolSpec(("cpu", "cpu"), ParallelSettings(2, 2))
    with pytest.raises(wan_core.InputError, match="each rank of a parallel render needs its own GPU"):
        PoolSpec(("cuda:0", "cuda:0"), ParallelSettings(2))
    with pytest.raises(wan_core.InputError, match=r"4 ranks need 3 worker GPUs besides this one \(cuda:0\); this "
                                                  "machine has 1"):
        wan_core.pool_devices("", 4, torch.device("cuda:0"), 2)
    assert wan_core.pool_devices("", 2, torch.device("cuda:1"), 3) == ("cuda:1", "cuda:0")
    assert wan_core.pool_devices("2, 3", 3, torch.device("cuda:0"), 4) == ("cuda:0", "cuda:2", "cuda:3")
    with pytest.raises(wan_core.InputError, match="GPU 5 is not on this machine, which has 4"):
        wan_core.pool_devices("5", 2, torch.device("cuda:0"), 4)
    with pytest.raises(wan_core.InputError, match="numbers separated by commas"):
        wan_core.pool_devices("gpu1", 2, torch.device("cuda:0"), 4)
    with pytest.raises(wan_core.InputError, match="not loaded from a file"):
        built = wan_core.WanDiT(job.model.config)
        wan_core.render_parallel(RenderJob(built, job.embeds, job.settings, job.request), StandaloneHost("cpu"),
                                 _spec())


def test_an_expert_pair_and_image_conditioning_reach_the_workers(demo):
    """The workers load what each render names: a Wan2.2 expert pair (both files, the boundary, each expert's cfg),
    then the i2v model with image conditioning (CLIP tokens and y in the job's tensors); each equals the
    single-process render, on one pool."""
    paths = demo[1]
    base = _job(paths)
    pair = wan_core.ExpertPair.with_defaults(wan_core.load_dit(paths["t2v_high"]), wan_core.load_dit(paths["t2v_low"]),
                                             cfg_high=4.0, cfg_low=3.0)
    i2v = wan_core.load_dit(paths["i2v"])
    gen = torch.Generator().manual_seed(2)
    lat_f, lat_h, lat_w = SampleRequest(**SIZE).latent_shape(i2v.config)[2:]
    image = wan_core.ImageEmbeds(torch.randn(1, i2v.config.clip_tokens, i2v.config.clip_dim, generator=gen),
                                 torch.randn(1, 20, lat_f, lat_h, lat_w, generator=gen))
    try:
        pids = None
        for model, conditioning in ((pair, None), (i2v, image)):
            job = RenderJob(model, base.embeds, base.settings, base.request, image=conditioning)
            single = RenderJob(model, base.embeds, RenderSettings(**CHOICES), base.request, image=conditioning)
            split = wan_core.render_parallel(job, StandaloneHost("cpu"), _spec())
            one = single.run(StandaloneHost("cpu"))
            assert ((split - one).abs().max() / one.abs().max()).item() <= 1e-5
            assert pids is None or pool_module.current_pool().pids == pids
            pids = pool_module.current_pool().pids
    finally:
        wan_core.shutdown_pool()


@pytest.mark.parametrize("kind", ["first_block", "mag"])
def test_a_step_cache_under_ulysses_skips_as_the_single_process_render(demo, kind):
    """The cache sits outside the token split, deciding on the whole sequence, the same on every rank: the parallel
    render with a cache equals the single-process one with it, which differs from the uncached render."""
    paths = demo[1]
    base = _job(paths)
    cache = wan_core.StepCacheSettings(kind, threshold=0.5, start=0.0, max_skips=2)
    choices = {**CHOICES, "steps": 6}
    job = RenderJob(base.model, base.embeds, RenderSettings(**choices, cache=cache, parallel=ParallelSettings(2)),
                    base.request)
    try:
        split = wan_core.render_parallel(job, StandaloneHost("cpu"), _spec())
    finally:
        wan_core.shutdown_pool()
    one, plain = (RenderJob(base.model, base.embeds, RenderSettings(**choices, cache=c), base.request).run(
        StandaloneHost("cpu")) for c in (cache, None))
    assert ((split - one).abs().max() / one.abs().max()).item() <= 1e-5
    assert ((plain - one).abs().max() / one.abs().max()).item() > 1e-3  # the cache did skip steps


def test_streamed_blocks_and_context_windows_render_unchanged_on_the_workers(demo):
    """A budget that streams the blocks and 9-frame context windows over 17 frames (3 windows per step): the pool's
    render equals the single process's."""
    paths = demo[1]
    base = _job(paths)
    choices = dict(CHOICES, vram_budget=0.01, context=wan_core.ContextWindows(9, 4))
    request = SampleRequest(64, 48, 17)
    job = RenderJob(base.model, base.embeds, RenderSettings(**choices, parallel=ParallelSettings(2)), request)
    try:
        split = wan_core.render_parallel(job, StandaloneHost("cpu"), _spec())
    finally:
        wan_core.shutdown_pool()
    one = RenderJob(base.model, base.embeds, RenderSettings(**choices), request).run(StandaloneHost("cpu"))
    assert ((split - one).abs().max() / one.abs().max()).item() <= 1e-5


def test_a_finished_render_leaves_no_tensors_in_the_store(demo):
    job = _job(demo[1])
    try:
        wan_core.render_parallel(job, StandaloneHost("cpu"), _spec())
        store = pool_module.current_pool().store
        assert not store.check(["job/0/tensors"]) and store.check(["job/0", "done/0/1"])
    finally:
        wan_core.shutdown_pool()
