"""Several processes (GPUs) for one render over ``torch.distributed``: sequence parallelism (Ulysses) and CFG
parallelism, launched by ``torchrun``."""

from .groups import ParallelGroups, ParallelSettings, cfg_parallel_denoiser, parallel_groups
from .sequence import SequenceParallelRunner, UlyssesAttention, check_degree, shard_bounds

__all__ = ["ParallelGroups", "ParallelSettings", "SequenceParallelRunner", "UlyssesAttention", "cfg_parallel_denoiser",
           "check_degree", "parallel_groups", "shard_bounds"]
