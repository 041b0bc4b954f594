"""Per-render machinery that knows no particular network: context, attention, runners, placement, patches."""

from .attention import AttentionBackend, attention_backends, get_attention, register_backend, sdpa_attention
from .cache_settings import CACHE_KINDS, StepCacheSettings
from .context import RenderContext
from .memory_plan import UNLIMITED, MemoryPlan, plan_for, plan_memory, plan_text_encoder
from .patches import WeightDelta, WeightPatch, patched_view
from .placement import DTYPES, Placement, default_compute_dtype, parse_dtype, resolve_placement
from .runners import BlockRunner, CompiledRunner, InterruptibleRunner, ResidentRunner
from .step_cache import FirstBlockCache, MagCache, StepCache, TeaCache
from .streaming import module_bytes, placed_view

__all__ = ["AttentionBackend", "attention_backends", "get_attention", "register_backend", "sdpa_attention",
           "RenderContext", "WeightDelta", "WeightPatch", "patched_view", "DTYPES", "Placement",
           "default_compute_dtype", "parse_dtype", "resolve_placement", "BlockRunner", "CompiledRunner",
           "InterruptibleRunner",
           "ResidentRunner", "CACHE_KINDS", "FirstBlockCache", "MagCache", "StepCache", "StepCacheSettings",
           "TeaCache", "MemoryPlan", "UNLIMITED",
           "plan_for", "plan_memory", "plan_text_encoder", "module_bytes", "placed_view"]
