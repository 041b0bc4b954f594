"""The run manifest of a video written inside ComfyUI, read off the queued prompt (API format).

Every WanCore node's settings, and each model file the loaders name with its size and fast hash, so
the files a video was made from can be found and checked later. (The graph itself travels in the
``prompt`` / ``workflow`` metadata ComfyUI reads back when the video is dropped onto the canvas.)
"""

from __future__ import annotations

from ..wan_core import file_ref, manifest_versions
from . import host

LOADER_FILES = {
    ("WanCoreModelLoader", "model_name"): "diffusion_models",
    ("WanCoreTextEncoderLoader", "model_name"): "text_encoders",
    ("WanCoreVAELoader", "vae_name"): "vae",
    ("WanCoreCLIPVisionLoader", "clip_name"): "clip_vision",
    ("WanCoreLoraLoader", "lora_name"): "loras",
}


def manifest_from_prompt(prompt: dict | None) -> dict:
    """``{"graph": {node id: {"class_type", "inputs"}}, "models": {node id: file ref}, "versions"}``."""
    graph, models = {}, {}
    for node_id, node in (prompt or {}).items():
        kind = node.get("class_type", "")
        if not kind.startswith("WanCore"):
            continue
        inputs = {k: v for k, v in node.get("inputs", {}).items() if isinstance(v, (str, int, float, bool))}
        graph[node_id] = {"class_type": kind, "inputs": inputs}
        for (loader, field), folder in LOADER_FILES.items():
            if kind == loader and field in inputs:
                try:
                    models[node_id] = file_ref(host.model_path(folder, inputs[field]))
                except (OSError, host.HostError):
                    models[node_id] = {"name": inputs[field], "missing": True}
    return {"graph": graph, "models": models, "versions": manifest_versions()}
