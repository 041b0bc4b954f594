"""load_dit: every layout and storage dtype gives the same model; bad files fail clearly, early."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file
from tiny import T2V, inputs, random_official_state

import wan_core
from wan_core.errors import CheckpointError
from wan_core.models.config import DiTConfig

FP8_MAX = torch.finfo(torch.float8_e4m3fn).max


@pytest.fixture(scope="module")
def state():
    return random_official_state(T2V, seed=11)


def _output(model, cfg=T2V):
    x, t, context, _, _ = inputs(cfg)
    with torch.no_grad():
        return model(x, t, context)


def _rel(a, b):
    """Max abs difference relative to the reference's max magnitude."""
    return ((a - b).abs().max() / b.abs().max()).item()


def _rms_rel(a, b):
    """RMS difference relative to the reference's RMS (the scale quantization noise is judged on)."""
    return ((a - b).norm() / b.norm()).item()


SAME = 1e-5  # the same weights through another file layout: equal up to fp32 kernel rounding
# fp8 e4m3 keeps 3 mantissa bits where bf16 keeps 7: its rounding error per weight is 2^4 = 16x
# larger, and to first order the output error scales with it. The bound is that ratio with a 2x
# margin over the bf16 error of the same weights measured in the same test.
FP8_VS_BF16 = 32


def _fp8_bound(state, tmp_path):
    """Allowed RMS error of an fp8 model: FP8_VS_BF16 x the bf16-rounded model's measured error."""
    exact = _output(wan_core.load_dit(_save(state, tmp_path)))
    rounded = {k: v.to(torch.bfloat16) for k, v in state.items()}
    bf16 = _output(wan_core.load_dit(_save(rounded, tmp_path, "bf16.safetensors")))
    return exact, FP8_VS_BF16 * _rms_rel(bf16, exact)


def _diffusers_layout(state):
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    return convert_wan_transformer_to_diffusers(dict(state))


def test_all_layouts_give_the_same_model(state, tmp_path):
    files = {
        "official.safetensors": state,
        "comfyui.safetensors": {f"model.diffusion_model.{k}": v for k, v in state.items()},
        "diffusers.safetensors": _diffusers_layout(state),
    }
    for name, tensors in files.items():
        save_file(tensors, tmp_path / name)
    torch.save(state, tmp_path / "official.pth")
    expected = _output(wan_core.load_dit(tmp_path / "official.safetensors"))
    for name in [*files, "official.pth"]:
        model = wan_core.load_dit(tmp_path / name)
        assert model.config == T2V, name
        assert _rel(_output(model), expected) <= SAME, name


def test_weights_stay_in_the_file_mapping(state, tmp_path):
    """No second copy: every parameter of an fp32 file is a view into the one memory-mapped storage."""
    save_file(state, tmp_path / "m.safetensors")
    model = wan_core.load_dit(tmp_path / "m.safetensors")
    storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    assert len(storages) == 1
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_files(state, tmp_path, dtype):
    """A bf16/fp16 file computes in fp32 on CPU: exactly the fp32 model with rounded weights."""
    rounded = {k: v.to(dtype) for k, v in state.items()}
    save_file(rounded, tmp_path / "half.safetensors")
    save_file({k: v.float() for k, v in rounded.items()}, tmp_path / "rounded32.safetensors")
    model = wan_core.load_dit(tmp_path / "half.safetensors")
    assert {p.dtype for p in model.parameters()} == {dtype}
    got = _output(model)
    assert _rel(got, _output(wan_core.load_dit(tmp_path / "rounded32.safetensors"))) <= SAME
    assert _rel(got, _output(wan_core.load_dit(_save(state, tmp_path)))) <= 2e-2  # rounding of the weights


def _save(state, tmp_path, name="fp32.safetensors"):
    save_file(state, tmp_path / name)
    return tmp_path / name


def _scaled_fp8(state):
    """A ComfyUI-style scaled fp8 file: Linear weights as fp8(w / s) with s = absmax / 448 per tensor."""
    out = {"scaled_fp8": torch.zeros(0, dtype=torch.float8_e4m3fn)}
    for key, value in state.items():
        if key.endswith(".weight") and value.dim() == 2:
            scale = value.abs().max() / FP8_MAX
            out[key] = (value / scale).to(torch.float8_e4m3fn)
            out[key[: -len("weight")] + "scale_weight"] = scale.reshape(1)
        else:
            out[key] = value
    return {f"model.diffusion_model.{k}": v for k, v in out.items()}


