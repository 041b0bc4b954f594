"""``python -m wan_core.bench <what>``: run one benchmark and print its figures."""

from __future__ import annotations

import argparse


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m wan_core.bench", description=__doc__)
    parser.add_argument("what", choices=["dit"], help="which benchmark to run")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per case (the median is reported)")
    parser.add_argument("--impl", action="append", help="only these implementations (repeatable)")
    args = parser.parse_args(argv)
    if args.what == "dit":
        from . import dit

        dit.main(runs=args.runs, impls=tuple(args.impl or dit.IMPLS))


if __name__ == "__main__":
    main()
