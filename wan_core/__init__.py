"""wan_core: the Wan2.1 video engine in pure PyTorch (no ComfyUI imports; see DESIGN.md §3).

Everything the nodes, the command line and scripts use is exported here:

* networks and their loaders (``models/``, ``loading/``): :func:`load_dit`, :func:`load_vae`,
  :func:`load_text_encoder`, :func:`load_clip_vision`;
* the render context and what it chooses (``runtime/``): :class:`RenderContext`, attention
  backends, block runners, weight patches, the placement policy;
* sampling (``sampling/``): :func:`sample`, :data:`SAMPLERS`;
* conditioning and whole tasks: :func:`encode_prompts`, :func:`image_conditioning`,
  :func:`text_to_video`, :func:`image_to_video`;
* the one render path every front end takes: :class:`RenderSettings` -> :class:`RenderJob` on a
  :class:`Host` (:class:`StandaloneHost` here; ComfyUI's in ``nodes/host.py``), and the text / VAE stages;
* video files (``video/``): :func:`write_video`, :func:`read_video`, frame layout helpers.
"""

from .conditioning import ImageEmbeds, TextEmbeds, encode_prompts
from .constants import (
    LATENT_MEAN,
    LATENT_STD,
    NEGATIVE_PROMPT,
    PIXEL_MULTIPLE,
    VAE_STRIDE,
    check_frame_count,
    check_pixel_size,
    latent_frames,
    video_frames,
)
from .errors import CheckpointError, InputError, OutputError, RenderError, RenderInterrupted, WanCoreError
from .extend import Extension, extend, extension_recipe
from .host import Host, StandaloneHost, device_of, log_progress
from .i2v import image_conditioning, size_for_area, ti2v_size
from .job import RenderJob
from .latents import denormalize_latents, latent_preview, normalize_latents, preview_side
from .loading.clip_vision import load_clip_vision
from .loading.dit import load_dit
from .loading.lora import LoraFile, read_lora
from .loading.shards import is_later_shard
from .loading.text_encoder import load_text_encoder
from .loading.vae import load_vae
from .lora import apply_loras, check_lora_fits, lora_patches
from .manifest import MANIFEST_KEY, fast_file_hash, file_ref, read_manifest
from .manifest import dumps as manifest_dumps
from .manifest import versions as manifest_versions
from .models.clip_vision import ClipVision
from .models.config import PRESETS, DiTConfig, detect
from .models.dit import WanDiT
from .models.experts import EXPERT_DEFAULTS, ExpertPair
from .models.text_encoder import TextEncoder
from .models.vae import WanVAE
from .models.vae_tiling import decode_bytes, decode_tiled, decode_with_fallback, encode_tiled, tile_for_budget
from .parallel import ParallelSettings
from .pipeline import (
    check_task,
    image_to_latent,
    image_to_video,
    text_to_latent,
    text_to_video,
    vace_to_latent,
    vace_to_video,
)
from .pool import PoolSpec, pool_devices, render_parallel, shutdown_pool
from .runtime import (
    CACHE_KINDS,
    DTYPES,
    UNLIMITED,
    AttentionBackend,
    BlockRunner,
    CompiledRunner,
    FirstBlockCache,
    MagCache,
    MemoryPlan,
    Placement,
    RenderContext,
    ResidentRunner,
    StepCacheSettings,
    TeaCache,
    WeightDelta,
    attention_backends,
    default_compute_dtype,
    get_attention,
    module_bytes,
    parse_dtype,
    plan_for,
    plan_memory,
    plan_text_encoder,
    register_backend,
    resolve_placement,
)
from .runtime.memory import available_bytes
from .sampling.loop import SAMPLERS, cfg_branches, check_render, check_tensors, sample, sample_pair
from .sampling.request import SampleRequest, check_seed
from .sampling.resume import ResumeFile, ResumeStore
from .sampling.settings import RenderSettings, setting_help
from .sampling.solvers import SolverState
from .sampling.windows import FUSE_METHODS, SCHEDULES, ContextWindows, PerWindowRunner
from .stages import TILINGS, decode_latent, encode_text, encode_video, vae_tile
from .vace import VaceEmbeds, extension_source, outpaint_source, vace_conditioning, vace_request
from .video import (
    METADATA_KEYS,
    Clip,
    VideoFormat,
    check_fps,
    extension,
    images_to_video,
    next_output_path,
    read_image,
    read_metadata,
    read_video,
    video_format,
    video_to_images,
    write_video,
)

__all__ = [
    # conditioning and tasks
    "ImageEmbeds", "TextEmbeds", "encode_prompts", "image_conditioning", "size_for_area", "ti2v_size", "image_to_video",
    "text_to_video", "image_to_latent", "text_to_latent", "check_task", "vace_to_latent", "vace_to_video",
    "VaceEmbeds", "vace_conditioning", "vace_request", "extension_source", "outpaint_source",
    # one render path: settings, job, host, the stages around the sampler
    "RenderSettings", "setting_help", "RenderJob", "Host", "StandaloneHost", "device_of", "log_progress", "encode_text",
    "decode_latent", "encode_video", "vae_tile", "TILINGS",
    # constants and checks
    "LATENT_MEAN", "LATENT_STD", "NEGATIVE_PROMPT", "PIXEL_MULTIPLE", "VAE_STRIDE", "check_frame_count",
    "check_pixel_size", "latent_frames", "video_frames",
    # run manifests
    "MANIFEST_KEY", "fast_file_hash", "file_ref", "manifest_dumps", "manifest_versions", "read_manifest",
    # errors
    "CheckpointError", "InputError", "OutputError", "RenderError", "RenderInterrupted", "WanCoreError",
    # latents
    "denormalize_latents", "latent_preview", "normalize_latents", "preview_side",
    # networks and loaders
    "load_clip_vision", "load_dit", "load_text_encoder", "load_vae", "LoraFile", "read_lora", "apply_loras",
    "is_later_shard",
    "check_lora_fits", "lora_patches", "ClipVision", "PRESETS", "DiTConfig", "detect",
    "WanDiT", "ExpertPair", "EXPERT_DEFAULTS", "TextEncoder", "WanVAE", "decode_bytes",
    "decode_tiled", "decode_with_fallback", "encode_tiled", "tile_for_budget",
    # runtime
    "CACHE_KINDS", "DTYPES", "AttentionBackend", "FirstBlockCache", "MagCache", "TeaCache", "StepCacheSettings",
    "BlockRunner",
    "CompiledRunner", "Placement", "RenderContext", "ResidentRunner", "WeightDelta", "MemoryPlan", "UNLIMITED",
    "plan_for", "plan_memory", "plan_text_encoder", "module_bytes",
    "attention_backends", "available_bytes", "default_compute_dtype", "get_attention", "parse_dtype",
    "register_backend", "resolve_placement",
    # sampling
    "SAMPLERS", "SampleRequest", "ResumeFile", "ResumeStore", "cfg_branches", "check_render", "check_seed",
    "check_tensors", "sample", "sample_pair", "SolverState", "ContextWindows", "PerWindowRunner", "FUSE_METHODS",
    "SCHEDULES", "Extension", "extend", "extension_recipe",
    # several processes (GPUs) for one render
    "ParallelSettings", "PoolSpec", "pool_devices", "render_parallel", "shutdown_pool",
    # video files
    "METADATA_KEYS", "Clip", "VideoFormat", "check_fps", "read_image", "extension", "images_to_video",
    "next_output_path", "read_metadata",
    "read_video", "video_format", "video_to_images", "write_video",
]
