"""A render job as plain values for another process: how to load its model, its settings, its tensors.

A worker of a parallel render (:mod:`.pool`) loads the very model the main process holds from the same files
(memory-mapped: the page cache is shared), so only the recipe travels: the DiT file and its placement, the LoRA
files and strengths, an expert pair's boundary and guidance. The job's tensors (prompt embeddings, start latent,
image / VACE conditioning, a stopped sampler's solver state) travel as one safetensors blob, its settings as the
manifest JSON they are written in; nothing is pickled.
"""

from __future__ import annotations

import json
from dataclasses import fields, is_dataclass

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from ..conditioning import ImageEmbeds, TextEmbeds
from ..errors import InputError
from ..sampling.request import SampleRequest
from ..sampling.settings import RenderSettings
from ..sampling.solvers import SolverState
from ..vace import VaceEmbeds

_PARTS = {"embeds": TextEmbeds, "image": ImageEmbeds, "vace": VaceEmbeds, "start_state": SolverState}


def model_recipe(model) -> dict:
    """What loads ``model`` again in another process: ``{"dit": load_dit's arguments, "loras": [[path, strength,
    unmerged], ...]}``, or ``{"pair": {...}}`` for an expert pair. Raises :class:`InputError` for a model that was
    not loaded from files (built in memory, a LoRA given as a read object)."""
    if getattr(model, "is_expert_pair", False):
        return {"pair": {"high": model_recipe(model.high), "low": model_recipe(model.low), "boundary": model.boundary,
                         "cfg_high": model.cfg_high, "cfg_low": model.cfg_low}}
    source = getattr(model, "source", None)
    if source is None:
        raise InputError("a parallel render loads the model again in each worker process, from its file: this "
                         "model was not loaded from a file by the model loader; load it from models/diffusion_models")
    loras = [list(entry) for entry in getattr(model, "lora_sources", ())]
    unnamed = [name for (name, _), (path, _, _) in zip(getattr(model, "loras", ()), loras) if path is None]
    if unnamed:
        raise InputError(f"a parallel render loads the LoRAs again in each worker process, from their files: LoRA "
                         f"{unnamed[0]} was given as a read object, not a file; load it from models/loras")
    return {"dit": dict(source), "loras": loras}


def load_recipe(recipe: dict, loaded: dict):
    """The model of ``recipe``; ``loaded`` keeps the plain DiTs by file (a worker loads each once and applies the
    LoRAs per render, which never changes the loaded model). A DiT no longer asked for is dropped from it."""
    from ..loading.dit import load_dit
    from ..lora import apply_loras
    from ..models.experts import ExpertPair

    if "pair" in recipe:
        pair = recipe["pair"]
        high, low = load_recipe(pair["high"], loaded), load_recipe(pair["low"], loaded)
        return ExpertPair(high, low, pair["boundary"], pair["cfg_high"], pair["cfg_low"])
    key = json.dumps(recipe["dit"], sort_keys=True)
    if key not in loaded:
        loaded[key] = load_dit(device="cpu", **recipe["dit"])
    model = loaded[key]
    for path, strength, unmerged in recipe["loras"]:
        model = apply_loras(model, [(path, strength)], unmerged)
    return model


def recipe_files(recipe: dict) -> set[str]:
    """The DiT files a recipe loads (what a worker keeps loaded)."""
    if "pair" in recipe:
        return recipe_files(recipe["pair"]["high"]) | recipe_files(recipe["pair"]["low"])
    return {json.dumps(recipe["dit"], sort_keys=True)}


def pack_job(job) -> tuple[str, bytes]:
    """A :class:`~wan_core.job.RenderJob` as a JSON header and a safetensors blob of its tensors."""
    tensors: dict[str, torch.Tensor] = {}
    header = {"model": model_recipe(job.model), "settings": job.settings.to_manifest(),
              "request": [job.request.width, job.request.height, job.request.frames, job.request.batch],
              "manifest": job.manifest}
    for name in ("latent", "fixed"):
        value = getattr(job, name)
        if value is not None:
            tensors[name] = value.contiguous()
            header[name] = True
    for name in _PARTS:
        value = getattr(job, name)
        if value is not None:
            header[name] = _pack_part(name, value, tensors)
    return json.dumps(header, default=str), save_tensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()})


def unpack_job(text: str, blob: bytes, loaded: dict):
    """The render job :func:`pack_job` packed, its model loaded through ``loaded`` (see :func:`load_recipe`)."""
    from ..job import RenderJob

    header, tensors = json.loads(text), load_tensors(blob)
    width, height, frames, batch = header["request"]
    parts = {name: _unpack_part(_PARTS[name], header[name], tensors) for name in _PARTS if name in header}
    return RenderJob(load_recipe(header["model"], loaded), parts["embeds"],
                     RenderSettings.from_manifest(header["settings"]), SampleRequest(width, height, frames, batch),
                     tensors.get("latent"), parts.get("image"), parts.get("vace"), header["manifest"],
                     parts.get("start_state"), tensors.get("fixed"))


def _pack_part(name: str, value, tensors: dict) -> dict:
    """A dataclass of tensors and plain values: its tensors into ``tensors`` (as ``name.field``, a dict field's as
    ``name.field.key``), the rest as JSON values."""
    out = {}
    for f in fields(value):
        item = getattr(value, f.name)
        if isinstance(item, torch.Tensor):
            tensors[f"{name}.{f.name}"] = item.contiguous()
            out[f.name] = {"tensor": f"{name}.{f.name}"}
        elif isinstance(item, dict):
            for key, tensor in item.items():
                tensors[f"{name}.{f.name}.{key}"] = tensor.contiguous()
            out[f.name] = {"tensors": {key: f"{name}.{f.name}.{key}" for key in item}}
        elif is_dataclass(item):  # an image's SampleRequest
            out[f.name] = {"request": [getattr(item, g.name) for g in fields(item)]}
        else:
            out[f.name] = item
    return out


def _unpack_part(cls, packed: dict, tensors: dict):
    values = {}
    for name, item in packed.items():
        if isinstance(item, dict) and "tensor" in item:
            values[name] = tensors[item["tensor"]]
        elif isinstance(item, dict) and "tensors" in item:
            values[name] = {key: tensors[stored] for key, stored in item["tensors"].items()}
        elif isinstance(item, dict) and "request" in item:
            values[name] = SampleRequest(*item["request"])
        else:
            values[name] = item
    return cls(**values)
