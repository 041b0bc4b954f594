"""Several processes (GPUs) for one render over ``torch.distributed``: sequence parallelism (Ulysses)."""

from .sequence import SequenceParallelRunner, UlyssesAttention, check_degree, shard_bounds

__all__ = ["SequenceParallelRunner", "UlyssesAttention", "check_degree", "shard_bounds"]
