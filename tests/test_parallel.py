"""Sequence parallelism (Ulysses) on 2 CPU processes over gloo: the tiny t2v / i2v / VACE / TI2V DiTs' forward with
the tokens split across ranks (an odd token count included) equals the single-process forward, on every rank."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_ti2v_dit import TI2V
from test_vace_dit import VACE
from tiny import I2V, T2V, inputs, random_official_state

import wan_core
from wan_core.parallel import SequenceParallelRunner, check_degree, shard_bounds

CONFIGS = {"t2v": T2V, "i2v": I2V, "vace": VACE, "ti2v": TI2V}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _forward_case(kind: str, h: int, w: int):
    """The tiny model of ``kind`` and its inputs (the same on every rank: seeded)."""
    cfg = CONFIGS[kind]
    model = wan_core.WanDiT(cfg)
    model.load_state_dict(random_official_state(cfg, seed=3))
    model.eval()
    x, t, context, clip_fea, y = inputs(cfg, frames=3, h=h, w=w, seed=4)
    kwargs = {"clip_fea": clip_fea, "y": y}
    if kind == "vace":
        kwargs["vace_context"] = torch.randn(1, cfg.vace_in_dim, 3, h, w, generator=torch.Generator().manual_seed(5))
    if kind == "ti2v":
        x = torch.randn(1, cfg.in_dim, 3, h, w, generator=torch.Generator().manual_seed(6))
        t = torch.tensor([[0.0, 600.0, 600.0]])  # the image's frame at timestep 0
    return model, x, t, context, kwargs


def _worker(rank: int, world: int, port: int, kinds: list[str], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_grad_enabled(False)
    errors = {}
    try:
        for kind in kinds:
            for h, w in ((8, 10), (6, 10)):  # 60 and 45 tokens (odd: shards of 23 and 22)
                model, x, t, context, kwargs = _forward_case(kind, h, w)
                whole = model(x, t, context, **kwargs)
                render = wan_core.RenderContext(runner=SequenceParallelRunner(wan_core.ResidentRunner()))
                split = model(x, t, context, render=render, **kwargs)
                errors[f"{kind} {h}x{w}"] = ((split - whole).abs().max() / whole.abs().max()).item()
    finally:
        dist.destroy_process_group()
    with open(f"{out}.{rank}", "w") as f:
        json.dump(errors, f)


def test_ulysses_forward_on_two_ranks_equals_the_single_process_forward(tmp_path):
    kinds = list(CONFIGS)
    mp.spawn(_worker, args=(2, _free_port(), kinds, str(tmp_path / "errors")), nprocs=2)
    for rank in range(2):
        errors = json.loads((tmp_path / f"errors.{rank}").read_text())
        assert len(errors) == 2 * len(kinds)
        assert all(e <= 1e-5 for e in errors.values()), (rank, errors)


def test_shards_are_contiguous_and_differ_by_at_most_one_token():
    assert shard_bounds(45, 2) == [(0, 23), (23, 45)]
    assert shard_bounds(10, 4) == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert shard_bounds(3, 4) == [(0, 1), (1, 2), (2, 3), (3, 3)]


def test_a_degree_that_does_not_divide_the_heads_names_the_valid_ones():
    with pytest.raises(wan_core.InputError, match="degree of 8 does not divide the 12 attention heads .* 1, 2, 3, 4, "
                                                  "6, 12"):
        check_degree(12, 8)
    with pytest.raises(wan_core.InputError, match="degree of 16 does not divide the 40 attention heads"):
        check_degree(40, 16)
    check_degree(40, 8)
    check_degree(24, 4)


def _official_worker(rank: int, world: int, port: int, folder: str) -> None:
    """The official Wan2.2 Ulysses forward (``sp_dit_forward`` / ``sp_attn_forward`` bound as the official
    generate script binds them, its flash attention replaced by an exact fp32 SDPA with the same key-length mask,
    attention kept in fp32) and ours on the same 2 ranks, the same weights and inputs."""
    import functools
    import types

    from safetensors.torch import save_file
    from test_wan22_dit import _official
    from wan_reference import wan_module

    from benchmarks.references import sdpa_flash_attention

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_grad_enabled(False)
    sp = wan_module("distributed.sequence_parallel")
    wan_module("distributed.ulysses").flash_attention = sdpa_flash_attention
    errors = {}
    try:
        for h, w in ((8, 10), (6, 10)):
            ref = _official(T2V, seed=7)
            path = f"{folder}/t2v.{rank}.safetensors"
            save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, path)
            ours = wan_core.load_dit(path)
            ref.forward = types.MethodType(sp.sp_dit_forward, ref)
            for block in ref.blocks:
                block.self_attn.forward = types.MethodType(functools.partial(sp.sp_attn_forward,
                                                                             dtype=torch.float32), block.self_attn)
            x, t, context, _, _ = inputs(T2V, frames=3, h=h, w=w, seed=8)
            tokens = 3 * (h // 2) * (w // 2)
            seq_len = -(-tokens // world) * world  # the official pads to a multiple of the degree
            expected = ref([x[0]], t=t[:1], context=[context[0]], seq_len=seq_len)[0]
            render = wan_core.RenderContext(runner=SequenceParallelRunner(wan_core.ResidentRunner()))
            got = ours(x[:1], t[:1], context[:1], render=render)[0]
            errors[f"{h}x{w}"] = ((got - expected).abs().max() / expected.abs().max()).item()
    finally:
        dist.destroy_process_group()
    with open(f"{folder}/official.{rank}", "w") as f:
        json.dump(errors, f)


def test_ulysses_forward_equals_the_official_wan22_sequence_parallel_code(tmp_path):
    """45 and 60 tokens on 2 gloo ranks (the official pads 45 to 46 and masks the pad out of the keys)."""
    mp.spawn(_official_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    for rank in range(2):
        errors = json.loads((tmp_path / f"official.{rank}").read_text())
        assert len(errors) == 2 and all(e <= 1e-5 for e in errors.values()), (rank, errors)


@pytest.mark.parametrize("parallel", ["ulysses=2", "cfg=2", "ulysses=2,cfg=2"])
def test_a_torchrun_cli_render_writes_the_single_process_video(tmp_path, parallel):
    """``torchrun --nproc-per-node N -m wan_core t2v --demo ... --parallel ...`` on CPU (gloo): rank 0 writes the
    video, whose latent equals the single-process render's within 1e-5; the other ranks write nothing."""
    import re
    import subprocess
    import sys

    from safetensors.torch import load_file

    from wan_core.parallel import ParallelSettings

    args = ["t2v", "--demo", "--models", str(tmp_path / "models"), "--prompt", "a fox", "--steps", "2", "--frames",
            "5", "--width", "64", "--height", "48", "--keep-latent"]
    single = subprocess.run([sys.executable, "-m", "wan_core", *args, "--out", str(tmp_path / "one.mp4")],
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    n = ParallelSettings.parse(parallel).degree
    split = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n),
                            "--master-port", str(_free_port()), "-m", "wan_core", *args, "--out",
                            str(tmp_path / "split.mp4"), "--parallel", parallel],
                           capture_output=True, text=True, timeout=600)
    assert split.returncode == 0, split.stderr[-3000:]
    assert split.stderr.count("text encoder memory plan") == 1  # rank 0 encodes, the others receive the embeddings
    assert split.stdout.strip().splitlines() == [str(tmp_path / "split.mp4")]  # named once, by rank 0
    assert len(re.findall(r"sampling +2/2", split.stderr)) == 1  # one progress display: rank 0's
    one, many = (load_file(tmp_path / f"{name}.latent.safetensors")["latent"] for name in ("one", "split"))
    assert ((many - one).abs().max() / one.abs().max()).item() <= 1e-5
    assert sorted(p.name for p in tmp_path.glob("*.mp4")) == ["one.mp4", "split.mp4"]


