"""Video file nodes: the writer (an output node with an in-node preview) and the loader."""

from __future__ import annotations

import json

from ..wan_core import MANIFEST_KEY, VideoFormat, extension, manifest_dumps, next_output_path, read_video, write_video
from . import host
from .manifest import manifest_from_prompt


class WanCoreVideoWriter:
    DESCRIPTION = ("Writes IMAGE frames to a video in the output folder and previews it in the node. Never "
                   "overwrites a file; an interrupted write leaves nothing behind. mp4 plays everywhere, webm in "
                   "browsers, mov (ProRes) is for editing, png keeps every frame lossless.")
    CATEGORY = "WanCore/video"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    OUTPUT_NODE = True
    FUNCTION = "write"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "Frames to write, in order."}),
            "fps": ("FLOAT", {"default": 16.0, "min": 1.0, "max": 240.0, "step": 0.001,
                              "tooltip": "Frames per second; Wan2.1 is trained at 16."}),
            "filename_prefix": ("STRING", {"default": "WanCore/video", "tooltip": "Name (and subfolders) inside "
                                           "the output folder; a counter is appended."}),
            "format": ([f.value for f in VideoFormat], {"default": "mp4", "tooltip": "mp4: H.264; mp4-h265: "
                       "smaller, less compatible; webm: VP9; gif; mov: ProRes 422; png: image sequence folder."}),
            "quality": ("INT", {"default": -1, "min": -1, "max": 51, "tooltip": "CRF for mp4 / webm: lower is "
                                "better and bigger; -1 uses the format's default (19 H.264, 24 H.265, 30 VP9)."}),
            "save_metadata": ("BOOLEAN", {"default": True, "tooltip": "Store the prompt and workflow in the file, "
                                          "so dragging it into ComfyUI restores the graph, and the run manifest "
                                          "(model files with their hashes, settings, versions)."}),
        }, "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    def write(self, images, fps, filename_prefix, format, quality, save_metadata, prompt=None, extra_pnginfo=None):
        root = host.output_directory()
        target = next_output_path(root, filename_prefix, extension(format))
        metadata = {}
        if save_metadata:
            metadata[MANIFEST_KEY] = manifest_dumps(manifest_from_prompt(prompt))
            if prompt is not None:
                metadata["prompt"] = json.dumps(prompt)
            if extra_pnginfo and "workflow" in extra_pnginfo:
                metadata["workflow"] = json.dumps(extra_pnginfo["workflow"])
        with host.cancellable() as interrupt:
            path = write_video(images, target, fps=fps, fmt=format, quality=None if quality < 0 else quality,
                               metadata=metadata, interrupt=interrupt, progress=host.stage_count("writing"))
        files = sorted(path.glob("*.png")) if path.is_dir() else [path]
        previews = [_ui_entry(f, root) for f in files]
        return {"ui": {"images": previews, "animated": (path.is_file(),)}, "result": (str(path),)}


class WanCoreLoadVideo:
    DESCRIPTION = "Loads frames from a video in the input folder (upload with the button) as IMAGE, for video-to-video."
    CATEGORY = "WanCore/video"
    RETURN_TYPES = ("IMAGE", "FLOAT", "INT")
    RETURN_NAMES = ("images", "fps", "frame_count")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "video": (host.list_input_videos(), {"video_upload": True, "tooltip": "A video in the input folder."}),
            "start": ("INT", {"default": 0, "min": 0, "max": 100000, "tooltip": "First frame to read (0-based)."}),
            "max_frames": ("INT", {"default": 81, "min": 0, "max": 100000, "tooltip": "How many frames at most "
                                   "(0: all). Use 4n+1 to feed WanCoreVAEEncode."}),
            "stride": ("INT", {"default": 1, "min": 1, "max": 100, "tooltip": "Keep every n-th frame (fps / n)."}),
            "width": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 16, "tooltip": "Resize to this width "
                              "(0 keeps the file's; set both width and height)."}),
            "height": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 16, "tooltip": "Resize to this height "
                               "(0 keeps the file's)."}),
        }}

    @classmethod
    def IS_CHANGED(cls, video, **_):
        path = host.input_path(video)
        return path.stat().st_mtime if path.exists() else float("nan")

    def load(self, video, start, max_frames, stride, width, height):
        size = (width, height) if width and height else None
        clip = read_video(host.input_path(video), start=start, max_frames=max_frames or None, stride=stride,
                          size=size)
        images = clip.images()
        return (images, float(clip.fps), int(images.shape[0]))


def _ui_entry(file, root) -> dict:
    """How ComfyUI's frontend finds an output file to preview: name, subfolder of output/, type."""
    sub = file.parent.resolve().relative_to(root.resolve()).as_posix()
    return {"filename": file.name, "subfolder": "" if sub == "." else sub, "type": "output"}
