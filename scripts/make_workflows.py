"""Write example_workflows/*.json (ComfyUI's UI workflow format) from compact graph descriptions.

Run from the repository root: ``python scripts/make_workflows.py``. Widget values are laid out in
each node's INPUT_TYPES order, so the files always line up with the node definitions.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Native ComfyUI nodes used in the examples: their sockets and widgets as ComfyUI defines them.
NATIVE = {
    "ImageScaleBy": {"inputs": [("image", "IMAGE")], "outputs": [("IMAGE", "IMAGE")],
                     "widgets": ["upscale_method", "scale_by"]},
    "ImageScale": {"inputs": [("image", "IMAGE")], "outputs": [("IMAGE", "IMAGE")],
                   "widgets": ["upscale_method", "width", "height", "crop"]},
    "LoadImage": {"inputs": [], "outputs": [("IMAGE", "IMAGE"), ("MASK", "MASK")], "widgets": ["image", "upload"]},
}

T2V_PROMPT = ("A red fox trots through fresh snow in a birch forest at dawn, soft golden light, breath visible "
              "in the cold air, cinematic, shallow depth of field.")
V2V_PROMPT = "The same scene as an oil painting, thick brush strokes, warm palette."


def _pack():
    spec = importlib.util.spec_from_file_location("wancore_pack", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.NODE_CLASS_MAPPINGS


def _sockets(cls):
    spec = cls.INPUT_TYPES()
    inputs, widgets = [], []
    for section in ("required", "optional"):
        for name, (kind, *_rest) in spec.get(section, {}).items():
            options = _rest[0] if _rest else {}
            if isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN"):
                widgets.append((name, options.get("default", kind[0] if isinstance(kind, list) and kind else None)))
                if options.get("control_after_generate"):
                    widgets.append((None, "fixed"))  # the frontend's "control after generate" value
            else:
                inputs.append((name, kind, section == "optional"))
    return inputs, widgets


def _widget_value(node: dict, name: str | None, default):
    """The node's value for a widget, else the widget's own default; a widget with neither is an error."""
    if name is None:
        return default
    value = node["widgets"].get(name, default)
    if value is None:
        raise ValueError(f"node {node['id']} ({node['type']}): widget {name!r} needs a value")
    return value


def build(nodes: list[dict], classes) -> dict:
    """``nodes``: [{"id", "type", "pos", "widgets": {name: value}, "links": {input: (node id, output slot)}}]."""
    links, out_links = [], {}
    for node in nodes:
        for target, (source, slot) in node.get("links", {}).items():
            links.append([len(links) + 1, source, slot, node["id"], target, None])
            out_links.setdefault((source, slot), []).append(len(links))
    graph_nodes = []
    for order, node in enumerate(nodes):
        kind = node["type"]
        if kind in NATIVE:
            spec = NATIVE[kind]
            inputs = [(n, t, False) for n, t in spec["inputs"]]
            widget_names = [(w, "image" if w == "upload" else None) for w in spec["widgets"]]  # upload: its value
            outputs = spec["outputs"]
        else:
            cls = classes[kind]
            inputs, widget_names = _sockets(cls)
            outputs = list(zip(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES), cls.RETURN_TYPES))
        entry_inputs = []
        for name, socket, optional in inputs:
            incoming = [link for link in links if link[3] == node["id"] and link[4] == name]
            if incoming or not optional:  # unconnected optional sockets are not listed
                for link in incoming:
                    link[4], link[5] = len(entry_inputs), socket
                entry_inputs.append({"name": name, "type": socket, "link": incoming[0][0] if incoming else None})
        widget_values = [_widget_value(node, name, default) for name, default in widget_names]
        graph_nodes.append({
            "id": node["id"], "type": kind, "pos": list(node["pos"]), "size": [320, 60 + 26 * len(widget_values)],
            "flags": {}, "order": order, "mode": 0, "inputs": entry_inputs,
            "outputs": [{"name": name, "type": socket, "links": out_links.get((node["id"], slot), []),
                         "slot_index": slot} for slot, (name, socket) in enumerate(outputs)],
            "properties": {"Node name for S&R": kind}, "widgets_values": widget_values,
        })
    return {"last_node_id": max(n["id"] for n in nodes), "last_link_id": len(links), "nodes": graph_nodes,
            "links": links, "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}},
            "version": 0.4}


def _t2v(dit: str, width: int, height: int, prefix: str, upscale: bool = False) -> list[dict]:
    writer_input = (8, 0) if upscale else (6, 0)
    nodes = [
        {"id": 1, "type": "WanCoreModelLoader", "pos": (40, 60), "widgets": {"model_name": dit,
                                                                           "weight_dtype": "default"}},
        {"id": 2, "type": "WanCoreTextEncoderLoader", "pos": (40, 220),
         "widgets": {"model_name": "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "dtype": "default"}},
        {"id": 3, "type": "WanCoreVAELoader", "pos": (40, 380), "widgets": {"vae_name": "wan_2.1_vae.safetensors",
                                                                          "dtype": "default"}},
        {"id": 4, "type": "WanCoreTextEncode", "pos": (400, 200), "links": {"text_encoder": (2, 0)},
         "widgets": {"positive": T2V_PROMPT, "negative": _negative()}},
        {"id": 5, "type": "WanCoreSampler", "pos": (820, 60), "links": {"model": (1, 0), "embeds": (4, 0)},
         "widgets": {"width": width, "height": height, "frames": 81, "seed": 42, "steps": 50, "cfg": 5.0,
                     "shift": 5.0, "sampler": "unipc", "denoise": 1.0}},
        {"id": 6, "type": "WanCoreVAEDecode", "pos": (1200, 60), "links": {"vae": (3, 0), "latent": (5, 0)},
         "widgets": {"tiling": "auto"}},
        {"id": 7, "type": "WanCoreVideoWriter", "pos": (1560, 60), "links": {"images": writer_input},
         "widgets": {"fps": 16.0, "filename_prefix": prefix, "format": "mp4", "quality": -1, "save_metadata": True}},
    ]
    if upscale:
        nodes.append({"id": 8, "type": "ImageScaleBy", "pos": (1380, 300), "links": {"image": (6, 0)},
                      "widgets": {"upscale_method": "lanczos", "scale_by": 1.5}})
    return nodes


def _v2v() -> list[dict]:
    nodes = _t2v("wan2.1_t2v_1.3B_fp16.safetensors", 832, 480, "WanCore/v2v")
    nodes[3]["widgets"]["positive"] = V2V_PROMPT
    nodes += [
        {"id": 8, "type": "WanCoreLoadVideo", "pos": (40, 560), "widgets": {
            "video": "input_clip.mp4", "start": 0, "max_frames": 81, "stride": 1, "width": 832, "height": 480}},
        {"id": 9, "type": "WanCoreVAEEncode", "pos": (400, 560), "links": {"vae": (3, 0), "images": (8, 0)},
         "widgets": {"tiling": "auto"}},
    ]
    nodes[4]["links"]["latent"] = (9, 0)
    nodes[4]["widgets"]["denoise"] = 0.7
    return nodes


def _negative() -> str:
    sys.path.insert(0, str(ROOT))
    from wan_core.constants import NEGATIVE_PROMPT

    return NEGATIVE_PROMPT


I2V_PROMPT = ("The woman turns her head towards the camera and smiles, her hair moving gently in the wind, soft "
              "afternoon light, natural motion.")
FLF2V_PROMPT = "The camera slowly moves from the first view to the last, smooth continuous motion."


def _i2v(dit: str, width: int, height: int, prefix: str, shift: float, steps: int, end: bool = False,
         chain: bool = False) -> list[dict]:
    nodes = _t2v(dit, width, height, prefix)
    nodes[3]["widgets"]["positive"] = FLF2V_PROMPT if end else I2V_PROMPT
    nodes[4]["widgets"].update(shift=shift, steps=steps)
    nodes[4]["links"]["image_embeds"] = (10, 0)
    start_source = (12, 0) if chain else (8, 0)
    nodes += [
        {"id": 8, "type": "LoadImage", "pos": (40, 560), "widgets": {"image": "start_frame.png"}},
        {"id": 9, "type": "WanCoreCLIPVisionLoader", "pos": (40, 880),
         "widgets": {"clip_name": "clip_vision_h.safetensors"}},
        {"id": 10, "type": "WanCoreImageToVideo", "pos": (400, 560),
         "links": {"clip_vision": (9, 0), "vae": (3, 0), "start_image": start_source},
         "widgets": {"width": width, "height": height, "frames": 81, "keep_aspect": True}},
    ]
    if end:
        nodes.append({"id": 11, "type": "LoadImage", "pos": (40, 1000), "widgets": {"image": "end_frame.png"}})
        nodes[-2]["links"]["end_image"] = (11, 0)
    if chain:
        nodes.append({"id": 12, "type": "ImageScale", "pos": (220, 760), "links": {"image": (8, 0)},
                      "widgets": {"upscale_method": "lanczos", "width": width, "height": height, "crop": "center"}})
    return nodes


WAN22 = {"t2v": ("wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors", "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors"),
         "i2v": ("wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors", "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors")}
LIGHTNING = ("wan2.2_t2v_lightx2v_4steps_lora_v1.1_high_noise.safetensors",
             "wan2.2_t2v_lightx2v_4steps_lora_v1.1_low_noise.safetensors")


def _pair(task: str, prefix: str, lightning: bool = False) -> list[dict]:
    """A Wan2.2 A14B render: two model loaders (high / low noise), the Expert Pair node, one sampler. The i2v
    experts take no CLIP vision; the Lightning variant puts each expert's 4-step LoRA on it: 4 steps (2 per
    expert), cfg 1, euler."""
    high, low = WAN22[task]
    if task == "t2v":
        nodes = _t2v(high, 1280, 720, prefix)
    else:
        nodes = [n for n in _i2v(high, 1280, 720, prefix, shift=5.0, steps=40)
                 if n["type"] != "WanCoreCLIPVisionLoader"]
        del next(n for n in nodes if n["type"] == "WanCoreImageToVideo")["links"]["clip_vision"]
    sampler = next(n for n in nodes if n["type"] == "WanCoreSampler")
    sampler["widgets"].update(steps=40, shift=12.0 if task == "t2v" else 5.0)
    sampler["links"]["model"] = (21, 0)
    pair = {"id": 21, "type": "WanCoreExpertPair", "pos": (420, 700), "links": {"high_noise_model": (1, 0),
                                                                            "low_noise_model": (20, 0)},
            "widgets": {"boundary": 0.0, "cfg_high": 0.0, "cfg_low": 0.0}}
    nodes += [{"id": 20, "type": "WanCoreModelLoader", "pos": (40, 700), "widgets": {"model_name": low,
                                                                                   "weight_dtype": "default"}}, pair]
    if lightning:
        nodes += [{"id": 22, "type": "WanCoreLoraLoader", "pos": (420, 860), "links": {"model": (1, 0)},
                   "widgets": {"lora_name": LIGHTNING[0], "strength": 1.0}},
                  {"id": 23, "type": "WanCoreLoraLoader", "pos": (420, 1000), "links": {"model": (20, 0)},
                   "widgets": {"lora_name": LIGHTNING[1], "strength": 1.0}}]
        pair["links"] = {"high_noise_model": (22, 0), "low_noise_model": (23, 0)}
        pair["widgets"].update(cfg_high=1.0, cfg_low=1.0)
        sampler["widgets"].update(steps=4, shift=5.0, sampler="euler", cfg=1.0)
    return nodes


def _ti2v(prefix: str, image: bool) -> list[dict]:
    """The Wan2.2 TI2V-5B model with its own VAE at the official 1280x704, 121 frames, 24 fps: text to video, or
    (``image``) a start image as the first latent frame (no CLIP vision)."""
    nodes = _t2v("wan2.2_ti2v_5B_fp16.safetensors", 1280, 704, prefix)
    by_type = {n["type"]: n for n in nodes}
    by_type["WanCoreVAELoader"]["widgets"]["vae_name"] = "wan2.2_vae.safetensors"
    by_type["WanCoreSampler"]["widgets"].update(frames=121, steps=50, shift=5.0, cfg=5.0)
    by_type["WanCoreVideoWriter"]["widgets"]["fps"] = 24.0
    if image:
        by_type["WanCoreTextEncode"]["widgets"]["positive"] = I2V_PROMPT
        by_type["WanCoreSampler"]["links"]["image_embeds"] = (10, 0)
        nodes += [
            {"id": 8, "type": "LoadImage", "pos": (40, 560), "widgets": {"image": "start_frame.png"}},
            {"id": 10, "type": "WanCoreImageToVideo", "pos": (400, 560),
             "links": {"vae": (3, 0), "start_image": (8, 0)},
             "widgets": {"width": 1280, "height": 704, "frames": 121, "keep_aspect": True}},
        ]
    return nodes


LONG_PROMPT = ("A red fox trots through fresh snow in a birch forest, the camera tracking beside it as it passes "
               "frozen streams and fallen trees, soft golden light, cinematic, one continuous shot.")


def _long_t2v() -> list[dict]:
    """241 frames (15 s) of t2v 1.3B through context windows of 81 frames overlapping by 30 (static, pyramid)."""
    nodes = _t2v("wan2.1_t2v_1.3B_fp16.safetensors", 832, 480, "WanCore/t2v_long_241")
    nodes[3]["widgets"]["positive"] = LONG_PROMPT
    nodes[4]["widgets"]["frames"] = 241
    nodes[4]["links"]["context"] = (30, 0)
    nodes.append({"id": 30, "type": "WanCoreContextWindows", "pos": (420, 700),
                  "widgets": {"context_frames": 81, "context_overlap": 30, "schedule": "static", "fuse": "pyramid"}})
    return nodes


def _four_gpus() -> list[dict]:
    """t2v 14B 720p on 4 GPUs of one machine: the sampler's GPU and 3 workers, ulysses 2 x cfg 2."""
    nodes = _t2v("wan2.1_t2v_14B_fp8_e4m3fn.safetensors", 1280, 720, "WanCore/t2v_14B_4gpu")
    nodes[4]["links"]["parallel"] = (40, 0)
    nodes.append({"id": 40, "type": "WanCoreParallel", "pos": (420, 560),
                  "widgets": {"ulysses": 2, "cfg": 2, "gpus": "", "timeout_s": 600, "ring": 1}})
    return nodes


