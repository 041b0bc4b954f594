"""WanCoreTextEncode: prompts -> WANCORE_TEXT_EMBEDS."""

from __future__ import annotations

from ..wan_core import NEGATIVE_PROMPT, UNLIMITED, encode_prompts, plan_text_encoder
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
        device = host.compute_device()
        sizes = (2, text_encoder.tokens_used([positive, negative or NEGATIVE_PROMPT]))  # prompts, tokens
        whole = plan_text_encoder(text_encoder.model, device, UNLIMITED, *sizes).peak  # what ComfyUI makes room for
        budget = host.vram_budget(text_encoder.model, device, 0, whole)
        plan = plan_text_encoder(text_encoder.model, device, budget, *sizes)
        host.report(f"text encoder {plan.describe()}")
        if plan.streamed:  # the layers that do not fit are copied in one by one; the encoder itself stays put
            with host.cancellable() as interrupt, host.placed_per_render(device):
                embeds = encode_prompts(text_encoder, positive, negative, interrupt=interrupt, plan=plan,
                                        device=device)
            return (embeds,)
        with host.cancellable() as interrupt, host.on_compute_device(text_encoder):
            embeds = encode_prompts(text_encoder, positive, negative, interrupt=interrupt)
        return (embeds,)
