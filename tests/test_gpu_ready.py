"""Ready for the first GPU (issue 21): the CUDA-only defects, shown on the CPU where a CPU can show them (on the
``meta`` device, with a faked CUDA capability, or with a faked allocator)."""

from __future__ import annotations

import contextlib
import types

import pytest
import torch
from safetensors.torch import save_file
from tiny import T2V, inputs, random_official_state
from tiny_lora import block_modules, random_lora, write_lora

import wan_core
import wan_core.demo
from wan_core.runtime.memory_plan import MemoryPlan
from wan_core.runtime.streaming import StreamedBlock, _copy_tree

META = torch.device("meta")


def _tensors(module: torch.nn.Module):
    """Every tensor a module computes with: parameters, buffers (unmerged LoRA terms among them)."""
    yield from module.named_parameters()
    yield from module.named_buffers()
    for name, layer in module.named_modules():
        for k, (down, up, _) in enumerate(getattr(layer, "low_rank", ())):
            yield from ((f"{name}.low_rank[{k}].down", down), (f"{name}.low_rank[{k}].up", up))


def test_a_streamed_lora_render_places_the_low_rank_terms_with_their_weights(tmp_path):
    """An fp8 DiT with a LoRA left unmerged, its block 1 streamed: the placed view (on ``meta`` as a stand-in
    for the GPU) holds nothing on the host, the low-rank terms included; the streamed block's device copy (the
    same tree copy the CUDA streamer makes) holds nothing on the host either. Before, the terms were a plain
    attribute and stayed on the host: a device mismatch on every such render on a GPU."""
    save_file(random_official_state(T2V, seed=3), tmp_path / "dit.safetensors")
    lora = write_lora(tmp_path / "l.safetensors", random_lora(T2V, block_modules(T2V)))
    handle = wan_core.apply_loras(wan_core.load_dit(tmp_path / "dit.safetensors", storage_dtype="fp8_e4m3fn"),
                                  [(lora, 0.8)])
    plan = MemoryPlan((0,), (1,), False, 1, 1, 0, 0)
    view = wan_core.RenderContext(device=META, plan=plan).patched(handle)
    assert isinstance(view.blocks[1], StreamedBlock)
    terms = [m for m in view.modules() if getattr(m, "low_rank", ())]
    assert len(terms) >= 8, "the LoRA must stay unmerged over fp8 for this test to mean anything"
    on_host = [name for name, t in _tensors(view) if t.device != META]
    assert not on_host, on_host[:5]
    streamed = _copy_tree(view.blocks[1].streamer.order[0], lambda t: t.to(META))
    assert any(getattr(m, "low_rank", ()) for m in streamed.modules())
    assert not [name for name, t in _tensors(streamed) if t.device != META]


def test_low_rank_terms_do_not_touch_the_loaded_model_and_compute_as_before(tmp_path):
    save_file(random_official_state(T2V, seed=3), tmp_path / "dit.safetensors")
    lora = write_lora(tmp_path / "l.safetensors", random_lora(T2V, block_modules(T2V)))
    model = wan_core.load_dit(tmp_path / "dit.safetensors", storage_dtype="fp8_e4m3fn")
    before = {name for name, _ in model.named_buffers()}
    handle = wan_core.apply_loras(model, [(lora, 0.8)])
    x, t, context, _, _ = inputs(T2V, batch=1)
    with torch.no_grad():
        got = handle(x, t, context)
        merged = wan_core.apply_loras(wan_core.load_dit(tmp_path / "dit.safetensors"), [(lora, 0.8)])(x, t, context)
    assert {name for name, _ in model.named_buffers()} == before  # the terms live on the render's view only
    assert not any(getattr(m, "low_rank_scales", ()) for m in model.modules())
    assert ((got - merged).norm() / merged.norm()).item() < 0.1  # within the fp8 error (test_lora measures it)


class _FreesOnRequest(wan_core.StandaloneHost):
    """A device whose memory is held by another model until the host is asked for room (ComfyUI unloading it)."""

    def __init__(self, after: int):
        super().__init__("cpu")
        self.after, self.asked = after, []

    def make_room(self, nbytes: int) -> None:
        self.asked.append(nbytes)

    def free_memory(self) -> int:
        return self.after if self.asked else 2**20