def test_bad_parallel_settings_fail_before_the_render(tmp_path, capsys):
    from wan_core.cli import main

    base = ["t2v", "--demo", "--models", str(tmp_path / "m"), "--prompt", "x", "--out", str(tmp_path / "o.mp4")]
    assert main([*base, "--parallel", "ulysses=2"]) == 2  # one process, two asked for
    assert "needs 2 processes, this run has 1: launch with torchrun --nproc-per-node 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--parallel", "rings=2"])
    assert "--parallel takes ulysses=N,cfg=1|2" in capsys.readouterr().err
    with pytest.raises(wan_core.InputError, match="step cache decides per CFG branch, and with cfg=2"):
        wan_core.RenderSettings(parallel=wan_core.parallel.ParallelSettings(2, 2),
                                cache=wan_core.StepCacheSettings("mag"))


def test_parallel_settings_survive_the_manifest_and_the_command_line():
    from wan_core.cli import _parser
    from wan_core.parallel import ParallelSettings

    settings = wan_core.RenderSettings(parallel=ParallelSettings(4, 2))
    assert wan_core.RenderSettings.from_manifest(json.loads(json.dumps(settings.to_manifest()))) == settings
    argv = settings.to_argv()
    assert argv[argv.index("--parallel") + 1] == "ulysses=4,cfg=2"
    parsed = _parser().parse_args(["t2v", "--prompt", "x", "--out", "o.mp4", *argv])
    assert wan_core.RenderSettings.from_args(parsed) == settings


