"""The render context: everything that varies per render and is not the loaded model (DESIGN §9).

One :class:`RenderContext` is built per render and handed to :func:`~wan_core.sample` and to the
DiT. It names the compute device and dtype, the attention backend, the block runner and the
weight patches. ComfyUI caches node outputs and one loaded model feeds many graphs and queue
runs, so none of this is ever stored on the model: per-render views and state live here. Step
caches and block streaming are runners (or wrap one); they keep their per-render state in the
runner object of this context, so a new context starts clean.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import InputError
from .attention import DEFAULT_ATTENTION, AttentionFn, get_attention
from .fp8_matmul import fp8_view, render_scaling
from .memory_plan import MemoryPlan
from .patches import WeightPatch, patched_view, stack_patches
from .placement import COMPUTE_DTYPES
from .runners import BlockRunner, ResidentRunner
from .streaming import placed_view

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RenderContext:
    """Per-render settings and state; the default reproduces a plain resident fp32-on-CPU render."""

    device: torch.device | None = None  # where the render computes; None: where the model's weights are
    compute_dtype: torch.dtype | None = None  # matrix-product dtype; None: the model's own (its placement)
    attention: str = DEFAULT_ATTENTION  # attention backend, by name (see runtime.attention)
    runner: BlockRunner = field(default_factory=ResidentRunner)  # executes the DiT's block loop
    patches: Mapping[str, WeightPatch] = field(default_factory=dict)  # {DiT parameter name: patch}
    precompute_keys_values: bool = True  # every block's text / image keys, values once per render (2 x layers x text)
    plan: MemoryPlan | None = None  # streamed blocks, CFG one branch at a time, feed-forward chunks (memory_plan)
    replan: Callable[[int], MemoryPlan] | None = None  # budget (bytes) -> plan: remakes it after running out of memory
    fp8_matmul: bool | None = None  # fp8 layers multiply in fp8 (fp8_matmul.render_scaling); None: as the model asks
    parallel: object | None = None  # a ParallelGroups: this rank's share of a render over several processes
    _views: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # id(model) -> patched view
    _reused: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # key -> (sources, value)
    _shrunk: bool = field(default=False, init=False, repr=False, compare=False)  # the plan was remade (OOM)

    def __post_init__(self) -> None:
        get_attention(self.attention)  # unknown or unusable backends fail when the context is made
        if self.compute_dtype is not None and self.compute_dtype not in COMPUTE_DTYPES:
            raise InputError(f"compute dtype {self.compute_dtype} is not one of fp32, bf16, fp16")
        if self.device is not None:
            object.__setattr__(self, "device", torch.device(self.device))

    @property
    def attend(self) -> AttentionFn:
        """The attention kernel: q ``[B, Lq, heads, d]``, k / v ``[B, Lk, heads, d]`` -> ``[B, Lq, heads * d]``."""
        return get_attention(self.attention).attend

    def dtype_for(self, model: nn.Module) -> torch.dtype:
        """This render's compute dtype, else the model's own ``compute_dtype``."""
        return self.compute_dtype or getattr(model, "compute_dtype", torch.float32)

    def device_for(self, model: nn.Module) -> torch.device:
        """This render's device, else the device of the model's first parameter."""
        if self.device is not None:
            return self.device
        return next(model.parameters()).device

    def reuse(self, key, sources: tuple, compute: Callable[[], object]):
        """``compute()``, or its value from earlier in this render when called with the very same ``sources``
        (the same tensor objects: the sampler hands the model one prompt tensor for every step).

        A render context serves one render: its inputs are not changed in place while it runs.
        """
        held = self._reused.get(key)
        if held is not None and len(held[0]) == len(sources) and all(a is b for a, b in zip(held[0], sources)):
            return held[1]
        value = compute()
        self._reused[key] = (sources, value)  # holding the sources keeps their identities from being reused
        return value

    def patches_for(self, model: nn.Module) -> Mapping[str, WeightPatch]:
        """The patches a render of ``model`` applies: those the model handle carries (its LoRAs, see
        :func:`wan_core.apply_loras`), then this context's own."""
        carried = getattr(model, "weight_patches", None)
        return stack_patches(carried, self.patches) if carried else self.patches

    def patched(self, model: nn.Module) -> nn.Module:
        """``model`` with this render's patches, fp8 matrix products and streamed blocks (a view made once per render
        and model), or ``model`` itself when there are none."""
        key = id(model)
        if key in self._views:
            return self._views[key][1]
        patches = self.patches_for(model)
        scaling = render_scaling(model, self.device_for(model), self.fp8_matmul)
        view = patched_view(model, patches, self.dtype_for(model)) if patches else model
        if scaling is not None:
            view = fp8_view(view, scaling)
        streamer = None
        if self.plan is not None and self.plan.streamed:
            view, streamer = placed_view(view, self.device_for(model), self.plan.streamed, self.plan.prefetch)
        self._views[key] = (model, view, streamer)  # also the model itself: this render's choices are made once
        return view

    def streamer_for(self, model: nn.Module):
        """The block streamer of this render's view of ``model`` (bytes placed and their peak), or None."""
        held = self._views.get(id(model))
        return None if held is None else held[2]

    def release(self) -> None:
        """Drop this render's device copies (placed and patched views, kept keys / values): after a failure, so
        that nothing of the render stays on the device while its error is reported."""
        self._views.clear()
        self._reused.clear()

    def shrink_plan(self) -> bool:
        """After the device ran out of memory: remake the plan once, for 3/4 of the bytes the failed one meant to
        use, and drop this render's placed views (their memory is freed). False when there is nothing to remake
        (no plan or no ``replan``) or it was remade already. A budget too small for any plan raises
        :class:`InputError` with the minimum."""
        if self.plan is None or self.replan is None or self._shrunk:
            return False
        smaller = self.replan(int(min(self.plan.peak, self.plan.budget) * 3 // 4))
        log.warning("out of device memory with %s; retrying the step with %s", self.plan.describe(),
                    smaller.describe())
        object.__setattr__(self, "_shrunk", True)  # per-render state: once per render,
        object.__setattr__(self, "plan", smaller)  # and the plan this render runs from now on
        self._views.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return True

