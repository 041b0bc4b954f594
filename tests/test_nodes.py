"""The ComfyUI node pack: node contract, example workflows (validated and executed on the tiny demo
model), and node-level behaviour (sizes refused early, interrupts, text encoder offload)."""

from __future__ import annotations

import os
from pathlib import Path

import av
import pytest
import torch
from workflow_runner import ROOT, load_pack, load_workflow, node_classes, run_workflow, widget_inputs

from wan_core.demo import DEMO_FILES, DEMO_IMAGE_FILES, write_demo_models

WORKFLOWS = sorted((ROOT / "example_workflows").glob("*.json"))
SMALL = {"width": 64, "height": 48, "frames": 5, "steps": 3}
WINDOWED_FRAMES = 13  # a context-window workflow's clip: 4 latent frames
EXTENDED_FRAMES = 17  # an extension workflow's whole video: 2 latent frames extended to 5 (segments of 3 carrying 1)
FILE_LISTS = {"model_name", "vae_name", "video", "clip_name", "image", "lora_name"}  # combos listing the user's files


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A standalone host: demo models, input and output folders (through the host's variables)."""
    root = tmp_path_factory.mktemp("host")
    write_demo_models(root / "models")
    saved = {k: os.environ.get(k) for k in ("WANCORE_MODELS", "WANCORE_INPUT", "WANCORE_OUTPUT")}
    os.environ.update(WANCORE_MODELS=str(root / "models"), WANCORE_INPUT=str(root / "input"),
                      WANCORE_OUTPUT=str(root / "output"))
    (root / "input").mkdir()
    yield root
    for key, value in saved.items():
        os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)


def _demo_overrides(workflow: dict | None = None):
    dit = DEMO_FILES["diffusion_models"]
    loader = next((n for n in (workflow or {}).get("nodes", []) if n["type"] == "WanCoreModelLoader"), None)
    for kind in ("ti2v", "flf2v", "i2v", "vace"):  # the demo model of the same kind as the workflow's
        if loader and kind in loader["widgets_values"][0]:
            dit = DEMO_IMAGE_FILES[kind][1]
            break
    ti2v = dit == DEMO_IMAGE_FILES["ti2v"][1]
    small = {"width": SMALL["width"], "height": 64 if ti2v else SMALL["height"]}  # the 5B: sides of 32
    sampler = next((n for n in (workflow or {}).get("nodes", []) if n["type"] == "WanCoreSampler"), None)
    fixed_steps = sampler is not None and sampler["widgets_values"][8] in ("lightx2v_4step", "causvid")
    windowed = any(n["type"] == "WanCoreContextWindows" for n in (workflow or {}).get("nodes", []))
    experts = {}  # a Wan2.2 pair's loaders: the demo expert of the same task and noise level
    for node in (workflow or {}).get("nodes", []):
        name = node["widgets_values"][0] if node["type"] == "WanCoreModelLoader" else ""
        for level in ("high", "low"):
            if f"{level}_noise" in name:
                task = "i2v" if "i2v" in name else "t2v"
                experts[node["id"]] = {"model_name": DEMO_IMAGE_FILES[f"{task}_{level}"][1]}
    return {
        **experts,
        "WanCoreModelLoader": {"model_name": dit},
        "WanCoreCLIPVisionLoader": {"clip_name": DEMO_IMAGE_FILES["clip_vision"][1]},
        "WanCoreImageToVideo": {**small, "frames": SMALL["frames"]},
        "ImageScale": small,
        "WanCoreTextEncoderLoader": {"model_name": DEMO_FILES["text_encoders"]},
        "WanCoreVAELoader": {"vae_name": DEMO_IMAGE_FILES["vae22"][1] if ti2v else DEMO_FILES["vae"]},
        "WanCoreSampler": {**{k: v for k, v in SMALL.items() if not (fixed_steps and k == "steps")}, **small,
                           **({"frames": WINDOWED_FRAMES} if windowed else {})},
        "WanCoreContextWindows": {"context_frames": 5, "context_overlap": 4},  # 2 latent frames, overlap 1: 3 windows
        "WanCoreExtend": {"frames": EXTENDED_FRAMES, "overlap": 4, "segment_frames": 9, "steps": SMALL["steps"]},
        "WanCoreLoraLoader": {"lora_name": DEMO_IMAGE_FILES["lora"][1]},
        "WanCoreVACEConditioning": {**small, "frames": SMALL["frames"]},
        "WanCoreVACEExtend": {"frames": SMALL["frames"]},
        "WanCoreVACEOutpaint": {"left": 16, "right": 16, "top": 0, "bottom": 0},
        "WanCoreLoadVideo": {"width": SMALL["width"], "height": SMALL["height"], "max_frames": SMALL["frames"]},
        "WanCoreParallel": {"ulysses": 2, "cfg": 1, "gpus": "cpu", "timeout_s": 60},  # one worker on the CPU
    }