def test_a_parallel_render_stopped_and_run_again_resumes_to_the_same_latent(tmp_path):
    """torchrun, ulysses=2: --stop-after 1 of 3 steps, then the same command without it continues from the resume
    file every rank reads, and ends on the latent of an uninterrupted parallel render (bit for bit)."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    def torchrun(out, *extra):
        args = ["t2v", "--demo", "--models", str(tmp_path / "models"), "--prompt", "a fox", "--steps", "3",
                "--frames", "5", "--width", "64", "--height", "48", "--keep-latent", "--parallel", "ulysses=2"]
        run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                              str(_free_port()), "-m", "wan_core", *args, "--out", str(tmp_path / out), *extra],
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        return run.stderr

    torchrun("whole.mp4")
    torchrun("resumed.mp4", "--stop-after", "1")
    assert "resuming from step 1 of 3" in torchrun("resumed.mp4")
    whole, resumed = (load_file(tmp_path / f"{n}.latent.safetensors")["latent"] for n in ("whole", "resumed"))
    assert torch.equal(whole, resumed)


def _rank_process(parent: int, rank: int) -> int | None:
    """The pid of torchrun ``parent``'s worker of ``rank`` (from its environment), None before it started."""
    from pathlib import Path

    tasks = Path(f"/proc/{parent}/task").iterdir()
    for child in (c for task in tasks for c in (task / "children").read_text().split()):
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return int(child)
    return None


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="finds torchrun's worker processes in /proc")
def test_a_killed_rank_ends_the_torchrun_render_on_every_rank_and_the_rerun_resumes(tmp_path):
    """Rank 1 killed (SIGKILL) after step 2 of 30: torchrun ends within seconds with an error, no video and no
    half-written file; the same command again resumes from the shared resume file and ends on the single-process
    render's latent."""
    import re
    import signal
    import subprocess
    import sys
    import time

    from safetensors.torch import load_file

    args = ["t2v", "--demo", "--models", str(tmp_path / "models"), "--prompt", "a fox", "--steps", "30", "--frames",
            "17", "--width", "96", "--height", "64", "--keep-latent", "--out"]

    def torchrun() -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                str(_free_port()), "-m", "wan_core", *args, str(tmp_path / "split.mp4"), "--parallel", "ulysses=2"]

    run = subprocess.Popen(torchrun(), stderr=subprocess.PIPE, text=True)
    lines = []
    for line in run.stderr:
        lines.append(line)
        if re.search(r"sampling +2/30", line):
            break
    assert lines and re.search(r"sampling +2/30", lines[-1]), "".join(lines)[-3000:]
    os.kill(_rank_process(run.pid, 1), signal.SIGKILL)
    killed = time.monotonic()
    rest = run.stderr.read()
    assert run.wait(timeout=120) != 0, rest[-3000:]
    assert "rank 0: another rank of the parallel render stopped or failed" in rest, rest[-3000:]
    assert time.monotonic() - killed < 60
    assert not list(tmp_path.glob("*.mp4")) and not list(tmp_path.glob(".*partial*"))
    resumed = subprocess.run(torchrun(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from step" in resumed.stderr
    assert not list(tmp_path.rglob(".*partial*"))
    single = subprocess.run([sys.executable, "-m", "wan_core", *args, str(tmp_path / "one.mp4")],
                            capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-2000:]
    one, split = (load_file(tmp_path / f"{n}.latent.safetensors")["latent"] for n in ("one", "split"))
    assert ((split - one).abs().max() / one.abs().max()).item() <= 1e-5


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="finds torchrun's worker processes in /proc")
def test_a_rank_torchrun_stops_names_why_and_writes_nothing(tmp_path):
    """torchrun ends the other ranks with SIGTERM when one fails (often before they see the broken connection):
    rank 0 sent SIGTERM after step 1 says it was stopped and why, not "interrupted", and nothing is written."""
    import re
    import signal
    import subprocess
    import sys

    args = ["t2v", "--demo", "--models", str(tmp_path / "models"), "--prompt", "a fox", "--steps", "30", "--frames",
            "5", "--width", "64", "--height", "48", "--out", str(tmp_path / "split.mp4"), "--parallel", "ulysses=2"]
    run = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                            str(_free_port()), "-m", "wan_core", *args], stderr=subprocess.PIPE, text=True)
    lines = []
    for line in run.stderr:
        lines.append(line)
        if re.search(r"sampling +1/30", line):
            break
    assert lines and re.search(r"sampling +1/30", lines[-1]), "".join(lines)[-3000:]
    os.kill(_rank_process(run.pid, 0), signal.SIGTERM)
    rest = run.stderr.read()
    assert run.wait(timeout=120) != 0, rest[-3000:]
    assert "rank 0: torchrun stopped this rank (another rank of the parallel render stopped or failed" in rest, \
        rest[-3000:]
    assert "interrupted" not in rest
    assert not list(tmp_path.glob("*.mp4")) and not list(tmp_path.glob(".*partial*"))