def _extended(nodes: list[dict], frames: int, conditioning: dict) -> list[dict]:
    """``nodes`` (a render) continued by Wan Extend to ``frames`` in latent space, decoded once at the end."""
    sampler = next(n for n in nodes if n["type"] == "WanCoreSampler")
    decode = next(n for n in nodes if n["type"] == "WanCoreVAEDecode")
    widgets = {k: sampler["widgets"][k] for k in ("seed", "steps", "cfg", "shift", "sampler")}
    nodes.append({"id": 31, "type": "WanCoreExtend", "pos": (1200, 420),
                  "links": {"model": sampler["links"]["model"], "embeds": sampler["links"]["embeds"],
                            "latent": (sampler["id"], 0), **conditioning},
                  "widgets": {"frames": frames, "overlap": 16, "segment_frames": 81, **widgets}})
    decode["links"]["latent"] = (31, 0)
    return nodes


def _i2v_extended() -> list[dict]:
    """An 81-frame i2v 480p clip extended to 321 frames (20 s at 16 fps), conditioned through the image embeds."""
    nodes = _i2v("wan2.1_i2v_480p_14B_fp8_e4m3fn.safetensors", 832, 480, "WanCore/i2v_480p_20s", shift=3.0,
                 steps=40)
    return _extended(nodes, 321, {"image_embeds": (10, 0)})