def test_the_fit_check_counts_what_the_host_can_free(tmp_path, monkeypatch):
    """1 MiB is free until the host makes room; the render needs more. Before, the fit check read the free memory
    before anyone was asked for room and refused the render; now it asks first, and refuses only when the room
    made is still too little (naming both sizes, before any noise is drawn)."""
    import wan_core.runtime.memory as memory
    import wan_core.sampling.loop as loop

    paths = wan_core.demo.write_demo_models(tmp_path)
    dit, encoder = wan_core.load_dit(paths["diffusion_models"]), wan_core.load_text_encoder(paths["text_encoders"])
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2**20)  # the device before room is made
    size = dict(width=256, height=256, frames=17, steps=1, seed=1)
    host = _FreesOnRequest(after=64 * 2**30)
    raw = wan_core.text_to_latent(dit, encoder, "a fox", host=host, **size)
    assert raw.shape == (1, 16, 5, 32, 32) and host.asked

    drawn = []
    monkeypatch.setattr(loop, "make_noise", lambda *a, **k: drawn.append(1) or torch.zeros(()))
    refused = r"17-frame 256x256 render .* needs about .* MiB on cpu, but only 1\.0 MiB is available"
    with pytest.raises(wan_core.InputError, match=refused):
        wan_core.text_to_latent(dit, encoder, "a fox", host=_FreesOnRequest(after=2**20), **size)
    assert not drawn


class _FakeCuda:
    """Just enough of torch.cuda for the block streamer, on a timeline where queued GPU work completes only when the
    host synchronizes on it (the host thread runs as far ahead of the GPU as it is let). Counts the block copies
    whose memory the caching allocator still holds: made, and not yet freed by the end of the compute that
    used them."""

    def __init__(self, monkeypatch):
        self.alive = self.peak = 0
        fake = self
        self.main = types.SimpleNamespace(wait_event=lambda event: None)

        class Event:
            def record(self, stream):
                self.release, self.done = stream is fake.main, False

            def synchronize(self):
                if self.release and not self.done:
                    fake.alive -= 1  # this release and, in stream order, every earlier one
                self.done = True

        monkeypatch.setattr(torch.cuda, "Event", Event)
        monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
        monkeypatch.setattr(torch.cuda, "current_stream", lambda *a: self.main)
        monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self: True)
        monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, stream: None)

    def copied(self):
        self.alive += 1
        self.peak = max(self.peak, self.alive)


@pytest.mark.parametrize("blocks", [3, 10, 40])
def test_streamed_copies_in_flight_are_bounded_by_the_plan(blocks, monkeypatch):
    """The real streamer, driven as a streamed render drives it (acquire block i, which starts the copy of i + 1,
    queue its compute, release it), on a GPU that lags the host. Without back-pressure every copy was queued
    before any compute finished, so all ``blocks`` copies were held at once; now at most prefetch + 1 = 2,
    what the memory plan's staging counts."""
    import wan_core.runtime.streaming as streaming

    cuda = _FakeCuda(monkeypatch)
    copy_tree = streaming._copy_tree
    monkeypatch.setattr(streaming, "_copy_tree", lambda *a, **k: (cuda.copied(), copy_tree(*a, **k))[1])
    streamer = streaming.BlockStreamer("cpu", [torch.nn.Linear(4, 4) for _ in range(blocks)], prefetch=1)
    streamer.cuda, streamer._stream = True, object()  # the CUDA path, on the fake runtime
    for i in range(blocks):
        streamer.acquire(i)
        streamer.release(i)
    assert cuda.peak == min(2, blocks)


def _fake_package(monkeypatch, module: str, importable: bool):
    """``module`` found by find_spec; importing it works, or fails as a wheel built for another torch does."""
    import importlib
    import importlib.util
    import types

    real_find, real_import = importlib.util.find_spec, importlib.import_module
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == module else real_find(name, *a))

    def load(name, *a):
        if name != module:
            return real_import(name, *a)
        if not importable:
            raise ImportError("undefined symbol: _ZN3c104cuda9SetDeviceEi")
        return types.ModuleType(module)

    monkeypatch.setattr(importlib, "import_module", load)


def _fresh_backends(monkeypatch):
    """The flash / sage backends with a fresh import check (the real ones remember theirs per process)."""
    from wan_core.runtime import attention

    for name, module, package in (("flash", "flash_attn", "flash-attn"), ("sage", "sageattention", "sageattention")):
        backend = attention._BACKENDS[name]
        monkeypatch.setitem(attention._BACKENDS, name,
                            attention.AttentionBackend(name, backend.attend, attention._missing(module, package)))
    monkeypatch.setattr(attention, "_WARNED", set())
    return attention


