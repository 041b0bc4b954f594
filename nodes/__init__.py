"""ComfyUI node classes (classic API). Only ``nodes/host.py`` may import ComfyUI services.

Reached only relatively from the pack root, never as a top-level ``nodes`` (ComfyUI has one).
"""

from .cache import WanCoreCache
from .experts import WanCoreExpertPair
from .extend import WanCoreExtend
from .image import WanCoreCLIPVisionLoader, WanCoreImageToVideo
from .loaders import WanCoreLoraLoader, WanCoreModelLoader, WanCoreTextEncoderLoader, WanCoreVAELoader
from .parallel import WanCoreParallel
from .sampler import WanCoreSampler
from .text import WanCoreTextEncode
from .vace import WanCoreVACEConditioning, WanCoreVACEExtend, WanCoreVACEOutpaint
from .vae import WanCoreVAEDecode, WanCoreVAEEncode
from .video import WanCoreLoadVideo, WanCoreVideoWriter
from .windows import WanCoreContextWindows

NODE_CLASS_MAPPINGS: dict[str, type] = {
    "WanCoreModelLoader": WanCoreModelLoader,
    "WanCoreTextEncoderLoader": WanCoreTextEncoderLoader,
    "WanCoreVAELoader": WanCoreVAELoader,
    "WanCoreTextEncode": WanCoreTextEncode,
    "WanCoreSampler": WanCoreSampler,
    "WanCoreVAEDecode": WanCoreVAEDecode,
    "WanCoreVAEEncode": WanCoreVAEEncode,
    "WanCoreVideoWriter": WanCoreVideoWriter,
    "WanCoreLoadVideo": WanCoreLoadVideo,
    "WanCoreCLIPVisionLoader": WanCoreCLIPVisionLoader,
    "WanCoreImageToVideo": WanCoreImageToVideo,
    "WanCoreCache": WanCoreCache,
    "WanCoreLoraLoader": WanCoreLoraLoader,
    "WanCoreVACEConditioning": WanCoreVACEConditioning,
    "WanCoreVACEExtend": WanCoreVACEExtend,
    "WanCoreVACEOutpaint": WanCoreVACEOutpaint,
    "WanCoreExpertPair": WanCoreExpertPair,
    "WanCoreContextWindows": WanCoreContextWindows,
    "WanCoreExtend": WanCoreExtend,
    "WanCoreParallel": WanCoreParallel,
}

NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    "WanCoreModelLoader": "Wan Model Loader (WanCore)",
    "WanCoreTextEncoderLoader": "Wan Text Encoder Loader (WanCore)",
    "WanCoreVAELoader": "Wan VAE Loader (WanCore)",
    "WanCoreTextEncode": "Wan Text Encode (WanCore)",
    "WanCoreSampler": "Wan Sampler (WanCore)",
    "WanCoreVAEDecode": "Wan VAE Decode (WanCore)",
    "WanCoreVAEEncode": "Wan VAE Encode (WanCore)",
    "WanCoreVideoWriter": "Wan Video Writer (WanCore)",
    "WanCoreLoadVideo": "Wan Load Video (WanCore)",
    "WanCoreCLIPVisionLoader": "Wan CLIP Vision Loader (WanCore)",
    "WanCoreImageToVideo": "Wan Image To Video (WanCore)",
    "WanCoreCache": "Wan Step Cache (WanCore)",
    "WanCoreLoraLoader": "Wan LoRA Loader (WanCore)",
    "WanCoreVACEConditioning": "Wan VACE Conditioning (WanCore)",
    "WanCoreVACEExtend": "Wan VACE Extend Clip (WanCore)",
    "WanCoreVACEOutpaint": "Wan VACE Outpaint Clip (WanCore)",
    "WanCoreExpertPair": "Wan Expert Pair (WanCore)",
    "WanCoreContextWindows": "Wan Context Windows (WanCore)",
    "WanCoreExtend": "Wan Extend (WanCore)",
    "WanCoreParallel": "Wan Parallel (WanCore)",
}
