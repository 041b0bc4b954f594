"""GGUF DiT files: every block format's dequantization equals the gguf package's bit for bit, a tiny DiT
written with the gguf writer loads and computes as its dequantized weights do, and the errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import T2V, inputs, random_official_state
from tiny_lora import block_modules, random_lora, write_lora

import wan_core
from wan_core.loading.dit import inspect_dit
from wan_core.models.quantized import BLOCKS, QuantizedLinear, dequantize

gguf = pytest.importorskip("gguf")

# where each format keeps its fp16 scale(s) inside a block (random bytes there are made valid fp16 numbers)
SCALE_BYTES = {"Q8_0": (0,), "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q2_K": (80, 82),
               "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def _random_blocks(qtype: str, rows: int, blocks_per_row: int, seed: int) -> np.ndarray:
    gen = np.random.default_rng(seed)
    _, size = BLOCKS[qtype]
    raw = gen.integers(0, 256, size=(rows * blocks_per_row, size), dtype=np.uint8)
    for offset in SCALE_BYTES[qtype]:
        scales = (gen.standard_normal(rows * blocks_per_row) * 0.05).astype(np.float16)
        raw[:, offset:offset + 2] = scales.view(np.uint8).reshape(-1, 2)
    return raw.reshape(rows, blocks_per_row * size)


@pytest.mark.parametrize("qtype", sorted(BLOCKS))
def test_dequantization_equals_the_gguf_package_bit_for_bit(qtype):
    values, _ = BLOCKS[qtype]
    raw = _random_blocks(qtype, rows=6, blocks_per_row=2, seed=len(qtype))
    expected = gguf.quants.dequantize(raw, getattr(gguf.GGMLQuantizationType, qtype))  # float32 [6, 2 * values]
    got = dequantize(torch.from_numpy(raw), qtype, (6, 2 * values))
    assert got.dtype == torch.float32 and torch.equal(got, torch.from_numpy(expected))


@pytest.mark.parametrize("qtype", sorted(BLOCKS))
def test_dequantization_in_chunks_is_the_same_bits(qtype, monkeypatch):
    """A weight larger than a chunk is dequantized a chunk at a time (bounded temporaries): the same bits as the
    gguf package's, in float32 and rounded once to bf16, with a last chunk that is not full."""
    import wan_core.runtime.memory as memory

    values, _ = BLOCKS[qtype]
    monkeypatch.setattr(memory, "DEQUANTIZE_CHUNK", 3 * values)  # 3 blocks per chunk, 16 blocks in all
    raw = _random_blocks(qtype, rows=8, blocks_per_row=2, seed=7)
    expected = torch.from_numpy(gguf.quants.dequantize(raw, getattr(gguf.GGMLQuantizationType, qtype)))
    assert torch.equal(dequantize(torch.from_numpy(raw), qtype, (8, 2 * values)), expected)
    assert torch.equal(dequantize(torch.from_numpy(raw), qtype, (8, 2 * values), torch.bfloat16),
                       expected.to(torch.bfloat16))