def test_flash_installed_but_not_importable_is_not_picked(monkeypatch):
    attention = _fresh_backends(monkeypatch)
    _fake_package(monkeypatch, "flash_attn", importable=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    reason = attention._BACKENDS["flash"].unavailable()
    assert reason.startswith("flash-attn is installed but cannot be imported (ImportError: undefined symbol")
    assert attention.get_attention("auto").name in ("sage", "sdpa") and attention.get_attention("flash").name == "sdpa"


def test_a_gpu_older_than_the_kernel_gets_sdpa(monkeypatch):
    attention = _fresh_backends(monkeypatch)
    _fake_package(monkeypatch, "sageattention", importable=True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))  # a T4 / RTX 20xx
    assert attention._BACKENDS["sage"].unavailable() == ("sageattention needs a GPU of compute capability 8.0 or "
                                                         "newer; this one is 7.5")
    assert attention.get_attention("auto").name == "sdpa"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 9))
    assert attention._BACKENDS["sage"].unavailable() is None and attention.get_attention("auto").name == "sage"


def _job(model, compile: bool = True):
    embeds = wan_core.TextEmbeds(torch.zeros(1, 4, T2V.text_dim), None)
    return wan_core.RenderJob(model, embeds, wan_core.RenderSettings(compile=compile, cfg=1.0))


@pytest.mark.parametrize("capability, triton, refused", [
    ((8, 6), True, "Inductor has no fp8 code for this GPU (compute capability 8.6, fp8 needs 8.9)"),
    ((9, 0), False, "Inductor needs Triton on a GPU and it is not installed"),
    ((9, 0), True, None),
])
def test_compile_falls_back_to_eager_where_inductor_cannot_compile(tmp_path, monkeypatch, caplog, capability, triton,
                                                                     refused):
    """An fp8 model with compile on: below compute capability 8.9 or without Triton the render context runs
    eagerly with one log line instead of the render failing inside Inductor; elsewhere the blocks compile."""
    import importlib.util
    import logging

    from wan_core.runtime.runners import CompiledRunner

    save_file(random_official_state(T2V, seed=3), tmp_path / "dit.safetensors")
    model = wan_core.load_dit(tmp_path / "dit.safetensors", storage_dtype="fp8_e4m3fn")
    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: (object() if triton else None) if name == "triton" else real_find(name, *a))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
    plan = MemoryPlan((0, 1), (), False, 1, 0, 0, 0)
    with caplog.at_level(logging.WARNING):
        render = _job(model).render(torch.device("cuda"), plan, None)
    assert isinstance(render.runner, CompiledRunner) == (refused is None)
    lines = [r.getMessage() for r in caplog.records if "compile is off" in r.getMessage()]
    assert lines == ([] if refused is None else [lines[0]]) and (refused is None or refused in lines[0])


@pytest.mark.parametrize("capability, dit, text, vae, clip", [
    ((7, 5), torch.float16, torch.float32, torch.float32, torch.float16),  # T4 / RTX 20xx: no fast bf16
    ((7, 0), torch.float16, torch.float32, torch.float32, torch.float16),  # V100
    ((8, 0), torch.bfloat16, torch.bfloat16, torch.bfloat16, torch.float16),  # A100 and newer: as before
])
def test_pre_ampere_gpus_compute_in_fp16_by_default(monkeypatch, capability, dit, text, vae, clip):
    from wan_core.runtime.placement import default_compute_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
    got = [default_compute_dtype(n, "cuda") for n in ("dit", "text_encoder", "vae", "clip_vision")]
    assert got == [dit, text, vae, clip]
    assert default_compute_dtype("dit", "cpu") == torch.float32


def test_the_model_loader_takes_a_compute_dtype(tmp_path, monkeypatch):
    from workflow_runner import load_pack

    from wan_core.demo import DEMO_FILES

    wan_core.demo.write_demo_models(tmp_path)
    monkeypatch.setenv("WANCORE_MODELS", str(tmp_path))
    loader = load_pack().NODE_CLASS_MAPPINGS["WanCoreModelLoader"]
    assert loader.INPUT_TYPES()["optional"]["compute_dtype"][0] == ["default", "bf16", "fp16", "fp32", "fp8"]
    assert loader().load(DEMO_FILES["diffusion_models"], "default", "fp16")[0].compute_dtype == torch.float16
    default = loader().load(DEMO_FILES["diffusion_models"], "default")[0]
    assert default.compute_dtype == torch.float32 and not default.fp8_matmul  # the CPU's
    fp8 = loader().load(DEMO_FILES["diffusion_models"], "default", "fp8")[0]  # the native nodes' fp8_e4m3fn_fast
    assert fp8.fp8_matmul and fp8.compute_dtype == torch.float32
    assert fp8.blocks[0].ffn[0].weight.dtype == torch.float8_e4m3fn


