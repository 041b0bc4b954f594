"""Sharded checkpoints (the official Wan2.1 14B and Wan2.2 A14B layout): given by any shard, the index or the folder,
they load equal to the single file; incomplete or mixed sets fail naming what is wrong."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from tiny import T2V, inputs, random_official_state

import wan_core
from wan_core.errors import CheckpointError

STEM = "diffusion_pytorch_model"


def _shard(state, folder, parts=3, index=True, prefix=""):
    """``state`` split over ``parts`` shards by key order, with (or without) the index file a release ships."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = sorted(state)
    weight_map = {}
    for i in range(parts):
        name = f"{STEM}-{i + 1:05d}-of-{parts:05d}.safetensors"
        part = {prefix + k: state[k] for k in keys[i::parts]}
        save_file(part, folder / name)
        weight_map.update(dict.fromkeys(part, name))
    if index:
        (folder / f"{STEM}.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


@pytest.fixture(scope="module")
def state():
    return random_official_state(T2V, seed=4)


def _out(model):
    x, t, context, _, _ = inputs(T2V)
    with torch.no_grad():
        return model(x, t, context)


@pytest.mark.parametrize("index", [True, False], ids=["index", "no-index"])
def test_a_sharded_checkpoint_loads_equal_to_the_single_file(state, tmp_path, index):
    save_file(state, tmp_path / "single.safetensors")
    single = wan_core.load_dit(tmp_path / "single.safetensors")
    expected, tensors = _out(single), single.state_dict()
    folder = _shard(state, tmp_path / "sharded", index=index, prefix="model.diffusion_model.")
    given = [folder, folder / f"{STEM}-00001-of-00003.safetensors", folder / f"{STEM}-00002-of-00003.safetensors"]
    if index:
        given.append(folder / f"{STEM}.safetensors.index.json")
    for path in given:
        model = wan_core.load_dit(path)
        assert model.config == T2V, path.name
        assert all(torch.equal(v, tensors[k]) for k, v in model.state_dict().items()), path.name
        assert ((_out(model) - expected).abs().max() / expected.abs().max()) <= 1e-5  # CPU kernels' rounding


def test_incomplete_or_mixed_shards_fail_naming_the_problem(state, tmp_path):
    folder = _shard(state, tmp_path / "a", index=False)
    (folder / f"{STEM}-00002-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError, match="00002-of-00003.safetensors is missing"):
        wan_core.load_dit(folder / f"{STEM}-00001-of-00003.safetensors")
    folder = _shard(state, tmp_path / "b")
    (folder / f"{STEM}-00003-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError, match="index.json names 3 shards but .*00003-of-00003.safetensors is missing"):
        wan_core.load_dit(folder)
    folder = _shard(state, tmp_path / "c", index=False)
    first = (folder / f"{STEM}-00001-of-00003.safetensors").read_bytes()
    (folder / f"{STEM}-00003-of-00003.safetensors").write_bytes(first)
    with pytest.raises(CheckpointError, match="also in another shard"):
        wan_core.load_dit(folder)
    folder = _shard(state, tmp_path / "d")
    index = folder / f"{STEM}.safetensors.index.json"
    weight_map = json.loads(index.read_text())["weight_map"]
    weight_map["blocks.9.ffn.0.weight"] = f"{STEM}-00001-of-00003.safetensors"
    index.write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match="lists 1 tensors the shards do not hold"):
        wan_core.load_dit(folder)
    save_file(state, folder / "another.safetensors")
    (folder / index.name).unlink()
    with pytest.raises(CheckpointError, match="not of one checkpoint"):
        wan_core.load_dit(folder)


def test_lists_show_the_first_shard_only(state, tmp_path, monkeypatch):
    """The model loader's list and the command line's pick see one model, named by its first shard."""
    from workflow_runner import load_pack

    from wan_core.cli import _pick

    folder = _shard(state, tmp_path / "diffusion_models", index=False)
    monkeypatch.setenv("WANCORE_MODELS", str(tmp_path))
    assert load_pack().nodes.host.list_models("diffusion_models") == [f"{STEM}-00001-of-00003.safetensors"]
    assert _pick(tmp_path, "dit", None) == folder / f"{STEM}-00001-of-00003.safetensors"
