"""LoRAs: parity with diffusers' Wan LoRA loading (its converters, PEFT) for every layout it reads, the
conversion table both ways, merged vs unmerged, stacks, strength 0, full deltas, and the errors."""

from __future__ import annotations

import hashlib
import logging

import pytest
import torch
from test_dit_parity import DIFFUSERS_TOL, _diffusers_model, _run_diffusers
from tiny import I2V, T2V, inputs, random_official_state
from tiny_lora import block_modules, random_lora, write_lora

import wan_core
from wan_core.loading.lora import FORMATS, ModuleNames, lora_key, parse_lora_key

STRENGTH = 0.7


def _model(cfg, seed=3):
    model = wan_core.WanDiT(cfg)
    model.load_state_dict(random_official_state(cfg, seed=seed))
    return model.eval().requires_grad_(False)


def _rel(a, b):
    """Relative L2 error of ``a`` against ``b``."""
    return ((a - b).norm() / b.norm()).item()


def _diffusers_with_lora(cfg, path, strength, seed=3):
    from diffusers.loaders.lora_pipeline import WanLoraLoaderMixin

    model = _diffusers_model(cfg, random_official_state(cfg, seed=seed))
    model.load_lora_adapter(WanLoraLoaderMixin.lora_state_dict(path), adapter_name="test", prefix="transformer")
    model.set_adapters(["test"], weights=[strength])
    return model


def _diffusers_fused_state(model) -> dict[str, torch.Tensor]:
    """diffusers' weights with its LoRA fused in (PEFT's merge), renamed to official keys."""
    from wan_core.loading.dit import diffusers_to_official

    model.fuse_lora(lora_scale=1.0)
    state = {k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if "lora_" not in k}
    return diffusers_to_official(state)


def _ours_output(cfg, path, strength, seed=3, unmerged=None):
    model = wan_core.apply_loras(_model(cfg, seed), [(path, strength)], unmerged=unmerged)
    x, t, context, clip_fea, y = inputs(cfg, batch=2)
    with torch.no_grad():
        return model(x, t, context, clip_fea, y)


def _parity_lora(case):
    """(config, LoRA state) for each layout diffusers reads."""
    if case == "official":  # blocks with alpha and bias deltas; embeddings and head without alpha (as trainers write)
        extra = ("time_projection.1", "head.head", "text_embedding.0", "text_embedding.2")
        state = random_lora(T2V, block_modules(T2V), "official", diff_b=("blocks.0.self_attn.q", "blocks.1.ffn.2"))
        state |= random_lora(T2V, extra, "official", alpha=None, seed=1, diff_b=("time_projection.1", "head.head"))
        return T2V, state
    if case == "i2v":
        extra = ("img_emb.proj.1", "img_emb.proj.3")
        state = random_lora(I2V, block_modules(I2V, image=True), "official", diff_b=("blocks.1.cross_attn.k_img",))
        return I2V, state | random_lora(I2V, extra, "official", alpha=None, seed=1)
    if case == "diffusers":  # PEFT keys, no alpha, a lora_B.bias
        return T2V, random_lora(T2V, block_modules(T2V), "diffusers", alpha=None, diff_b=("blocks.0.cross_attn.o",))
    return T2V, random_lora(T2V, block_modules(T2V), case)  # official_AB (lora_A / lora_B), kohya (musubi)


@pytest.mark.parametrize("case", ["official", "official_AB", "kohya", "diffusers", "i2v"])
def test_lora_equals_diffusers_loading(tmp_path, case):
    """The merged weights equal diffusers' (its converter, PEFT, fused) tensor by tensor within 1e-5; the
    forward equals diffusers' within its own fp32-embedding distance from ours (DIFFUSERS_TOL)."""
    cfg, state = _parity_lora(case)
    path = write_lora(tmp_path / f"{case}.safetensors", state)
    reference = _diffusers_with_lora(cfg, path, STRENGTH)
    x, t, context, clip_fea, y = inputs(cfg, batch=2)
    with torch.no_grad():
        expected = _run_diffusers(reference, x, t, context, clip_fea, y)
    ours = wan_core.apply_loras(_model(cfg), [(path, STRENGTH)], unmerged=False)
    got = _ours_output(cfg, path, STRENGTH)
    assert _rel(got, expected) <= DIFFUSERS_TOL
    assert _rel(_ours_output(cfg, path, 0.0), expected) > 1e-2, "the LoRA barely changed the output"
    fused = _diffusers_fused_state(reference)
    view = wan_core.RenderContext().patched(ours).state_dict()
    base = _model(cfg).state_dict()
    changed = [k for k in view if not torch.equal(view[k], base[k])]
    assert len(changed) >= len(block_modules(cfg)), changed
    for key in view:
        assert ((view[key] - fused[key]).abs().max() / fused[key].abs().max()).item() <= 1e-5, key