def test_the_oom_decode_fallback_lets_go_of_the_failed_attempt_before_measuring(tmp_path, monkeypatch):
    """The failed one-piece decode's tensors (held by its exception's traceback) are gone when the fallback reads
    the free memory to size its tiles; before, the kept exception held them through the whole fallback."""
    import gc
    import weakref

    import wan_core.models.vae_tiling as tiling

    vae = wan_core.load_vae(wan_core.demo.write_demo_models(tmp_path)["vae"])
    decode, held = vae.decode, []

    def whole_fails(latent, **kwargs):
        if latent.shape[-1] > 8:
            activations = torch.empty(1 << 20)  # what the attempt had allocated when it ran out
            held.append(weakref.ref(activations))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return decode(latent, **kwargs)

    alive_when_measured = []

    def measure(device):
        gc.collect()
        alive_when_measured.append(held[0]() is not None)
        return 60 * 2**20

    monkeypatch.setattr(vae, "decode", whole_fails)
    monkeypatch.setattr(tiling, "available_bytes", measure)
    wan_core.decode_with_fallback(vae, torch.randn(1, 16, 2, 12, 16))
    assert alive_when_measured == [False]


def test_gpu_only_comfyui_still_loads_our_weights_to_host_memory(monkeypatch):
    """Under ``--gpu-only`` / ``--highvram`` ComfyUI's offload device is the GPU; loading our models there would put
    a 14B DiT whole on the GPU before the memory plan could stream it."""
    import types

    from workflow_runner import load_pack

    node_host = load_pack().nodes.host
    monkeypatch.setattr(node_host, "IN_COMFYUI", True)
    monkeypatch.setattr(node_host, "_mm", types.SimpleNamespace(unet_offload_device=lambda: torch.device("cuda", 0),
                                                                get_torch_device=lambda: torch.device("cuda", 0)))
    assert node_host.offload_device() == torch.device("cpu")
    monkeypatch.setattr(node_host._mm, "unet_offload_device", lambda: torch.device("cpu"))
    assert node_host.offload_device() == torch.device("cpu")


def test_conditioning_nodes_ask_comfyui_for_room_before_placing_clip_and_the_vae(monkeypatch):
    """The Image To Video / VACE nodes place CLIP and the VAE through ``on_compute_device``: inside ComfyUI it now
    asks the model manager to free their weights' bytes first (before, they were moved onto a GPU still holding
    the DiT of the last run) and they leave the device after the block."""
    import types

    from workflow_runner import load_pack

    node_host = load_pack().nodes.host
    asked, moves = [], []

    class Placed(torch.nn.Module):
        def __init__(self, n):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(n), requires_grad=False)

        def to(self, device):
            moves.append((self.weight.numel(), torch.device(device).type))
            return self

    mm = types.SimpleNamespace(get_torch_device=lambda: torch.device("cuda", 0),
                               unet_offload_device=lambda: torch.device("cpu"), extra_reserved_memory=lambda: 100,
                               free_memory=lambda n, device, keep_loaded: asked.append((n, moves[:])),
                               soft_empty_cache=lambda: None)
    monkeypatch.setattr(node_host, "IN_COMFYUI", True)
    monkeypatch.setattr(node_host, "_mm", mm)
    with node_host.on_compute_device(Placed(1000), Placed(24)):
        pass
    assert asked == [(1024 * 4 + 100, [])]  # room for both, asked before either moved
    assert moves == [(1000, "cuda"), (24, "cuda"), (1000, "cpu"), (24, "cpu")]


def test_the_cli_keeps_clip_and_the_vae_in_host_memory_between_their_stages(monkeypatch):
    """An i2v render on CUDA: the command line loads CLIP and the VAE into host memory, stored in the GPU's compute
    dtype (before: onto the GPU, where they stayed through sampling, outside the memory plan); the host moves them
    to the device for their stages only."""
    import argparse

    import wan_core.cli as cli

    loaded = {}

    def loader(kind):
        def load(path, **kwargs):
            loaded[kind] = kwargs
            return types.SimpleNamespace(kind=kind)
        return load

    for name in ("load_vae", "load_clip_vision", "load_text_encoder", "load_dit"):
        monkeypatch.setattr(wan_core, name, loader(name))
    args = argparse.Namespace(storage_dtype="default", compute_dtype=None)
    plan = cli._Plan(paths={k: k for k in ("vae", "clip_vision", "text_encoders", "diffusion_models")}, size={},
                     settings=None, fmt="mp4", host=types.SimpleNamespace(device=torch.device("cuda")),
                     images=(object(),))
    cli._load_models(args, plan)
    assert loaded["load_vae"] == {"compute_dtype": torch.bfloat16, "device": "cpu"}
    assert loaded["load_clip_vision"] == {"compute_dtype": torch.float16, "device": "cpu"}
    assert loaded["load_dit"]["device"] == "cpu" and loaded["load_dit"]["compute_dtype"] == torch.bfloat16
