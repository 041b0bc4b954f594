"""Load the pack as ComfyUI does, and execute UI-format workflow files through its node classes.

Test-only helpers. Native ComfyUI nodes that the example workflows use are stood in for by the
small equivalents in :data:`NATIVE` (same sockets and widgets as ComfyUI's).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PACK_NAME = "comfyui_wancore_under_test"  # any folder name: ComfyUI names the package after its folder
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")


def load_pack():
    """Import the repository root by file location, as ComfyUI imports ``custom_nodes/<folder>``."""
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(PACK_NAME, ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module


class ImageScaleBy:
    """Stand-in for ComfyUI's native ImageScaleBy (IMAGE, upscale_method, scale_by) -> IMAGE."""

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",),
                             "upscale_method": (["nearest-exact", "bilinear", "area", "bicubic", "lanczos"],),
                             "scale_by": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 8.0, "step": 0.01})}}

    def upscale(self, image, upscale_method, scale_by):
        mode = "bicubic" if upscale_method == "lanczos" else upscale_method
        h, w = round(image.shape[1] * scale_by), round(image.shape[2] * scale_by)
        out = torch.nn.functional.interpolate(image.movedim(-1, 1), size=(h, w), mode=mode)
        return (out.movedim(1, -1).clamp(0, 1),)


class ImageScale:
    """Stand-in for ComfyUI's native ImageScale (IMAGE, upscale_method, width, height, crop) -> IMAGE."""

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",),
                             "upscale_method": (["nearest-exact", "bilinear", "area", "bicubic", "lanczos"],),
                             "width": ("INT", {"default": 512, "min": 0, "max": 16384, "step": 1}),
                             "height": ("INT", {"default": 512, "min": 0, "max": 16384, "step": 1}),
                             "crop": (["disabled", "center"],)}}

    def upscale(self, image, upscale_method, width, height, crop):
        h, w = image.shape[1:3]
        if crop == "center":  # crop to the target aspect first, as ComfyUI's common_upscale does
            target = width / height
            if w / h > target:
                cut = round((w - h * target) / 2)
                image = image[:, :, cut:w - cut]
            else:
                cut = round((h - w / target) / 2)
                image = image[:, cut:h - cut]
        mode = "bicubic" if upscale_method == "lanczos" else upscale_method
        out = torch.nn.functional.interpolate(image.movedim(-1, 1), size=(height, width), mode=mode)
        return (out.movedim(1, -1).clamp(0, 1),)


class LoadImage:
    """Stand-in for ComfyUI's native LoadImage: an image from the input folder -> IMAGE, MASK."""

    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ([], {"image_upload": True})}}

    def load(self, image):
        from wan_core.video import read_video

        host = load_pack().nodes.host
        frames = read_video(host.input_path(image)).images()[:1]
        return (frames, torch.ones(frames.shape[:3]))


class ImageInvert:
    """Stand-in for ComfyUI's native ImageInvert (IMAGE) -> IMAGE: 1 - image."""

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "invert"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",)}}

    def invert(self, image):
        return (1.0 - image,)


NATIVE = {"ImageScaleBy": ImageScaleBy, "ImageScale": ImageScale, "LoadImage": LoadImage, "ImageInvert": ImageInvert}
NATIVE_EXTRA_WIDGETS = {"LoadImage": ["upload"]}  # widget values the frontend stores beyond INPUT_TYPES


def node_classes() -> dict[str, type]:
    return {**load_pack().NODE_CLASS_MAPPINGS, **NATIVE}


def widget_inputs(cls) -> list[tuple[str, tuple]]:
    """(name, spec) of each widget input in order, with a ``None`` name for control-after-generate values."""
    out = []
    types = cls.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, spec in types.get(section, {}).items():
            kind = spec[0]
            if isinstance(kind, list) or kind in WIDGET_TYPES:
                out.append((name, spec))
                if len(spec) > 1 and spec[1].get("control_after_generate"):
                    out.append((None, spec))
    out += [(None, ("STRING",)) for _ in NATIVE_EXTRA_WIDGETS.get(cls.__name__, [])]
    return out


def _order(nodes: list[dict], links: dict[int, list]) -> list[dict]:
    done, ordered = set(), []
    pending = list(nodes)
    while pending:
        for node in pending:
            sources = {links[i["link"]][1] for i in node.get("inputs", []) if i.get("link") is not None}
            if sources <= done:
                ordered.append(node)
                done.add(node["id"])
                pending.remove(node)
                break
        else:
            raise ValueError("the workflow has a cycle")
    return ordered


def run_workflow(workflow: dict, overrides: dict[str, dict] | None = None) -> dict[int, tuple]:
    """Execute every node; ``overrides`` maps a node type (or a node id, applied after its type's) to widget values
    to replace. Returns outputs."""
    classes = node_classes()
    links = {link[0]: link for link in workflow["links"]}
    results: dict[int, tuple] = {}
    prompt: dict[str, dict] = {}  # the API-format prompt ComfyUI hands to hidden PROMPT inputs
    for node in _order(workflow["nodes"], links):
        cls = classes[node["type"]]
        kwargs = {}
        values = list(node.get("widgets_values", []))
        for (name, _spec), value in zip(widget_inputs(cls), values):
            if name is not None:
                kwargs[name] = value
        kwargs.update((overrides or {}).get(node["type"], {}))
        kwargs.update((overrides or {}).get(node["id"], {}))
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": dict(kwargs)}
        for socket in node.get("inputs", []):
            if socket.get("link") is not None:
                _, source, slot, *_ = links[socket["link"]]
                kwargs[socket["name"]] = results[source][slot]
        hidden = {"PROMPT": prompt, "EXTRA_PNGINFO": {"workflow": workflow}, "UNIQUE_ID": str(node["id"])}
        kwargs.update({name: hidden[kind] for name, kind in cls.INPUT_TYPES().get("hidden", {}).items()})
        out = getattr(cls(), cls.FUNCTION)(**kwargs)
        results[node["id"]] = out["result"] if isinstance(out, dict) else out
    return results


def load_workflow(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))