def _write_gguf(path, state, qtype: str, arch: str = "wan", declared: dict | None = None):
    """A GGUF as city96's converter writes one: Linear weights quantized (their input width a whole number of
    blocks), 1-D tensors F32, the 5-D patch embedding flattened with its shape in comfy.gguf.orig_shape
    (or the shape ``declared`` gives for it: a damaged file)."""
    writer = gguf.GGUFWriter(str(path), arch=arch)
    block = BLOCKS[qtype][0]
    dequantized = {}
    for name, value in state.items():
        data = value.numpy().astype(np.float32)
        if data.ndim == 2 and data.shape[1] % block == 0 and data.shape[0] > 16:
            packed = gguf.quants.quantize(data, getattr(gguf.GGMLQuantizationType, qtype))
            writer.add_tensor(name, packed, raw_dtype=getattr(gguf.GGMLQuantizationType, qtype))
            dequantized[name] = torch.from_numpy(gguf.quants.dequantize(packed, getattr(gguf.GGMLQuantizationType,
                                                                                        qtype)))
            continue
        if data.ndim > 4:
            writer.add_array(f"comfy.gguf.orig_shape.{name}", (declared or {}).get(name, list(data.shape)))
            data = data.reshape(data.shape[0], -1)
        writer.add_tensor(name, data)
        dequantized[name] = value
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dequantized


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q5_1"])
def test_a_gguf_dit_computes_as_its_dequantized_weights(tmp_path, qtype):
    state = random_official_state(T2V, seed=5)
    dequantized = _write_gguf(tmp_path / "dit.gguf", state, qtype)
    model = wan_core.load_dit(tmp_path / "dit.gguf")
    quantized = [m for m in model.modules() if isinstance(m, QuantizedLinear) and m.quantized]
    assert len(quantized) >= 10 * T2V.num_layers and all(m.weight.dtype == torch.uint8 for m in quantized)
    reference = wan_core.WanDiT(T2V)
    reference.load_state_dict({k: dequantized[k].reshape(v.shape) for k, v in state.items()})
    reference.eval().requires_grad_(False)
    x, t, context, _, _ = inputs(T2V, batch=2)
    with torch.no_grad():
        got, want = model(x, t, context), reference(x, t, context)
    assert ((got - want).norm() / want.norm()).item() <= 1e-5
    assert inspect_dit(tmp_path / "dit.gguf") == T2V

    lora = write_lora(tmp_path / "l.safetensors", random_lora(T2V, block_modules(T2V)))
    with torch.no_grad():
        on_gguf = wan_core.apply_loras(model, [(lora, 0.8)])(x, t, context)  # unmerged: the blocks stay packed
        on_plain = wan_core.apply_loras(reference, [(lora, 0.8)])(x, t, context)
    assert ((on_gguf - on_plain).norm() / on_plain.norm()).item() <= 1e-5
    view = wan_core.RenderContext().patched(wan_core.apply_loras(model, [(lora, 0.8)]))
    assert view.blocks[0].ffn[0].low_rank and view.blocks[0].ffn[0].weight.dtype == torch.uint8


@pytest.mark.parametrize("kind", ["i2v-A14B expert", "ti2v-5B"])
def test_wan22_gguf_files_load_detect_and_compute_as_their_dequantized_weights(tmp_path, kind):
    """city96's Wan2.2 GGUFs carry the same layout (arch ``wan``): an A14B i2v expert (36 input channels, no image
    branch) and the TI2V-5B (48 channels, one timestep per latent frame) are detected and compute as their
    dequantized weights."""
    from test_ti2v_dit import TI2V
    from test_wan22_dit import I2V22

    cfg = I2V22 if kind.startswith("i2v") else TI2V
    state = random_official_state(cfg, seed=7)
    dequantized = _write_gguf(tmp_path / "dit.gguf", state, "Q8_0")
    model = wan_core.load_dit(tmp_path / "dit.gguf")
    assert model.config == cfg and inspect_dit(tmp_path / "dit.gguf") == cfg
    reference = wan_core.WanDiT(cfg)
    reference.load_state_dict({k: dequantized[k].reshape(v.shape) for k, v in state.items()})
    reference.eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, cfg.in_dim if cfg.model_type == "ti2v" else 16, 3, 8, 10, generator=gen)
    context = torch.randn(1, 7, cfg.text_dim, generator=gen)
    if cfg.model_type == "ti2v":
        t, extra = torch.tensor([[0.0, 640.0, 640.0]]), {}
    else:
        t, extra = torch.tensor([700.0]), {"y": torch.randn(1, 20, 3, 8, 10, generator=gen)}
    with torch.no_grad():
        got, want = model(x, t, context, **extra), reference(x, t, context, **extra)
    assert ((got - want).norm() / want.norm()).item() <= 1e-5


def test_a_gguf_of_another_architecture_is_refused(tmp_path):
    _write_gguf(tmp_path / "llama.gguf", {"token_embd.weight": torch.zeros(64, 32)}, "Q8_0", arch="llama")
    with pytest.raises(wan_core.CheckpointError, match="architecture 'llama'.*'wan'"):
        wan_core.load_dit(tmp_path / "llama.gguf")
    (tmp_path / "broken.gguf").write_bytes(b"GGUF" + bytes(10))
    with pytest.raises(wan_core.CheckpointError, match="broken.gguf"):
        wan_core.load_dit(tmp_path / "broken.gguf")


