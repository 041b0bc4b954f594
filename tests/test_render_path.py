"""One render path: the sampler node, the CLI and the task functions render through the same job (the same
latent bit for bit), and the render settings survive settings -> manifest -> replay -> settings whole."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
import torch
from safetensors.torch import load_file
from workflow_runner import load_pack

import wan_core
from wan_core import NEGATIVE_PROMPT, RenderSettings, StepCacheSettings
from wan_core.cli import _parser, main
from wan_core.demo import DEMO_FILES, DEMO_IMAGE_FILES, write_demo_models
from wan_core.replay import replay_argv

SIZE = dict(width=64, height=48, frames=5)
CACHE = dict(kind="first_block", threshold=0.5, start=0.0, max_skips=2)  # reuses some steps of this render
CHOICES = dict(seed=5, steps=4, cfg=4.0, shift=3.0, sampler="unipc", vram_budget=0.01, resume="off")
STRENGTH = 0.8


@pytest.fixture
def demo(tmp_path, monkeypatch):
    """The demo models where the CLI's --demo finds them, and the standalone node host pointed at them."""
    models = tmp_path / "models"
    paths = write_demo_models(models / "demo")
    monkeypatch.setenv("WANCORE_MODELS", str(models / "demo"))
    monkeypatch.setenv("WANCORE_OUTPUT", str(tmp_path / "output"))
    return models, paths


def _through_the_nodes(cache: StepCacheSettings | None) -> torch.Tensor:
    nodes = load_pack().NODE_CLASS_MAPPINGS
    model = nodes["WanCoreModelLoader"]().load(DEMO_FILES["diffusion_models"], "default")[0]
    model = nodes["WanCoreLoraLoader"]().load(model, DEMO_IMAGE_FILES["lora"][1], STRENGTH)[0]
    encoder = nodes["WanCoreTextEncoderLoader"]().load(DEMO_FILES["text_encoders"], "default")[0]
    embeds = nodes["WanCoreTextEncode"]().encode(encoder, "a fox", "")[0]
    node_cache = None if cache is None else nodes["WanCoreCache"]().settings(**vars(cache))[0]
    inputs = {k: v for k, v in CHOICES.items() if k != "vram_budget"}
    out = nodes["WanCoreSampler"]().run(model, embeds, **SIZE, **inputs, denoise=1.0, cache=node_cache,
                                        vram_budget_gb=CHOICES["vram_budget"])
    return out[0]["samples"]


def _through_the_cli(models, tmp_path, lora) -> torch.Tensor:
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in {**SIZE, **CHOICES}.items()]
    flags += ["--cache", CACHE["kind"], "--cache-threshold", str(CACHE["threshold"]), "--cache-start",
              str(CACHE["start"]), "--cache-max-skips", str(CACHE["max_skips"]), "--lora", f"{lora}:{STRENGTH}"]
    assert main(["t2v", "--demo", "--models", str(models), "--prompt", "a fox", *flags, "--keep-latent", "--out",
                 str(tmp_path / "cli.mp4")]) == 0
    return load_file(tmp_path / "cli.latent.safetensors")["latent"]


def _through_the_task_function(paths) -> torch.Tensor:
    dit = wan_core.apply_loras(wan_core.load_dit(paths["diffusion_models"]), [(paths["lora"], STRENGTH)])
    encoder = wan_core.load_text_encoder(paths["text_encoders"])
    settings = RenderSettings(**CHOICES, cache=StepCacheSettings(**CACHE))
    return wan_core.text_to_latent(dit, encoder, "a fox", NEGATIVE_PROMPT, **SIZE, settings=settings)


def test_the_node_the_cli_and_the_task_function_render_the_same_latent(demo, tmp_path, caplog):
    """Demo model with a LoRA, a step cache and a budget that streams its blocks: one render, three front ends."""
    models, paths = demo
    with caplog.at_level(logging.INFO):
        node = _through_the_nodes(StepCacheSettings(**CACHE))
    assert "streamed (1 ahead)" in caplog.text, "the budget must stream blocks for this test to mean anything"
    cli = _through_the_cli(models, tmp_path, paths["lora"])
    task = _through_the_task_function(paths)
    assert node.shape == (1, 16, 2, 6, 8)
    assert torch.equal(node, cli) and torch.equal(node, task)
    assert not torch.equal(node, _through_the_nodes(None))  # the cache did reuse steps


# a value other than the default for every field (None slots: the only value they take until their capability lands)
SAMPLES = {"sampler": "dpm++", "steps": 7, "cfg": 4.5, "shift": 3.0, "seed": 2**63 + 5, "denoise": 0.6,
           "stop_after": 3, "start_step": 2, "cache": StepCacheSettings("tea", 0.15, 0.25, 1), "attention": "auto",
           "compile": True,
           "vram_budget": 2.5, "resume": "off", "experts": None,
           "context": wan_core.ContextWindows(49, 12, "looped", "flat", 2, True), "parallel": None}