def test_the_conversion_table_both_ways():
    names = ModuleNames(2)
    modules = sorted({p.rpartition(".")[0] for p in names.params if p.endswith(".weight")})
    for fmt in FORMATS:
        roles = ("down", "up", "alpha", "diff_b") + (() if fmt == "diffusers" else ("diff",))
        for module in modules:
            for role in roles:
                key = lora_key(module, role, fmt, names)
                assert parse_lora_key(key, names) == (module, role), key
    assert parse_lora_key("model.diffusion_model.blocks.1.ffn.0.lora_up.weight", names) == ("blocks.1.ffn.0", "up")
    assert parse_lora_key("blocks.0.modulation.diff", names) == ("blocks.0.modulation", "diff")
    assert lora_key("blocks.0.cross_attn.k_img", "down", "kohya", names) == \
        "lora_unet_blocks_0_cross_attn_k_img.lora_down.weight"
    assert lora_key("blocks.0.self_attn.o", "up", "diffusers", names) == \
        "transformer.blocks.0.attn1.to_out.0.lora_B.weight"
    assert parse_lora_key("lora_unet_blocks_0_attn_q.lora_down.weight", names) is None


def test_merged_equals_unmerged_and_strength_zero_is_no_lora(tmp_path):
    path = write_lora(tmp_path / "l.safetensors", random_lora(T2V, block_modules(T2V), diff_b=("blocks.0.ffn.0",)))
    merged = _ours_output(T2V, path, STRENGTH, unmerged=False)
    unmerged = _ours_output(T2V, path, STRENGTH, unmerged=True)
    assert _rel(unmerged, merged) <= 1e-5
    model = _model(T2V)
    x, t, context, _, _ = inputs(T2V, batch=2)
    with torch.no_grad():
        assert torch.equal(wan_core.apply_loras(model, [(path, 0.0)])(x, t, context), model(x, t, context))


def _merged_by_hand(cfg, lora_states, strengths, seed=3):
    """A model whose weights are W + strength * (alpha / rank) up @ down summed over the LoRAs (official keys)."""
    state = random_official_state(cfg, seed=seed)
    for lora, strength in zip(lora_states, strengths):
        for key, down in lora.items():
            if key.endswith(".lora_down.weight"):
                module = key[len("diffusion_model."):-len(".lora_down.weight")]
                up = lora[key.replace("lora_down", "lora_up")]
                alpha = lora[key.replace("lora_down.weight", "alpha")]
                state[module + ".weight"] = state[module + ".weight"] + strength * alpha / down.shape[0] * up @ down
            elif key.endswith((".diff", ".diff_b")):
                module, _, part = key[len("diffusion_model."):].rpartition(".")
                name = module + (".bias" if part == "diff_b" else ".weight" if module + ".weight" in state else "")
                state[name] = state[name] + strength * lora[key]
    model = wan_core.WanDiT(cfg)
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)


def test_two_loras_are_their_sum_and_full_deltas_apply(tmp_path):
    names = ModuleNames(2)
    first = random_lora(T2V, block_modules(T2V)[:7], seed=1)
    second = random_lora(T2V, block_modules(T2V)[4:], seed=2, alpha=2.0)
    gen = torch.Generator().manual_seed(5)  # the full deltas step-distill LoRAs carry: norms, modulation, head
    for module, shape, role in (("blocks.0.norm3", (256,), "diff"), ("blocks.1.self_attn.norm_q", (256,), "diff"),
                                ("blocks.0.modulation", (1, 6, 256), "diff"), ("head.head", (64,), "diff_b"),
                                ("blocks.1.cross_attn.q", (256, 256), "diff")):
        second[lora_key(module, role, "official", names)] = 0.05 * torch.randn(shape, generator=gen)
    paths = [write_lora(tmp_path / "a.safetensors", first), write_lora(tmp_path / "b.safetensors", second)]
    model = wan_core.apply_loras(wan_core.apply_loras(_model(T2V), [(paths[0], 0.6)]), [(paths[1], -0.4)])
    expected_model = _merged_by_hand(T2V, [first, second], [0.6, -0.4])
    x, t, context, _, _ = inputs(T2V, batch=2)
    with torch.no_grad():
        assert _rel(model(x, t, context), expected_model(x, t, context)) <= 1e-5
    assert model.loras == (("a.safetensors", 0.6), ("b.safetensors", -0.4))


def _state_hash(model):
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode() + value.contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def test_the_loaded_model_is_untouched_by_a_patched_render(tmp_path):
    path = write_lora(tmp_path / "l.safetensors", random_lora(T2V, block_modules(T2V), diff_b=("blocks.0.ffn.0",)))
    model = _model(T2V)
    before = _state_hash(model)
    x, t, context, _, _ = inputs(T2V, batch=2)
    with torch.no_grad():
        plain = model(x, t, context)
    for unmerged in (False, True):
        handle = wan_core.apply_loras(model, [(path, 1.0)], unmerged=unmerged)
        raw = wan_core.sample(handle, context[:1], context[1:], request=wan_core.SampleRequest(80, 64, 5), steps=2)
        assert torch.isfinite(raw).all()
    assert _state_hash(model) == before
    with torch.no_grad():
        assert torch.equal(model(x, t, context), plain)


