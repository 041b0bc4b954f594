"""WanCoreSampler: text (and optionally image / video) conditioning -> LATENT (raw, ComfyUI's convention)."""

from __future__ import annotations

from ..wan_core import (
    CACHE_KINDS,
    SAMPLERS,
    UNLIMITED,
    CompiledRunner,
    RenderContext,
    ResidentRunner,
    ResumeFile,
    SampleRequest,
    StepCacheSettings,
    attention_backends,
    cfg_branches,
    check_render,
    check_tensors,
    latent_preview,
    manifest_versions,
    module_bytes,
    plan_for,
    sample,
)
from . import host


class WanCoreSampler:
    DESCRIPTION = ("Denoises a Wan2.1 video latent from seeded noise (text-to-video), or part-way from a LATENT "
                   "(video-to-video, denoise < 1). The same seed gives the same video on any device. Outputs raw "
                   "latents that ComfyUI's native Wan VAE nodes can decode too.")
    CATEGORY = "WanCore/sampling"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("WANCORE_MODEL", {"tooltip": "From WanCoreModelLoader."}),
            "embeds": ("WANCORE_TEXT_EMBEDS", {"tooltip": "From WanCoreTextEncode."}),
            "width": ("INT", {"default": 832, "min": 16, "max": 2048, "step": 16,
                              "tooltip": "Pixels, a multiple of 16. 832x480 (or 1280x720 for 14B) as trained."}),
            "height": ("INT", {"default": 480, "min": 16, "max": 2048, "step": 16,
                               "tooltip": "Pixels, a multiple of 16."}),
            "frames": ("INT", {"default": 81, "min": 1, "max": 1025, "step": 4,
                               "tooltip": "4n+1 frames (81 = 5 s at 16 fps). Time and memory grow with it."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**64 - 1, "control_after_generate": True,
                             "tooltip": "Noise seed; noise is drawn on the CPU, so a seed renders the same anywhere."}),
            "steps": ("INT", {"default": 50, "min": 1, "max": 200, "tooltip": "Denoising steps (official: 50 for "
                              "t2v, 40 for i2v). Fewer is faster and softer."}),
            "cfg": ("FLOAT", {"default": 5.0, "min": 1.0, "max": 20.0, "step": 0.1, "tooltip": "Prompt strength. "
                              "1.0 skips the negative pass (twice as fast); 5.0 is the official default."}),
            "shift": ("FLOAT", {"default": 5.0, "min": 0.1, "max": 30.0, "step": 0.1, "tooltip": "Schedule shift: "
                                "higher spends more steps on composition (official: 5.0; 3.0 for 480p i2v)."}),
            "sampler": (list(SAMPLERS), {"default": "unipc", "tooltip": "unipc (official default) and dpm++ are "
                                         "2nd-order multistep solvers; euler is the simple 1st-order one. "
                                         "lightx2v_4step (4 steps, shift 5) and causvid (14B: up to 9 steps; "
                                         "1.3B: 4; shift unused) are the schedules the step-distill LoRAs are "
                                         "trained for: use them with such a LoRA at cfg 1."}),
            "denoise": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01, "tooltip": "1.0 renders "
                                  "from noise; below 1 keeps that much of the input latent's structure less."}),
        }, "optional": {
            "latent": ("LATENT", {"tooltip": "Start latent for video-to-video; its size overrides width, height "
                                  "and frames."}),
            "image_embeds": ("WANCORE_IMAGE_EMBEDS", {"tooltip": "Image conditioning for i2v / flf2v models; "
                             "its size and frame count replace width, height and frames."}),
            "vace": ("WANCORE_VACE_EMBEDS", {"tooltip": "VACE conditioning (WanCoreVACEConditioning) for VACE "
                     "models; its size and frame count replace width, height and frames."}),
            "resume": (["auto", "off"], {"default": "auto", "tooltip": "auto: save the sampler's state after every "
                       "step (output/wancore_resume/) so the same render, queued again after a crash or a cancel, "
                       "continues from the last finished step with the same result; off: always start fresh."}),
            "stop_after": ("INT", {"default": 0, "min": 0, "max": 1000, "tooltip": "Stop after this many steps and "
                           "output the prediction of the final latent (a preview); queue again with 0 to continue "
                           "from there. 0: run all steps."}),
            "attention": (attention_backends(), {"default": "sdpa", "tooltip": "Attention kernel: sdpa (PyTorch, "
                          "everywhere), flash (flash-attn) or sage (SageAttention) on CUDA GPUs, auto (the fastest "
                          "installed). One that cannot run here falls back to sdpa (logged)."}),
            "compile": ("BOOLEAN", {"default": False, "tooltip": "Compile the transformer blocks with "
                        "torch.compile: the first render at a size pays a compile (minutes), later ones run faster."}),
            "vram_budget_gb": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1024.0, "step": 0.5, "tooltip": "GPU "
                               "memory this render may use, in GiB; 0: automatic (ComfyUI's free memory less its "
                               "reserve). Blocks that do not fit stream from system memory, CFG branches run one "
                               "at a time and the feed-forward in chunks as needed; the plan shows in the log."}),
            "cache": ("WANCORE_CACHE", {"tooltip": "A step cache from WanCoreCache: reuses most of the model at "
                      "steps where it would barely change the result (faster, slightly different)."}),
        }, "hidden": {"unique_id": "UNIQUE_ID"}}

    def run(self, model, embeds, width, height, frames, seed, steps, cfg, shift, sampler, denoise,
            latent=None, image_embeds=None, vace=None, resume="auto", stop_after=0, attention="sdpa",
            compile=False, cache=None, vram_budget_gb=0.0, unique_id=None):
        host.render_started()
        start = None if latent is None else latent["samples"]
        request = (vace or image_embeds).request() if (vace or image_embeds) else SampleRequest(width, height, frames)
        shape = tuple(start.shape) if start is not None else request.latent_shape()
        device = host.compute_device()
        settings = dict(seed=seed, steps=steps, cfg=cfg, shift=shift, sampler=sampler, denoise=denoise)
        conditioning = {} if image_embeds is None else {"clip_fea": image_embeds.clip_fea, "y": image_embeds.y}
        if vace is not None:
            conditioning.update(vace_context=vace.context, vace_strength=vace.strength)
        # the whole render is checked before the model moves or any noise is drawn
        check_render(model.config, shape, **settings, device=device, compute_dtype=model.compute_dtype)
        check_tensors(model, embeds.positive, embeds.negative, start, conditioning.get("clip_fea"),
                      conditioning.get("y"), shape, conditioning.get("vace_context"))
        guided = cfg_branches(embeds.negative, cfg) == 2

        def replan(budget):  # (after running out of memory) the model leaves the device; the new plan places it
            host.unload(model)
            return plan_for(model, shape, guided, device, budget, allow_sequential=cache is None)

        whole = plan_for(model, shape, guided, device, UNLIMITED)  # everything resident: what ComfyUI makes room for
        budget = host.vram_budget(model, device, vram_budget_gb, need=whole.peak)
        plan = plan_for(model, shape, guided, device, budget, allow_sequential=cache is None)
        host.report(plan.describe())
        progress = host.Progress(steps)
        placing = (host.placed_per_render(device, model) if plan.streamed
                   else host.model_on_device(model, plan.peak - module_bytes(model)))
        with host.cancellable() as interrupt, placing as device:
            raw = sample(model, embeds.positive, embeds.negative, request=request, latent=start, **settings,
                         render=_render(device, attention, compile, cache, steps, embeds.negative, cfg, model,
                                        request, plan, replan),
                         interrupt=interrupt,
                         stop_after=stop_after or None,
                         resume=ResumeFile(host.resume_path(unique_id)) if resume == "auto" else None,
                         manifest={"node": "WanCoreSampler", "settings": settings, "versions": manifest_versions()},
                         callback=lambda i, n, x0: progress.update(i + 1, latent_preview(x0)), **conditioning)
        if vace is not None:
            raw = vace.trim(raw)  # the reference images' latent frames are not part of the video
        return ({"samples": raw.cpu()},)