def test_scaled_fp8_file(state, tmp_path):
    """Matches the fp32 model on the dequantized weights exactly, and the original within fp8 error."""
    scaled = _scaled_fp8(state)
    save_file(scaled, tmp_path / "fp8.safetensors")
    dequantized = {}
    for key, value in state.items():
        fp8 = scaled[f"model.diffusion_model.{key}"]
        scale = scaled.get(f"model.diffusion_model.{key[: -len('weight')]}scale_weight")
        dequantized[key] = fp8.float() * scale if scale is not None else value
    model = wan_core.load_dit(tmp_path / "fp8.safetensors")
    assert model.blocks[0].self_attn.q.weight.dtype == torch.float8_e4m3fn
    got = _output(model)
    assert _rel(got, _output(wan_core.load_dit(_save(dequantized, tmp_path, "deq.safetensors")))) <= SAME
    exact, bound = _fp8_bound(state, tmp_path)
    assert _rms_rel(got, exact) <= bound
    as_bf16 = wan_core.load_dit(tmp_path / "fp8.safetensors", storage_dtype=torch.bfloat16)  # dequantized at load
    assert as_bf16.blocks[0].self_attn.q.weight.dtype == torch.bfloat16
    assert _rel(_output(as_bf16), got) <= 2e-2


def test_fp8_storage_requested_at_load(state, tmp_path):
    model = wan_core.load_dit(_save(state, tmp_path), storage_dtype=torch.float8_e4m3fn)
    assert model.blocks[0].ffn[0].weight.dtype == torch.float8_e4m3fn
    assert model.blocks[0].norm3.weight.dtype == torch.float32  # norms and biases keep their precision
    exact, bound = _fp8_bound(state, tmp_path)
    assert _rms_rel(_output(model), exact) <= bound


def test_truncated_file(state, tmp_path):
    path = _save(state, tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match="truncated") as err:
        wan_core.load_dit(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(("keys", "named"), [
    (["encoder.conv1.weight", "decoder.conv1.weight", "conv1.weight", "conv2.weight"], "a Wan VAE"),
    (["shared.weight", "encoder.block.0.layer.0.SelfAttention.q.weight"], "a UMT5 text encoder"),
    (["vision_model.embeddings.patch_embedding.weight"], "a CLIP vision encoder"),
])
def test_another_kind_of_file_is_named(tmp_path, keys, named):
    path = tmp_path / "other.safetensors"
    save_file({k: torch.zeros(2, 2) for k in keys}, path)
    with pytest.raises(CheckpointError, match=f"is {named}, not a Wan2.1 diffusion model") as err:
        wan_core.load_dit(path)
    assert str(path) in str(err.value)


def test_missing_block_and_missing_key(tmp_path):
    cfg = DiTConfig("t2v", dim=256, ffn_dim=384, num_layers=3, text_dim=64)
    state = random_official_state(cfg)
    no_block = {k: v for k, v in state.items() if not k.startswith("blocks.1.")}
    with pytest.raises(CheckpointError, match=r"blocks \[1\] are missing"):
        wan_core.load_dit(_save(no_block, tmp_path, "noblock.safetensors"))
    no_key = {k: v for k, v in state.items() if k != "blocks.2.cross_attn.k.weight"}
    with pytest.raises(CheckpointError, match="1 missing: blocks.2.cross_attn.k.weight"):
        wan_core.load_dit(_save(no_key, tmp_path, "nokey.safetensors"))
    wrong = dict(state, **{"blocks.0.ffn.2.weight": torch.zeros(256, 100)})
    with pytest.raises(CheckpointError, match=r"mismatched: blocks.0.ffn.2.weight: file \(256, 100\)"):
        wan_core.load_dit(_save(wrong, tmp_path, "wrong.safetensors"))


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_code_is_never_run(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"blocks.0.self_attn.q.weight": _Payload()}, f)
    with pytest.raises(CheckpointError, match="never unpickled"):
        wan_core.load_dit(path)
    assert "must never run" not in capsys.readouterr().out


def test_missing_file_and_not_safetensors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        wan_core.load_dit(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        wan_core.load_dit(junk)