def test_unmerged_over_fp8_stays_within_the_fp8_error(tmp_path):
    from safetensors.torch import save_file

    save_file(random_official_state(T2V, seed=3), tmp_path / "dit.safetensors")
    path = write_lora(tmp_path / "l.safetensors", random_lora(T2V, block_modules(T2V)))
    exact = wan_core.load_dit(tmp_path / "dit.safetensors")
    fp8 = wan_core.load_dit(tmp_path / "dit.safetensors", storage_dtype="fp8_e4m3fn")
    x, t, context, _, _ = inputs(T2V, batch=2)
    with torch.no_grad():
        fp8_error = _rel(fp8(x, t, context), exact(x, t, context))
        want = wan_core.apply_loras(exact, [(path, STRENGTH)])(x, t, context)
        handle = wan_core.apply_loras(fp8, [(path, STRENGTH)])
        got = handle(x, t, context)
    view = wan_core.RenderContext().patched(handle)
    assert view.blocks[0].self_attn.q.low_rank and view.blocks[0].self_attn.q.weight.dtype == torch.float8_e4m3fn
    assert _rel(got, want) <= 1.5 * fp8_error and _rel(got, want) < 0.1


def test_every_layout_reports_keys_it_cannot_place(tmp_path):
    names = ModuleNames(2)
    for fmt in FORMATS:
        state = random_lora(T2V, block_modules(T2V)[:2], fmt)
        stray = {"official": "diffusion_model.blocks.0.attn.qkv.lora_down.weight", "official_AB":
                 "diffusion_model.double_blocks.0.img_mod.lora_A.weight", "kohya": "lora_unet_blocks_0_attn_qkv.alpha",
                 "diffusers": "transformer.blocks.0.attn1.to_qkv.lora_A.weight"}[fmt]
        state[stray] = torch.zeros(4, 256)
        path = write_lora(tmp_path / f"{fmt}.safetensors", state)
        with pytest.raises(wan_core.CheckpointError, match=stray.replace(".", r"\.")):
            wan_core.read_lora(path)
    assert lora_key("blocks.0.ffn.2", "down", "official", names).startswith("diffusion_model.")


def test_all_zero_deltas_of_norms_without_parameters_are_ignored_with_a_warning(tmp_path, caplog):
    state = random_lora(T2V, block_modules(T2V)[:2])
    state["diffusion_model.blocks.0.norm1.diff"] = torch.zeros(256)
    path = write_lora(tmp_path / "l.safetensors", state)
    with caplog.at_level(logging.WARNING):
        lora = wan_core.read_lora(path)
    assert lora.ignored == ["diffusion_model.blocks.0.norm1.diff"] and "all-zero norm delta" in caplog.text
    state["diffusion_model.blocks.0.norm1.diff"] = torch.ones(256)  # not zero: not harmless
    with pytest.raises(wan_core.CheckpointError, match=r"blocks\.0\.norm1\.diff"):
        wan_core.read_lora(write_lora(tmp_path / "m.safetensors", state))


def test_a_lora_for_another_model_is_refused_naming_both(tmp_path):
    wide_config = wan_core.DiTConfig("t2v", dim=384, ffn_dim=384, num_layers=2, text_dim=64)
    wide = random_lora(wide_config, ["blocks.0.self_attn.q"])
    with pytest.raises(wan_core.InputError, match=r"does not fit .*width 256.*width 384"):
        wan_core.apply_loras(_model(T2V), [(write_lora(tmp_path / "w.safetensors", wide), 1.0)])
    image = random_lora(I2V, ["blocks.0.cross_attn.k_img"])
    with pytest.raises(wan_core.InputError, match="image-to-video.*t2v"):
        wan_core.apply_loras(_model(T2V), [(write_lora(tmp_path / "i.safetensors", image), 1.0)])
    deep = random_lora(wan_core.DiTConfig("t2v", dim=256, ffn_dim=384, num_layers=4, text_dim=64),
                       ["blocks.3.ffn.0"])
    with pytest.raises(wan_core.InputError, match=r"does not have: blocks\.3\.ffn\.0\.weight"):
        wan_core.apply_loras(_model(T2V), [(write_lora(tmp_path / "d.safetensors", deep), 1.0)])
    t2v_lora = write_lora(tmp_path / "t.safetensors", random_lora(T2V, block_modules(T2V)))
    assert wan_core.apply_loras(_model(I2V), [(t2v_lora, 1.0)]).loras  # a t2v LoRA on an i2v model is fine


def test_large_merges_stay_unmerged_automatically(tmp_path, monkeypatch):
    import wan_core.lora as lora_module

    path = write_lora(tmp_path / "l.safetensors", random_lora(T2V, block_modules(T2V)))
    model = _model(T2V)
    small = wan_core.RenderContext().patched(wan_core.apply_loras(model, [(path, 1.0)]))
    assert not small.blocks[0].self_attn.q.low_rank  # 2 MiB of copies: merged
    monkeypatch.setattr(lora_module, "MERGE_LIMIT_BYTES", 2**20)
    large = wan_core.RenderContext().patched(wan_core.apply_loras(model, [(path, 1.0)]))
    assert large.blocks[0].self_attn.q.low_rank and large.blocks[0].self_attn.q.weight is \
        model.blocks[0].self_attn.q.weight  # unmerged: the weight is shared, not copied
