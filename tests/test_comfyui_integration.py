"""The pack inside a real ComfyUI (Comfy-Org/ComfyUI checkout at $COMFYUI_PATH), over its HTTP API.

ComfyUI is started on 127.0.0.1 with ``--cpu`` and a fresh ``--base-directory`` holding this pack
in ``custom_nodes/`` and the tiny demo models in ``models/``; the t2v example workflow is sent to
``/prompt`` in API format and the written video is decoded. ``$COMFYUI_PYTHON`` names the Python
of ComfyUI's environment (default: this one). Skipped, visibly, without ``COMFYUI_PATH``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import av
import pytest
from test_nodes import SMALL, _demo_overrides
from workflow_runner import ROOT, load_workflow, node_classes, widget_inputs

from wan_core import read_manifest
from wan_core.demo import write_demo_models

COMFYUI = os.environ.get("COMFYUI_PATH")
pytestmark = pytest.mark.skipif(not COMFYUI, reason="COMFYUI_PATH is not set: no ComfyUI checkout to test in")
START_TIMEOUT, RENDER_TIMEOUT = 240, 600


def ui_to_api(workflow: dict, overrides: dict[str, dict]) -> dict:
    """The API-format prompt ComfyUI's frontend would send for a UI-format workflow."""
    classes = node_classes()
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        inputs = {name: value for (name, _), value in zip(widget_inputs(classes[node["type"]]),
                                                          node["widgets_values"]) if name is not None}
        inputs.update(overrides.get(node["type"], {}))
        for sock in node.get("inputs", []):
            if sock.get("link") is not None:
                _, source, slot, *_ = links[sock["link"]]
                inputs[sock["name"]] = [str(source), slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, proc, log: Path, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"ComfyUI exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            return _get(url)
        except OSError:
            time.sleep(1)
    pytest.fail(f"ComfyUI did not answer {url} within {timeout} s:\n{log.read_text()[-3000:]}")


def _render(url: str, ui: dict, overrides: dict, log: Path) -> dict:
    """Queue ``ui`` (with ``overrides``) through /prompt and return its /history entry once it finished."""
    body = json.dumps({"prompt": ui_to_api(ui, overrides), "client_id": "wancore-test",
                       "extra_data": {"extra_pnginfo": {"workflow": ui}}}).encode()
    request = urllib.request.Request(f"{url}/prompt", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        prompt_id = json.loads(response.read())["prompt_id"]
    return _finished(url, prompt_id, log)


def _finished(url: str, prompt_id: str, log: Path) -> dict:
    """The /history entry of ``prompt_id`` once it finished."""
    deadline = time.monotonic() + RENDER_TIMEOUT
    while time.monotonic() < deadline:
        history = _get(f"{url}/history/{prompt_id}").get(prompt_id)
        if history and history.get("status", {}).get("completed") is not None:
            return history
        time.sleep(2)
    pytest.fail(f"no result within {RENDER_TIMEOUT} s:\n{log.read_text()[-3000:]}")


@contextmanager
def _comfyui(tmp_path: Path):
    """A ComfyUI on a free port with this pack and the demo models in a fresh base directory:
    ``(process, url, base, log)``, answering once its nodes are listed; terminated afterwards."""
    base = tmp_path / "base"
    (base / "custom_nodes").mkdir(parents=True)
    (base / "custom_nodes" / "ComfyUI-WanCore").symlink_to(ROOT, target_is_directory=True)
    write_demo_models(base / "models")
    port = _free_port()
    log = tmp_path / "comfyui.log"
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    with open(log, "w") as out:
        proc = subprocess.Popen([python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
                                 "--base-directory", str(base), "--disable-auto-launch"],
                                cwd=COMFYUI, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(f"{url}/object_info", proc, log, START_TIMEOUT)
        yield proc, url, base, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _free_models(url: str) -> None:
    """What ComfyUI's *Unload models* button sends."""
    free = urllib.request.Request(f"{url}/free", data=json.dumps({"unload_models": True}).encode(),
                                  headers={"Content-Type": "application/json"})
    urllib.request.urlopen(free, timeout=10).close()


def test_t2v_workflow_in_a_real_comfyui(tmp_path):
    with _comfyui(tmp_path) as (proc, url, base, log):
        info = _get(f"{url}/object_info")
        ours = [name for name in node_classes() if name.startswith("WanCore")]
        assert set(ours) <= set(info), f"missing nodes: {set(ours) - set(info)}\n{log.read_text()[-3000:]}"
        scripts = _get(f"{url}/extensions")  # the front-end extension is served (it greys out size widgets)
        assert "/extensions/ComfyUI-WanCore/wancore.js" in scripts, scripts
        with urllib.request.urlopen(f"{url}/extensions/ComfyUI-WanCore/size_widgets.js", timeout=10) as response:
            assert b"syncSizeWidgets" in response.read()
        ui = load_workflow(ROOT / "example_workflows" / "wan2.1_t2v_1.3B.json")
        history = _render(url, ui, _demo_overrides(), log)
        assert history["status"]["status_str"] == "success", json.dumps(history["status"])[:3000]
        videos = sorted((base / "output").rglob("*.mp4"))
        assert len(videos) == 1
        with av.open(str(videos[0])) as container:
            frames = list(container.decode(video=0))
            assert "workflow" in {k.lower() for k in container.metadata}
        assert (len(frames), frames[0].height, frames[0].width) == (SMALL["frames"], SMALL["height"], SMALL["width"])
        ui_outputs = [o for o in history["outputs"].values() if "images" in o]
        assert ui_outputs and ui_outputs[0]["images"][0]["filename"] == videos[0].name
        manifest = read_manifest(videos[0])  # model files found through ComfyUI's folders, hashed
        assert any(v["class_type"] == "WanCoreSampler" for v in manifest["graph"].values())
        assert all("hash" in ref for ref in manifest["models"].values()) and len(manifest["models"]) == 3
        assert not list((base / "output" / "wancore_resume").glob("*"))  # the finished render removed its state
        # our DiT went to the device through ComfyUI's model manager (its own log line) and is held there ...
        assert "Requested to load WanDiT" in log.read_text(), log.read_text()[-3000:]
        assert "unloaded from" not in log.read_text()
        # ... until "Unload models" (POST /free) makes ComfyUI release it
        _free_models(url)
        deadline = time.monotonic() + 60
        while "WanDiT unloaded from" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(1)
        assert "WanCore: WanDiT unloaded from cpu by ComfyUI's model manager" in log.read_text(), \
            log.read_text()[-3000:]

        # a budget that streams the demo DiT's blocks renders the same video (another seed: not a cached result)
        streamed = _demo_overrides()
        streamed["WanCoreSampler"] = {**streamed["WanCoreSampler"], "vram_budget_gb": 0.01, "seed": 7}
        history = _render(url, ui, streamed, log)
        assert history["status"]["status_str"] == "success", json.dumps(history["status"])[:3000]
        assert "blocks resident" in log.read_text() and "streamed (1 ahead)" in log.read_text()
        videos = sorted((base / "output").rglob("*.mp4"))
        assert len(videos) == 2

        # a bad value reaches the user as our message, raised before any work, and writes nothing
        bad = _demo_overrides()
        bad["WanCoreSampler"] = {**bad["WanCoreSampler"], "frames": 14}
        history = _render(url, ui, bad, log)
        assert history["status"]["status_str"] == "error"
        assert "use 13 or 17" in json.dumps(history["status"]["messages"]), json.dumps(history["status"])[:3000]
        assert sorted((base / "output").rglob("*.mp4")) == videos


def _workers(pid: int) -> list[int]:
    """The parallel worker processes ComfyUI (``pid``) started."""
    children = [c for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]
    return [int(c) for c in children if b"wan_core.pool.worker" in Path(f"/proc/{c}/cmdline").read_bytes()]


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="finds ComfyUI's worker processes in /proc")
def test_parallel_workers_in_a_real_comfyui(tmp_path):
    """The t2v workflow with a Wan Parallel node (ulysses=2, its worker on the CPU) renders; the worker stays for
    the next render and ends with ComfyUI's Unload models (POST /free)."""
    with _comfyui(tmp_path) as (proc, url, base, log):
        ui = load_workflow(ROOT / "example_workflows" / "wan2.1_t2v_1.3B.json")
        prompt = ui_to_api(ui, _demo_overrides())
        sampler = next(k for k, v in prompt.items() if v["class_type"] == "WanCoreSampler")
        prompt["900"] = {"class_type": "WanCoreParallel", "inputs": {"ulysses": 2, "cfg": 1, "gpus": "cpu",
                                                                    "timeout_s": 60}}
        prompt[sampler]["inputs"]["parallel"] = ["900", 0]
        body = json.dumps({"prompt": prompt, "client_id": "wancore-test"}).encode()
        request = urllib.request.Request(f"{url}/prompt", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            prompt_id = json.loads(response.read())["prompt_id"]
        history = _finished(url, prompt_id, log)
        assert history["status"]["status_str"] == "success", json.dumps(history["status"])[:3000]
        assert len(sorted((base / "output").rglob("*.mp4"))) == 1
        assert "parallel workers started: ulysses=2,cfg=1 on cpu, cpu" in log.read_text(), log.read_text()[-3000:]
        workers = _workers(proc.pid)
        assert len(workers) == 1
        deadline = time.monotonic() + 60
        while (_workers(proc.pid) or Path(f"/proc/{workers[0]}").exists()) and time.monotonic() < deadline:
            # sent again every few seconds: ComfyUI's queue loses the wake-up of a flag set while it collects garbage
            # after a prompt (it then sleeps until its next timeout), whatever the flag asks for
            _free_models(url)
            time.sleep(3)  # gone, and reaped by the pool
        assert not _workers(proc.pid) and not Path(f"/proc/{workers[0]}").exists(), log.read_text()[-3000:]
