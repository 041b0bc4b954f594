"""``python -m benchmarks <what>``: run one benchmark and print its figures."""

from __future__ import annotations

import argparse


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("what", choices=["dit", "vae", "text", "video", "clip", "resume", "step", "speed", "lora",
                                                 "gguf", "vace", "memory", "fp8", "experts", "long", "parallel", "gpu"],
                        help="which benchmark to run")
    parser.add_argument("--runs", type=int, help="timed runs per case (the median is reported; dit 3, vae 1)")
    parser.add_argument("--size", choices=["small", "mid", "full"], default="small",
                        help="vae: 9 frames at 256x256 (small), 5 at 832x480 (mid), 17 at 832x480 (full: slow); "
                        "experts full: the measured pair at real size (two 14B fp8 files, 27 GiB in --out)")
    parser.add_argument("--impl", action="append", help="only these implementations (repeatable)")
    parser.add_argument("--layers", type=int, default=6, help="text: encoder layers of the 24 (memory bound)")
    parser.add_argument("--device", help="speed: render the real 1.3B config on this device (cuda) instead of the "
                        "demo model on the CPU; memory, gguf, fp8, vae: measure on this device")
    for name, default in (("width", 832), ("height", 480), ("frames", 81), ("steps", 20)):
        parser.add_argument(f"--{name}", type=int, default=default, help=f"speed on a device (default {default})")
    parser.add_argument("--model", default="t2v-1.3B", choices=["t2v-1.3B", "ti2v-5B", "t2v-14B", "i2v-14B"],
                        help="dit: the real config to time (ti2v-5B: 3 of its 30 blocks unless --blocks); parallel "
                        "with --device cuda: the config on 1, 2, 4, 8 GPUs")
    parser.add_argument("--blocks", type=int, help="dit: keep this many of the config's blocks")
    parser.add_argument("--out", help="gpu: folder of the report (default gpu_report)")
    parser.add_argument("--dry-run", action="store_true", help="gpu: list the steps and their time budgets only")
    args = parser.parse_args(argv)
    if args.what == "gpu":
        from . import gpu

        gpu.main(args.out, args.dry_run)
    elif args.what == "parallel":
        from . import parallel

        size = (args.width, args.height, args.frames) if args.device else None
        parallel.main(args.device, args.model if args.device else None, runs=args.runs or 3, size=size)
    elif args.what == "dit":
        from . import dit

        dit.main(runs=args.runs or 3, impls=tuple(args.impl or dit.IMPLS), model=args.model, blocks=args.blocks)
    elif args.what == "vae":
        from . import vae

        if args.device:
            vae.device_main(args.device, args.frames, args.height, args.width)
        else:
            vae.main(runs=args.runs or 1, size=args.size, impls=tuple(args.impl or vae.IMPLS))
    elif args.what == "text":
        from . import text

        text.main(layers=args.layers)
    elif args.what == "video":
        from . import video

        video.main()
    elif args.what == "clip":
        from . import clip

        clip.main()
    elif args.what == "resume":
        from . import resume

        resume.main()
    elif args.what == "step":
        from . import step

        step.main(runs=args.runs or 3)
    elif args.what == "lora":
        from . import lora

        lora.main()
    elif args.what == "gguf":
        from . import gguf_files

        gguf_files.main(args.device or "cpu")
    elif args.what == "vace":
        from . import vace

        vace.main()
    elif args.what == "experts":
        from . import experts

        experts.real_size_main(args.out) if args.size == "full" else experts.main()
    elif args.what == "long":
        from . import long

        long.main()
    elif args.what == "fp8":
        from . import fp8

        fp8.main(args.device or "cuda", args.width, args.height, args.frames, args.runs or 3)
    elif args.what == "memory":
        from . import memory

        memory.main(args.device or "cpu")
    elif args.what == "speed":
        if args.device:
            from . import speed_device

            speed_device.main(args.device, args.width, args.height, args.frames, args.steps)
        else:
            from . import speed

            speed.main()


if __name__ == "__main__":
    main()
