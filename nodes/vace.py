"""VACE nodes: the conditioning of a Wan2.1 VACE model, and sources for extending and outpainting a clip."""

from __future__ import annotations

from ..wan_core import extension_source, outpaint_source, vace_conditioning
from . import host

_SIZE = {"width": ("INT", {"default": 832, "min": 16, "max": 2048, "step": 16, "tooltip": "Output width (x16)."}),
         "height": ("INT", {"default": 480, "min": 16, "max": 2048, "step": 16, "tooltip": "Output height (x16)."}),
         "frames": ("INT", {"default": 81, "min": 5, "max": 1025, "step": 4, "tooltip": "4n+1 frames."})}


class WanCoreVACEConditioning:
    DESCRIPTION = ("Builds the conditioning of a Wan2.1 VACE model: a control video (depth, pose, edges... from "
                   "any preprocessor node, or a clip to keep parts of), a mask (white = generate, black = keep; "
                   "none: generate everything) and reference images (subjects to put in the video; each is fitted "
                   "onto a white frame). All optional: with none it is plain text-to-video. Connect it to "
                   "WanCoreSampler's vace input; the sampler renders at the size set here.")
    CATEGORY = "WanCore/conditioning"
    RETURN_TYPES = ("WANCORE_VACE_EMBEDS",)
    RETURN_NAMES = ("vace",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae": ("WANCORE_VAE", {"tooltip": "From WanCoreVAELoader: encodes the control frames and references."}),
            **_SIZE,
            "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01, "tooltip": "How strongly "
                         "the control, mask and references steer the video (1: as trained)."}),
        }, "optional": {
            "control_video": ("IMAGE", {"tooltip": "Frames that guide the video (resized to width x height; fewer "
                              "than frames: the rest is generated freely)."}),
            "mask": ("MASK", {"tooltip": "1 (white) = generate, 0 (black) = keep the control video's pixels; one "
                     "mask for all frames or one per frame."}),
            "reference_images": ("IMAGE", {"tooltip": "Subjects or styles to carry into the video (a batch: one "
                                 "reference per image)."}),
        }}

    def build(self, vae, width, height, frames, strength, control_video=None, mask=None, reference_images=None):
        references = () if reference_images is None else reference_images
        with host.on_compute_device(vae):
            embeds = vace_conditioning(vae, width, height, frames, control_video, mask, references, strength,
                                       interrupt=host.interrupt_requested)
        return (embeds,)


class WanCoreVACEExtend:
    DESCRIPTION = ("Makes the control video and mask that extend a clip: its frames are kept, the frames after "
                   "them generated. Connect both outputs to WanCoreVACEConditioning.")
    CATEGORY = "WanCore/conditioning"
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("control_video", "mask")
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip": ("IMAGE", {"tooltip": "The frames to continue from (at the output size)."}),
            "frames": _SIZE["frames"],
        }}

    def build(self, clip, frames):
        return extension_source(clip, frames)


class WanCoreVACEOutpaint:
    DESCRIPTION = ("Makes the control video and mask that outpaint a clip: it is placed on a larger canvas whose "
                   "new borders are generated. Connect both outputs to WanCoreVACEConditioning, sized to the "
                   "canvas (the clip's size plus the borders, x16).")
    CATEGORY = "WanCore/conditioning"
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("control_video", "mask")
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        border = lambda side: ("INT", {"default": 0, "min": 0, "max": 2048, "step": 8,  # noqa: E731
                                       "tooltip": f"Pixels added on the {side}."})
        return {"required": {
            "clip": ("IMAGE", {"tooltip": "The clip to widen or heighten."}),
            "left": border("left"), "right": border("right"), "top": border("top"), "bottom": border("bottom"),
        }}

    def build(self, clip, left, right, top, bottom):
        return outpaint_source(clip, left, right, top, bottom)