def _vace_extended() -> list[dict]:
    """A VACE 1.3B text-to-video clip (VACE conditioning without control) extended to 241 frames by the VACE extend
    recipe in latent space."""
    nodes = _t2v("wan2.1_vace_1.3B_fp16.safetensors", 832, 480, "WanCore/vace_extend_241")
    nodes[4]["links"]["vace"] = (20, 0)
    nodes.append({"id": 20, "type": "WanCoreVACEConditioning", "pos": (400, 560), "links": {"vae": (3, 0)},
                  "widgets": {"width": 832, "height": 480, "frames": 81, "strength": 1.0}})
    return _extended(nodes, 241, {"vace": (20, 0)})


WORKFLOWS = {
    "wan2.1_t2v_1.3B": lambda: _t2v("wan2.1_t2v_1.3B_fp16.safetensors", 832, 480, "WanCore/t2v_1.3B"),
    "wan2.1_t2v_14B": lambda: _t2v("wan2.1_t2v_14B_fp8_e4m3fn.safetensors", 1280, 720, "WanCore/t2v_14B"),
    "wan2.1_v2v_1.3B": _v2v,
    "wan2.1_t2v_1.3B_upscale": lambda: _t2v("wan2.1_t2v_1.3B_fp16.safetensors", 832, 480, "WanCore/t2v_upscaled",
                                            upscale=True),
    "wan2.1_i2v_480p": lambda: _i2v("wan2.1_i2v_480p_14B_fp8_e4m3fn.safetensors", 832, 480, "WanCore/i2v_480p",
                                    shift=3.0, steps=40),
    "wan2.1_i2v_720p": lambda: _i2v("wan2.1_i2v_720p_14B_fp8_e4m3fn.safetensors", 1280, 720, "WanCore/i2v_720p",
                                    shift=5.0, steps=40),
    "wan2.1_flf2v_720p": lambda: _i2v("wan2.1_flf2v_720p_14B_fp16.safetensors", 1280, 720, "WanCore/flf2v_720p",
                                      shift=16.0, steps=50, end=True),
    "wan2.1_i2v_480p_image_chain": lambda: _i2v("wan2.1_i2v_480p_14B_fp8_e4m3fn.safetensors", 832, 480,
                                                "WanCore/i2v_chain", shift=3.0, steps=40, chain=True),
    "wan2.2_t2v_A14B": lambda: _pair("t2v", "WanCore/wan22_t2v_A14B"),
    "wan2.2_i2v_A14B": lambda: _pair("i2v", "WanCore/wan22_i2v_A14B"),
    "wan2.2_t2v_A14B_lightning_4step": lambda: _pair("t2v", "WanCore/wan22_t2v_A14B_4step", lightning=True),
    "wan2.2_ti2v_5B_t2v": lambda: _ti2v("WanCore/wan22_ti2v_5B", image=False),
    "wan2.2_ti2v_5B_i2v": lambda: _ti2v("WanCore/wan22_ti2v_5B_i2v", image=True),
    "wan2.1_t2v_1.3B_241_context_windows": _long_t2v,
    "wan2.1_i2v_480p_extend_20s": _i2v_extended,
    "wan2.1_vace_1.3B_extend_latent": _vace_extended,
    "wan2.1_t2v_14B_4gpu": _four_gpus,
}


def main() -> None:
    classes = _pack()
    out = ROOT / "example_workflows"
    out.mkdir(exist_ok=True)
    for name, make in WORKFLOWS.items():
        (out / f"{name}.json").write_text(json.dumps(build(make(), classes), indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