NOT_ON_THE_COMMAND_LINE = {"denoise", "start_step", "experts"}
"""Fields the CLI cannot take: it renders from noise (denoise 1, start_step 0: it takes no LATENT), and the slots of
capabilities to come."""


def test_every_settings_field_has_a_sample_and_a_place_on_the_command_line():
    fields = dataclasses.fields(RenderSettings)
    assert {f.name for f in fields} == set(SAMPLES), "a new settings field needs a sample value here"
    assert {f.name for f in fields if f.metadata["flag"] is None} == NOT_ON_THE_COMMAND_LINE
    parsed = vars(_parser().parse_args(["t2v", "--prompt", "x", "--out", "o.mp4"]))
    for f in fields:
        assert f.metadata["help"], f.name
        if f.metadata["flag"] is not None:
            assert f.metadata["flag"].lstrip("-").replace("-", "_") in parsed, f"no CLI flag {f.metadata['flag']}"


def test_settings_survive_the_manifest_whole():
    settings = RenderSettings(**SAMPLES)
    assert all(getattr(settings, k) != f.default for k, f in RenderSettings.__dataclass_fields__.items()
               if k not in ("experts", "parallel"))
    assert RenderSettings.from_manifest(json.loads(json.dumps(settings.to_manifest()))) == settings
    assert RenderSettings.from_manifest({"seed": 3}) == RenderSettings(seed=3)  # an older manifest's missing fields


def test_settings_survive_manifest_replay_and_the_command_line(demo, tmp_path):
    """A CLI video's manifest carries the settings; replay turns them back into the flags that parse into the
    same settings (every field the command line can take, each at a value other than its default)."""
    models, _ = demo
    assert main(["t2v", "--demo", "--models", str(models), "--prompt", "a fox", "--steps", "1", "--frames", "5",
                 "--width", "64", "--height", "48", "--out", str(tmp_path / "first.mp4")]) == 0
    manifest = wan_core.read_manifest(tmp_path / "first.mp4")
    assert RenderSettings.from_manifest(manifest) == RenderSettings(steps=1)
    settings = RenderSettings(**{k: v for k, v in SAMPLES.items() if k not in NOT_ON_THE_COMMAND_LINE})  # parallel:
    # None here, as a step cache cannot run split (tests/test_parallel.py round-trips it)
    manifest.update(settings.to_manifest())
    video = wan_core.write_video(torch.rand(5, 48, 64, 3), tmp_path / "edited.mp4",
                                 metadata={wan_core.MANIFEST_KEY: wan_core.manifest_dumps(manifest)})
    argv = replay_argv(video, models, None, None)
    assert RenderSettings.from_args(_parser().parse_args(argv)) == settings
    with pytest.raises(wan_core.InputError, match="denoise 0.6 cannot be given on the command line"):
        RenderSettings(denoise=0.6).to_argv()


@pytest.mark.parametrize(("change", "message"), [
    ({"vram_budget": -1.0}, "vram_budget must be a finite number at least 0, got -1.0"),
    ({"vram_budget": float("nan")}, "vram_budget must be a finite number"),
    ({"resume": "sometimes"}, "resume must be one of auto, off"),
    ({"attention": "fast"}, "attention 'fast' is unknown"),
    ({"stop_after": -2}, "stop_after must be a whole number of steps"),
    ({"sampler": "causvid", "denoise": 0.5}, "runs its fixed list of steps from pure noise"),
    ({"context": {"frames": 81}}, "context must be context-window settings"),
    ({"cache": "mag"}, "cache must be step cache settings"),
])
def test_settings_check_themselves_with_the_value_and_the_fix(change, message):
    with pytest.raises(wan_core.InputError, match=message):
        RenderSettings(**change)


def test_both_hosts_offer_the_whole_protocol():
    members = [name for name in vars(wan_core.Host) if not name.startswith("_")]
    assert len(members) >= 12
    for host in (wan_core.StandaloneHost("cpu"), load_pack().nodes.host.HOST):
        assert all(callable(getattr(host, name, None)) for name in members), type(host).__name__


class _Placed:
    """A model that records where it is moved."""

    def __init__(self, device: str):
        self.device, self.moves = torch.device(device), []

    def to(self, device):
        self.device = torch.device(device)
        self.moves.append(self.device)
        return self


def test_the_standalone_host_returns_models_to_where_they_were_after_a_failure():
    host = wan_core.StandaloneHost("meta")
    on_cpu, elsewhere = _Placed("cpu"), _Placed("meta")
    with pytest.raises(RuntimeError, match="boom"), host.on_device(on_cpu, elsewhere):
        assert on_cpu.device == torch.device("meta")
        raise RuntimeError("boom")
    assert on_cpu.moves == [torch.device("meta"), torch.device("cpu")] and elsewhere.device == torch.device("meta")
    host.release(elsewhere)  # a streaming plan's model goes to host memory
    assert elsewhere.device == torch.device("cpu")
