"""WanCoreTextEncode: prompts -> WANCORE_TEXT_EMBEDS."""

from __future__ import annotations

from ..wan_core import NEGATIVE_PROMPT, encode_text
from . import host


class WanCoreTextEncode:
    DESCRIPTION = ("Encodes the prompt and the negative prompt with UMT5. The encoder runs on the GPU and is moved "
                   "back off it afterwards, leaving the memory to the diffusion model; when it does not fit the free "
                   "GPU memory, its layers are copied over one by one (the plan shows in the log).")
    CATEGORY = "WanCore/conditioning"
    RETURN_TYPES = ("WANCORE_TEXT_EMBEDS",)
    RETURN_NAMES = ("embeds",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "text_encoder": ("WANCORE_TEXT_ENCODER", {"tooltip": "From WanCoreTextEncoderLoader."}),
            "positive": ("STRING", {"multiline": True, "default": "", "tooltip": "What the video shows. Up to 512 "
                                    "tokens are used; longer prompts are cut (a warning is logged)."}),
            "negative": ("STRING", {"multiline": True, "default": NEGATIVE_PROMPT, "tooltip": "What to steer away "
                                    "from (used with cfg > 1). Defaults to the official Wan2.1 negative prompt."}),
        }}

    def encode(self, text_encoder, positive, negative):
        return (encode_text(text_encoder, positive, negative, host.HOST),)