def _check_spec(node: str, name: str, spec: tuple) -> None:
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
    assert isinstance(kind, (str, list)), (node, name)
    assert options.get("tooltip"), f"{node}.{name} has no tooltip"
    if isinstance(kind, list) and "default" in options:
        assert options["default"] in kind, (node, name)
    if kind in ("INT", "FLOAT") and "default" in options:
        assert options.get("min", float("-inf")) <= options["default"] <= options.get("max", float("inf")), (node, name)


def test_node_contract(env):
    mappings = load_pack().NODE_CLASS_MAPPINGS
    assert set(mappings) == set(load_pack().NODE_DISPLAY_NAME_MAPPINGS)
    assert len(mappings) == 20
    for node, cls in mappings.items():
        assert node.startswith("WanCore") and cls.CATEGORY.startswith("WanCore/"), node
        assert cls.DESCRIPTION and isinstance(cls.RETURN_TYPES, tuple), node
        assert callable(getattr(cls, cls.FUNCTION)), node
        assert len(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)) == len(cls.RETURN_TYPES), node
        types = cls.INPUT_TYPES()
        assert isinstance(types.get("required"), dict), node
        for section in ("required", "optional"):
            for name, spec in types.get(section, {}).items():
                _check_spec(node, name, spec)
    assert all(t.startswith("WANCORE_") or t in ("LATENT", "IMAGE", "MASK", "STRING", "FLOAT", "INT")
               for cls in mappings.values() for t in cls.RETURN_TYPES)


def _input_spec(cls, name):
    types = cls.INPUT_TYPES()
    return {**types.get("required", {}), **types.get("optional", {})}[name]


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_file_is_valid(env, path):
    workflow = load_workflow(path)
    classes = node_classes()
    nodes = {n["id"]: n for n in workflow["nodes"]}
    assert all(n["type"] in classes for n in nodes.values()), "unknown node type"
    for link_id, source, out_slot, target, in_slot, kind in workflow["links"]:
        src, dst = nodes[source], nodes[target]
        assert src["outputs"][out_slot]["type"] == kind == dst["inputs"][in_slot]["type"]
        assert classes[src["type"]].RETURN_TYPES[out_slot] == kind
        assert _input_spec(classes[dst["type"]], dst["inputs"][in_slot]["name"])[0] == kind
        assert dst["inputs"][in_slot]["link"] == link_id and link_id in src["outputs"][out_slot]["links"]
    for node in nodes.values():
        widgets = widget_inputs(classes[node["type"]])
        assert len(node["widgets_values"]) == len(widgets), node["type"]
        for (name, spec), value in zip(widgets, node["widgets_values"]):
            kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
            if name is None:  # control-after-generate, or a native node's extra widget (LoadImage's upload)
                assert value in ("fixed", "increment", "decrement", "randomize") or spec == ("STRING",)
            elif isinstance(kind, list) and name not in FILE_LISTS:
                assert value in kind, (node["type"], name, value)
            elif kind in ("INT", "FLOAT"):
                assert isinstance(value, (int, float))
                assert options.get("min", value) <= value <= options.get("max", value)
            elif kind == "STRING":
                assert isinstance(value, str)
            elif kind == "BOOLEAN":
                assert isinstance(value, bool)


def _decoded(path: str) -> tuple[int, int, int]:
    with av.open(path) as container:
        frames = [f for f in container.decode(video=0)]
    return len(frames), frames[0].height, frames[0].width


def _input_images(env) -> None:
    """Start and end frames at the demo render's aspect ratio (so keep_aspect keeps its size)."""
    from wan_core.video import write_video

    for name, seed in (("start_frame", 1), ("end_frame", 2), ("reference", 3)):
        image = torch.rand(1, SMALL["height"], SMALL["width"], 3, generator=torch.Generator().manual_seed(seed))
        path = write_video(image, env / "input" / name, fmt="png")
        (path / "frame_00000.png").replace(env / "input" / f"{name}.png")
        path.rmdir()