def test_the_model_loader_lists_and_loads_gguf_files(tmp_path, monkeypatch):
    from workflow_runner import load_pack

    (tmp_path / "diffusion_models").mkdir()
    _write_gguf(tmp_path / "diffusion_models" / "wan_tiny-Q8_0.gguf", random_official_state(T2V, seed=5), "Q8_0")
    monkeypatch.setenv("WANCORE_MODELS", str(tmp_path))
    loader = load_pack().NODE_CLASS_MAPPINGS["WanCoreModelLoader"]
    assert "wan_tiny-Q8_0.gguf" in loader.INPUT_TYPES()["required"]["model_name"][0]
    model = loader().load("wan_tiny-Q8_0.gguf", "default")[0]
    assert any(getattr(m, "qtype", None) == "Q8_0" for m in model.modules())


def _write_declared(path, name: str, data: np.ndarray, qtype: str, orig_shape: list[int]) -> None:
    """A one-tensor Wan GGUF whose ``comfy.gguf.orig_shape`` entry declares ``orig_shape`` for ``data``."""
    writer = gguf.GGUFWriter(str(path), arch="wan")
    writer.add_array(f"comfy.gguf.orig_shape.{name}", orig_shape)
    if qtype == "F32":
        writer.add_tensor(name, data)
    else:
        kind = getattr(gguf.GGMLQuantizationType, qtype)
        writer.add_tensor(name, gguf.quants.quantize(data, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("qtype, orig_shape, says", [
    ("F32", [16, 4, 1, 2, 3], r"declares shape \[16, 4, 1, 2, 3\].*F32 takes 1536 bytes but the file stores 2048"),
    ("Q8_0", [40, 32], r"declares shape \[40, 32\].*Q8_0 takes 1360 bytes but the file stores 544"),
    ("Q8_0", [64, 16], r"declares shape \[64, 16\] and its rows of 16 values are not whole Q8_0 blocks of 32"),
])
def test_a_gguf_tensor_whose_bytes_do_not_match_its_declared_shape_is_refused_at_open(tmp_path, qtype, orig_shape,
                                                                                      says):
    """The file stores a [16, 32] float tensor (2048 bytes in F32, 16 rows x 1 block x 34 bytes in Q8_0); its
    declared shape says otherwise. Before the check the mismatch surfaced as a raw reshape error at load (or
    loaded a tensor whose rows mixed blocks); now opening the file names the tensor, both sizes and the fix."""
    data = np.random.default_rng(0).standard_normal((16, 32)).astype(np.float32)
    _write_declared(tmp_path / "bad.gguf", "blocks.0.ffn.0.weight", data, qtype, orig_shape)
    with pytest.raises(wan_core.CheckpointError, match=f"bad.gguf: tensor blocks.0.ffn.0.weight {says}.*again"):
        inspect_dit(tmp_path / "bad.gguf")


def test_a_dit_gguf_with_a_wrong_declared_shape_fails_to_load_naming_the_tensor(tmp_path):
    state = random_official_state(T2V, seed=5)
    shape = list(state["patch_embedding.weight"].shape)
    _write_gguf(tmp_path / "dit.gguf", state, "Q8_0", declared={"patch_embedding.weight": [shape[0] + 1, *shape[1:]]})
    with pytest.raises(wan_core.CheckpointError, match="dit.gguf: tensor patch_embedding.weight declares shape"):
        wan_core.load_dit(tmp_path / "dit.gguf")


def test_a_truncated_gguf_is_named_as_damaged(tmp_path):
    _write_gguf(tmp_path / "dit.gguf", random_official_state(T2V, seed=5), "Q8_0")
    data = (tmp_path / "dit.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) * 9 // 10])
    with pytest.raises(wan_core.CheckpointError, match="cut.gguf: not a readable GGUF.*interrupted download"):
        wan_core.load_dit(tmp_path / "cut.gguf")