def _render(device, attention: str, compiled: bool, cache, steps: int, negative, cfg: float, model,
            request, plan, replan) -> RenderContext:
    """This render's context: where it computes, its attention kernel, a fresh step cache when one is connected
    (with the published tables of this model at this size), compiled blocks when asked."""
    runner = ResidentRunner() if cache is None else cache.runner(
        steps, cfg_branches(negative, cfg), model.config.model_type, model.config.dim, request.width * request.height)
    return RenderContext(device=device, attention=attention, runner=CompiledRunner(runner) if compiled else runner,
                         plan=plan, replan=replan)


class WanCoreCache:
    DESCRIPTION = ("Settings of a step cache for WanCoreSampler's cache input: at steps where the model would "
                   "barely change the result, its last contribution is reused instead of computed (per CFG "
                   "branch). mag: MagCache, tea: TeaCache, both with the published Wan2.1 tables for the model "
                   "(t2v 1.3B / 14B, i2v 480p / 720p by the render's size); first_block: the first block runs "
                   "and decides. Faster, at a small, threshold-dependent change of the video; resumable like "
                   "any render. -1 takes the published default.")
    CATEGORY = "WanCore/sampling"
    RETURN_TYPES = ("WANCORE_CACHE",)
    RETURN_NAMES = ("cache",)
    FUNCTION = "settings"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "kind": (list(CACHE_KINDS), {"default": "mag", "tooltip": "The cache method."}),
            "threshold": ("FLOAT", {"default": -1.0, "min": -1.0, "max": 10.0, "step": 0.005, "tooltip": "Higher "
                          "reuses more steps: faster, further from the uncached video. 0 never reuses. -1: "
                          "mag 0.12; tea 0.05 (t2v 1.3B), 0.10 (t2v 14B), 0.20 (i2v); first_block 0.05."}),
            "start": ("FLOAT", {"default": -1.0, "min": -1.0, "max": 1.0, "step": 0.01, "tooltip": "Share of the "
                      "first steps that always run every block (the composition forms there). -1: mag 0.2, "
                      "tea 0.1, first_block 0.2."}),
            "max_skips": ("INT", {"default": -1, "min": -1, "max": 100, "tooltip": "At most this many reused steps "
                          "in a row. -1: mag 2, tea no limit, first_block 3."}),
        }}

    def settings(self, kind, threshold, start, max_skips):
        unset = lambda value: None if value == -1 else value  # noqa: E731
        return (StepCacheSettings(kind, unset(threshold), unset(start), unset(max_skips)),)