def _input_clip(env) -> None:
    from wan_core.video import write_video

    clip = torch.rand(9, 96, 128, 3)
    write_video(clip, env / "input" / "input_clip.mp4", fps=16)


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_runs_on_the_demo_model(env, path):
    workflow = load_workflow(path)
    if any(n["type"] == "WanCoreLoadVideo" for n in workflow["nodes"]):
        _input_clip(env)
    if any(n["type"] == "LoadImage" for n in workflow["nodes"]):
        _input_images(env)
    try:
        results = run_workflow(workflow, _demo_overrides(workflow))
    finally:
        load_pack().wan_core.shutdown_pool()  # a Wan Parallel workflow's worker ends with its test
    writer = next(n for n in workflow["nodes"] if n["type"] == "WanCoreVideoWriter")
    written = results[writer["id"]][0]
    assert Path(written).is_file() and Path(written).parent.is_relative_to(env / "output")
    scale = next((n["widgets_values"][1] for n in workflow["nodes"] if n["type"] == "ImageScaleBy"), 1.0)
    height = 64 if any("ti2v" in str(n.get("widgets_values")) for n in workflow["nodes"]) else SMALL["height"]
    types = {n["type"] for n in workflow["nodes"]}
    frames = EXTENDED_FRAMES if "WanCoreExtend" in types else WINDOWED_FRAMES if "WanCoreContextWindows" in types \
        else SMALL["frames"]
    assert _decoded(written) == (frames, round(height * scale), round(SMALL["width"] * scale))
    manifest = load_pack().wan_core.read_manifest(written)  # the run manifest: settings and hashed model files
    sampler = next(v for v in manifest["graph"].values() if v["class_type"] == "WanCoreSampler")
    distilled = sampler["inputs"]["sampler"] in ("lightx2v_4step", "causvid")
    assert sampler["inputs"]["steps"] == (4 if distilled else SMALL["steps"])
    assert not distilled or sampler["inputs"]["cfg"] == 1.0  # the distill workflows: 4 steps, cfg 1, a LoRA
    files = ("WanCoreModelLoader", "WanCoreLoraLoader")
    loaders = [k for k, v in manifest["graph"].items() if v["class_type"] in files]
    assert len(loaders) == sum(n["type"] in files for n in workflow["nodes"]) >= (2 if distilled else 1)
    for loader in loaders:
        ref = manifest["models"][loader]
        assert ref["hash"] == load_pack().wan_core.fast_file_hash(ref["path"]) and ref["size"] > 0


def _t2v_graph(env):
    nodes = load_pack().NODE_CLASS_MAPPINGS
    model = nodes["WanCoreModelLoader"]().load(DEMO_FILES["diffusion_models"], "default")[0]
    encoder = nodes["WanCoreTextEncoderLoader"]().load(DEMO_FILES["text_encoders"], "default")[0]
    embeds = nodes["WanCoreTextEncode"]().encode(encoder, "a fox", "")[0]
    return nodes, model, encoder, embeds


@pytest.mark.parametrize(("size", "message"), [
    ({"frames": 14}, "use 13 or 17"),
    ({"width": 833}, "width 833 is not a multiple of 16 .*use 832 or 848"),
])
def test_bad_sizes_fail_before_work_with_the_fix(env, size, message):
    nodes, model, _, embeds = _t2v_graph(env)
    pack = load_pack()
    settings = {**SMALL, **size, "seed": 1, "cfg": 5.0, "shift": 5.0, "sampler": "unipc", "denoise": 1.0}
    with pytest.raises(pack.wan_core.InputError, match=message):
        nodes["WanCoreSampler"]().run(model, embeds, **settings)


@pytest.mark.parametrize("resume", ["off", "auto"])
def test_interrupt_mid_sampling_writes_nothing_but_the_resume_state(env, monkeypatch, resume):
    nodes, model, _, embeds = _t2v_graph(env)
    host = load_pack().nodes.host
    calls = []
    monkeypatch.setattr(host, "interrupt_requested", lambda: calls.append(1) or len(calls) >= 2)
    before = set((env / "output").rglob("*")) if (env / "output").exists() else set()
    settings = {**SMALL, "steps": 6, "seed": 1, "cfg": 5.0, "shift": 5.0, "sampler": "unipc", "denoise": 1.0}
    with pytest.raises(load_pack().wan_core.RenderInterrupted):
        nodes["WanCoreSampler"]().run(model, embeds, **settings, resume=resume)
    assert len(calls) == 2
    after = set((env / "output").rglob("*")) if (env / "output").exists() else set()
    folder = host.resume_folder()
    new = after - before - {folder}
    assert len(new) == (resume == "auto") and all(p.parent == folder and p.suffix == ".safetensors" for p in new)
    for p in new:
        p.unlink()


