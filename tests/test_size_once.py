"""One size, set once: in i2v, flf2v and VACE graphs the conditioning node sets width, height and frames; the
sampler renders that size, says so when its own widgets disagree, and its front-end extension greys those
widgets out while conditioning (or a start latent) is connected. The example workflows agree throughout."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess

import pytest
import torch
from workflow_runner import ROOT, load_pack, load_workflow, node_classes, widget_inputs

from wan_core.demo import DEMO_FILES, DEMO_IMAGE_FILES, write_demo_models

SIZE = ("width", "height", "frames")
CONDITIONING = {"image_embeds", "vace"}


def _widgets(node: dict) -> dict:
    names = [name for name, _ in widget_inputs(node_classes()[node["type"]])]
    return {name: value for name, value in zip(names, node.get("widgets_values", [])) if name is not None}


@pytest.mark.parametrize("path", sorted((ROOT / "example_workflows").glob("*.json")), ids=lambda p: p.stem)
def test_every_example_sampler_shows_the_size_its_conditioning_sets(path):
    workflow = load_workflow(path)
    nodes = {node["id"]: node for node in workflow["nodes"]}
    links = {link[0]: link for link in workflow["links"]}
    for node in nodes.values():
        if node["type"] != "WanCoreSampler":
            continue
        for socket in node.get("inputs", []):
            if socket["name"] in CONDITIONING and socket.get("link") is not None:
                source = nodes[links[socket["link"]][1]]
                own, theirs = _widgets(node), _widgets(source)
                assert {k: own[k] for k in SIZE} == {k: theirs[k] for k in SIZE if k in theirs}, source["type"]


@pytest.fixture(scope="module")
def i2v(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_demo_models(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANCORE_MODELS", str(root))
        nodes = load_pack().NODE_CLASS_MAPPINGS
        model = nodes["WanCoreModelLoader"]().load(DEMO_IMAGE_FILES["i2v"][1], "default")[0]
        encoder = nodes["WanCoreTextEncoderLoader"]().load(DEMO_FILES["text_encoders"], "default")[0]
        vae = nodes["WanCoreVAELoader"]().load(DEMO_FILES["vae"], "default")[0]
        clip = nodes["WanCoreCLIPVisionLoader"]().load(DEMO_IMAGE_FILES["clip_vision"][1])[0]
        embeds = nodes["WanCoreTextEncode"]().encode(encoder, "a fox", "")[0]
        image = nodes["WanCoreImageToVideo"]().build(vae, torch.rand(1, 48, 64, 3), 64, 48, 5, False,
                                                        clip_vision=clip)[0]
        yield nodes["WanCoreSampler"](), model, embeds, image


@pytest.mark.parametrize("widgets, note", [
    ((96, 64, 9), "rendering 64x48, 5 frames as the image conditioning sets; the sampler's own width / height / "
                  "frames (96x64, 9 frames) are not used while it is connected"),
    ((64, 48, 5), None),
])
def test_the_sampler_renders_the_conditioning_size_and_says_when_its_widgets_differ(i2v, caplog, widgets, note):
    sampler, model, embeds, image = i2v
    with caplog.at_level(logging.INFO):
        out = sampler.run(model, embeds, *widgets, seed=1, steps=1, cfg=1.0, shift=3.0, sampler="euler",
                          denoise=1.0, image_embeds=image, resume="off")[0]["samples"]
    assert out.shape == (1, 16, 2, 6, 8)  # the conditioning's 64x48, 5 frames
    said = [r.getMessage() for r in caplog.records if "are not used while it is connected" in r.getMessage()]
    assert said == ([note] if note else [])


def test_the_sampler_tooltips_say_the_size_widgets_give_way():
    required = load_pack().NODE_CLASS_MAPPINGS["WanCoreSampler"].INPUT_TYPES()["required"]
    assert all("not used while image_embeds, vace or latent is connected" in required[k][1]["tooltip"] for k in SIZE)
    assert load_pack().WEB_DIRECTORY == "./web" and (ROOT / "web" / "wancore.js").is_file()


NODE_SCRIPT = """
import { sizeSource, syncSizeWidgets } from "./web/size_widgets.js";
const widget = (name) => ({ name, value: 1 });
const node = { inputs: [{ name: "model", link: 1 }, { name: "latent", link: null },
                        { name: "image_embeds", link: null }, { name: "vace", link: null }],
               widgets: ["width", "height", "frames", "seed"].map(widget), dirty: 0,
               setDirtyCanvas() { this.dirty += 1; } };
const show = () => node.widgets.map((w) => [w.name, w.disabled ?? null, w.label ?? null]);
const out = [];
out.push([syncSizeWidgets(node), show()]);
node.inputs[2].link = 7;  // image conditioning connected
out.push([syncSizeWidgets(node), show()]);
node.inputs[1].link = 8;  // and a start latent: its shape wins, as in the engine
out.push([sizeSource(node)]);
node.inputs[2].link = null; node.inputs[1].link = null;  // both removed
out.push([syncSizeWidgets(node), show(), node.dirty]);
console.log(JSON.stringify(out));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node.js is not installed: the front-end script is untested")
def test_the_front_end_greys_out_the_sampler_size_while_conditioning_is_connected():
    done = subprocess.run(["node", "--input-type=module", "-e", NODE_SCRIPT], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    free = [["width", False, None], ["height", False, None], ["frames", False, None], ["seed", None, None]]
    greyed = [["width", True, "width (from image_embeds)"], ["height", True, "height (from image_embeds)"],
              ["frames", True, "frames (from image_embeds)"], ["seed", None, None]]
    assert json.loads(done.stdout) == [[None, free], ["image_embeds", greyed], ["latent"], [None, free, 3]]
