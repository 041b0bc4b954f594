"""wan_core: the Wan2.1 video engine in pure PyTorch (no ComfyUI imports; see DESIGN.md §3)."""

from .clip_vision import ClipVision, load_clip_vision
from .config import PRESETS, DiTConfig, detect
from .constants import LATENT_MEAN, LATENT_STD, NEGATIVE_PROMPT
from .dit import WanDiT
from .dit_loading import load_dit
from .errors import CheckpointError, InputError, RenderInterrupted, WanCoreError
from .latents import denormalize_latents, normalize_latents
from .pipeline import ImageEmbeds, TextEmbeds, image_to_video, text_to_video
from .sampling import SAMPLERS, sample
from .text_encoder_loading import TextEncoder, load_text_encoder
from .vae import WanVAE
from .vae_loading import load_vae
from .video_io import Clip, read_metadata, read_video, write_video

__all__ = [
    "PRESETS", "DiTConfig", "detect", "LATENT_MEAN", "LATENT_STD", "NEGATIVE_PROMPT", "WanDiT", "load_dit",
    "CheckpointError", "InputError", "RenderInterrupted", "WanCoreError", "normalize_latents",
    "denormalize_latents", "SAMPLERS", "sample", "WanVAE", "load_vae", "TextEncoder", "load_text_encoder",
    "Clip", "read_metadata", "read_video", "write_video", "ImageEmbeds", "TextEmbeds", "text_to_video",
    "image_to_video", "ClipVision", "load_clip_vision",
]