def test_the_sampler_node_continues_an_interrupted_render_with_the_same_result(env, monkeypatch):
    nodes, model, _, embeds = _t2v_graph(env)
    host = load_pack().nodes.host
    settings = {**SMALL, "steps": 6, "seed": 3, "cfg": 5.0, "shift": 5.0, "sampler": "dpm++", "denoise": 1.0}
    whole = nodes["WanCoreSampler"]().run(model, embeds, **settings, resume="off")[0]["samples"]
    calls = []
    monkeypatch.setattr(host, "interrupt_requested", lambda: calls.append(1) or len(calls) >= 4)
    with pytest.raises(load_pack().wan_core.RenderInterrupted, match="after step 4 of 6"):
        nodes["WanCoreSampler"]().run(model, embeds, **settings)
    monkeypatch.setattr(host, "interrupt_requested", lambda: False)
    resumed = nodes["WanCoreSampler"]().run(model, embeds, **settings)[0]["samples"]
    assert torch.equal(resumed, whole) and not list(host.resume_folder().glob("*.safetensors"))
    preview = nodes["WanCoreSampler"]().run(model, embeds, **settings, stop_after=2)[0]["samples"]
    assert preview.shape == whole.shape and len(list(host.resume_folder().glob("*.safetensors"))) == 1
    assert torch.equal(nodes["WanCoreSampler"]().run(model, embeds, **settings)[0]["samples"], whole)


def test_text_encoder_is_moved_off_the_compute_device(env, monkeypatch):
    nodes, _, encoder, _ = _t2v_graph(env)
    host = load_pack().nodes.host
    moves = []
    monkeypatch.setattr(host, "compute_device", lambda: torch.device("cuda", 0))
    monkeypatch.setattr(host, "vram_budget", lambda *args, **kwargs: 2**40)  # the faked GPU's free memory
    monkeypatch.setattr(encoder, "to", lambda device: moves.append(torch.device(device)) or encoder)
    embeds = nodes["WanCoreTextEncode"]().encode(encoder, "a fox", "")[0]
    assert moves == [torch.device("cuda", 0), host.offload_device()]
    assert embeds.positive.shape[0] == 1 and embeds.positive.device.type == "cpu"


def test_auto_tiled_decode_first_asks_the_host_to_make_room(env, monkeypatch):
    """Inside ComfyUI that unloads what it holds (our diffusion model, done sampling) as far as the untiled
    decode needs, before the free memory picks the tiles."""
    nodes = load_pack().NODE_CLASS_MAPPINGS
    pack = load_pack()
    host = pack.nodes.host
    vae = nodes["WanCoreVAELoader"]().load(DEMO_FILES["vae"], "default")[0]
    asked = []
    monkeypatch.setattr(host, "make_room", lambda device, nbytes: asked.append((device, nbytes)))
    latent = {"samples": torch.randn(1, 16, 2, 6, 8)}
    images = nodes["WanCoreVAEDecode"]().decode(vae, latent, "auto")[0]
    need = int(pack.wan_core.decode_bytes(vae, 6, 8, vae.compute_dtype) / 0.8)
    weights = (host.compute_device(), pack.wan_core.module_bytes(vae))  # room for the VAE itself, first
    assert asked == [weights, (host.compute_device(), need)] and images.shape == (5, 48, 64, 3)
    asked.clear()
    nodes["WanCoreVAEDecode"]().decode(vae, latent, "off")
    assert asked == [weights]  # an explicit tiling asks for no activation room


def test_a_streamed_render_first_takes_the_model_off_the_device(env, monkeypatch):
    """An earlier resident render may have left the weights on the GPU (held between queue runs); a streaming
    plan must copy blocks from host memory, so the sampler unloads the model before the view is built."""
    nodes, model, _, embeds = _t2v_graph(env)
    host = load_pack().nodes.host
    unloaded = []
    monkeypatch.setattr(host, "unload", lambda m: unloaded.append(m))
    settings = dict(width=64, height=48, frames=5, seed=1, steps=2, cfg=5.0, shift=5.0, sampler="euler", denoise=1.0,
                    resume="off")
    nodes["WanCoreSampler"]().run(model, embeds, **settings)
    assert unloaded == []  # everything fits: the model is placed whole, nothing to take off
    nodes["WanCoreSampler"]().run(model, embeds, **settings, vram_budget_gb=0.01)
    assert unloaded == [model]