def _ring_worker(rank: int, world: int, port: int, degrees: str, out: str) -> None:
    """Ring attention (yunchang, its CUDA-only flash kernel replaced by an exact fp32 one) alone or under Ulysses."""
    from yunchang.ring import ring_pytorch_attn

    from benchmarks.references import exact_attention_with_lse
    from wan_core.parallel import ParallelSettings, parallel_groups

    ring_pytorch_attn.pytorch_attn_forward = exact_attention_with_lse
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_grad_enabled(False)
    errors = {}
    try:
        groups = parallel_groups(ParallelSettings.parse(degrees))
        for kind in ("t2v", "vace"):
            model, x, t, context, kwargs = _forward_case(kind, 8, 10)  # 60 tokens: 30 / 15 per rank
            whole = model(x, t, context, **kwargs)
            runner = SequenceParallelRunner(wan_core.ResidentRunner(), groups.sequence, groups.ulysses, groups.ring)
            split = model(x, t, context, render=wan_core.RenderContext(runner=runner), **kwargs)
            errors[kind] = ((split - whole).abs().max() / whole.abs().max()).item()
    finally:
        dist.destroy_process_group()
    with open(f"{out}.{rank}", "w") as f:
        json.dump(errors, f)


@pytest.mark.parametrize("degrees", ["ring=2", "ulysses=2,ring=2"])
def test_ring_attention_shares_the_tokens_beyond_what_the_heads_split(tmp_path, degrees):
    """ring=2 on 2 ranks, and Ulysses 2 x ring 2 on 4 (the tiny models' 2 heads cannot split 4 ways): the forward
    equals the single-process one on every rank."""
    from wan_core.parallel import ParallelSettings

    world = ParallelSettings.parse(degrees).degree
    mp.spawn(_ring_worker, args=(world, _free_port(), degrees, str(tmp_path / "ring")), nprocs=world)
    for rank in range(world):
        errors = json.loads((tmp_path / f"ring.{rank}").read_text())
        assert len(errors) == 2 and all(e <= 1e-5 for e in errors.values()), (rank, errors)


def test_ring_settings_name_their_needs(monkeypatch):
    import importlib.util

    from wan_core.parallel import ParallelSettings, check_degree
    from wan_core.parallel.sequence import check_ring_kernel, check_ring_tokens

    settings = ParallelSettings.parse("ulysses=4,cfg=2,ring=2")
    assert (settings.degree, settings.sequence, str(settings)) == (16, 8, "ulysses=4,cfg=2,ring=2")
    assert wan_core.RenderSettings.from_manifest(json.loads(json.dumps(
        wan_core.RenderSettings(parallel=settings).to_manifest()))).parallel == settings
    settings.check_for(12, 16)
    with pytest.raises(wan_core.InputError, match=r"share the tokens of 8 ranks as ulysses=4,ring=2"):
        check_degree(12, 8)
    with pytest.raises(wan_core.InputError, match="the 45 video tokens of this size do not divide by the 4 ranks"):
        check_ring_tokens(45, 4)
    check_ring_kernel(torch.device("cuda"), torch.bfloat16)
    with pytest.raises(wan_core.InputError, match="on CUDA GPUs in bf16 or fp16; this render computes in float32 on "
                                                  "cpu"):
        check_ring_kernel(torch.device("cpu"), torch.float32)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "yunchang" else real(name, *a))
    with pytest.raises(wan_core.InputError, match="ring=2 runs yunchang's ring attention, which is not installed"):
        settings.check_for(12, 16)
