"""UMT5 text encoder and tokenizer against transformers and the official wan code (random weights)."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from safetensors.torch import save_file
from tiny import dit_like_file, truncate
from tiny_text import PROMPTS, train_sentencepiece

import wan_core
from wan_core.errors import CheckpointError
from wan_core.loading.text_encoder import umt5_key_from_official
from wan_core.loading.tokenizer import clean_text, find_tokenizer
from wan_core.models.text_encoder import UMT5_XXL, UMT5Encoder

TOL = 1e-4
DIM, HEADS, FFN, LAYERS = 64, 4, 96, 2


@pytest.fixture(scope="session")
def spiece(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "spiece.model"
    path.write_bytes(train_sentencepiece())
    return path


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("cls_name", ["T5TokenizerFast", "T5Tokenizer"])
def test_tokenizer_matches_transformers(spiece, tmp_path, cls_name):
    import transformers

    reference = getattr(transformers, cls_name).from_pretrained(str(spiece.parent), extra_ids=0)
    save_file({"shared.weight": torch.zeros(2, 2), "encoder.block.0.layer.0.SelfAttention.q.weight": torch.zeros(2, 2)},
              tmp_path / "te.safetensors")
    ours = find_tokenizer(tmp_path / "te.safetensors", None, spiece)
    cleaned = [clean_text(p) for p in PROMPTS]  # the official pipeline cleans, then tokenizes
    want = reference(cleaned, padding="max_length", truncation=True, max_length=512, return_tensors="pt")
    ids, mask = ours(PROMPTS)
    assert torch.equal(ids, want.input_ids)
    assert torch.equal(mask, want.attention_mask)
    assert mask[-1].sum() == 512 and ids[-1, -1] == 1  # the long prompt is cut, its end token kept
    assert mask[4].sum() == 1  # the empty prompt is just the end token


def _hf_model(vocab):
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(vocab_size=vocab, d_model=DIM, d_kv=DIM // HEADS, d_ff=FFN, num_layers=LAYERS,
                        num_heads=HEADS, relative_attention_num_buckets=32, relative_attention_max_distance=128,
                        feed_forward_proj="gated-gelu", dropout_rate=0.0)
    torch.manual_seed(0)
    model = UMT5EncoderModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def _hf_state(model):
    """The HF state dict as a ComfyUI file has it (the tied copy of the embedding left out)."""
    return {k: v.clone() for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}


def test_encoder_matches_transformers_with_embedded_tokenizer(spiece, tmp_path):
    """A ComfyUI-style file (HF names, the tokenizer inside as ``spiece_model``) alone in its folder."""
    model = _hf_model(vocab=640)
    state = _hf_state(model)
    state["spiece_model"] = torch.frombuffer(bytearray(spiece.read_bytes()), dtype=torch.uint8)
    path = tmp_path / "alone" / "umt5_xxl_fp16.safetensors"
    path.parent.mkdir()
    save_file(state, path)
    encoder = wan_core.load_text_encoder(path)
    got = encoder.encode(PROMPTS)
    ids, mask = encoder.tokenizer(PROMPTS)
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).last_hidden_state * mask[..., None]
    assert got.shape == (len(PROMPTS), 512, DIM)
    assert _rel(got, want) <= TOL
    assert torch.all(got[mask == 0] == 0)


def _wan_t5():
    from benchmarks.references import wan_module

    with mock.patch("torch.cuda.current_device", lambda: "cpu"):  # a default argument evaluated at import
        return wan_module("modules.t5")


def test_encoder_matches_official_layout(spiece, tmp_path):
    t5 = _wan_t5()
    reference = t5.T5Encoder(vocab=640, dim=DIM, dim_attn=DIM, dim_ffn=FFN, num_heads=HEADS, num_layers=LAYERS,
                             num_buckets=32, shared_pos=False, dropout=0.0).eval()
    torch.save(reference.state_dict(), tmp_path / "models_t5_umt5-xxl-enc-bf16.pth")
    folder = tmp_path / "google" / "umt5-xxl"
    folder.mkdir(parents=True)
    (folder / "spiece.model").write_bytes(spiece.read_bytes())
    encoder = wan_core.load_text_encoder(tmp_path / "models_t5_umt5-xxl-enc-bf16.pth")
    ids, mask = encoder.tokenizer(PROMPTS)
    with torch.no_grad():
        states = reference(ids, mask)
    lengths = mask.sum(1)
    want = torch.zeros_like(states)
    for row, n in enumerate(lengths):  # the official T5EncoderModel returns u[:len]; the DiT pads zeros
        want[row, :n] = states[row, :n]
    assert _rel(encoder.encode(PROMPTS), want) <= TOL


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn])
def test_low_precision_storage_computes_in_fp32_without_an_fp32_copy(spiece, tmp_path, dtype):
    model = _hf_model(vocab=640)
    save_file(_hf_state(model), tmp_path / "te.safetensors")
    (tmp_path / "spiece.model").write_bytes(spiece.read_bytes())
    exact = wan_core.load_text_encoder(tmp_path / "te.safetensors").encode(PROMPTS[:3])
    low = wan_core.load_text_encoder(tmp_path / "te.safetensors", storage_dtype=dtype)
    linear = low.model.encoder.block[0].layer[1].DenseReluDense.wi_0.weight
    assert linear.dtype == dtype
    assert not any(p.dtype == torch.float32 and p.dim() == 2 and p.shape[0] > 100
                   for p in low.model.parameters() if p is not low.model.shared.weight)
    out = low.encode(PROMPTS[:3])
    assert out.dtype == torch.float32
    assert ((out - exact).norm() / exact.norm()).item() <= (0.02 if dtype == torch.bfloat16 else 0.25)


def test_real_xxl_keys_match_transformers_and_official_on_meta():
    from transformers import UMT5Config, UMT5EncoderModel

    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in UMT5Encoder(UMT5_XXL).state_dict().items()}
        hf = UMT5EncoderModel(UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
                                         num_heads=64, feed_forward_proj="gated-gelu"))
        official = _wan_t5().T5Encoder(vocab=256384, dim=4096, dim_attn=4096, dim_ffn=10240, num_heads=64,
                                       num_layers=24, num_buckets=32, shared_pos=False)
    hf_shapes = {k: tuple(v.shape) for k, v in hf.state_dict().items() if k != "encoder.embed_tokens.weight"}
    assert ours == hf_shapes
    assert {umt5_key_from_official(k): tuple(v.shape) for k, v in official.state_dict().items()} == ours


def test_missing_tokenizer_wrong_kind_and_truncated(tmp_path):
    model = _hf_model(vocab=640)
    path = tmp_path / "no_tokenizer.safetensors"
    save_file(_hf_state(model), path)
    with pytest.raises(CheckpointError, match="no UMT5 tokenizer found; looked for .*spiece.model"):
        wan_core.load_text_encoder(path)
    dit = tmp_path / "dit.safetensors"
    dit_like_file(dit)
    with pytest.raises(CheckpointError, match="is a Wan2.1 diffusion model .*, not a UMT5 text encoder"):
        wan_core.load_text_encoder(dit)
    truncate(path, keep=0.99)
    with pytest.raises(CheckpointError, match="truncated"):
        wan_core.load_text_encoder(path)
