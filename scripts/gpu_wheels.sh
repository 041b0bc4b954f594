#!/usr/bin/env bash
# Wheels for `python -m benchmarks gpu` on a machine without a package index: every package of this checkout's
# .venv (the runtime and test dependencies, wan22 included) except torch and its CUDA libraries (that machine
# brings its own build), for that machine's Python version and platform.
#   scripts/gpu_wheels.sh DIR [PYTHON_VERSION (default 3.12)] [PLATFORM (default manylinux_2_28_x86_64)]
# There: pip install --no-index --no-deps DIR/*.whl && pip install --no-deps -e .
set -euo pipefail
dir=${1:?usage: scripts/gpu_wheels.sh DIR [PYTHON_VERSION] [PLATFORM]}
py=${2:-3.12}
platform=${3:-manylinux_2_28_x86_64}
cd "$(dirname "$0")/.."
mkdir -p "$dir"
missing=()
for pin in $(.venv/bin/python -m pip freeze --exclude-editable | grep -v -i -E '^(torch|nvidia|triton|cuda|comfyui-wancore|ruff)'); do
    pip download --quiet --no-deps --dest "$dir" --only-binary=:all: --python-version "$py" \
        --platform "$platform" --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform any \
        "$pin" 2>/dev/null || missing+=("$pin")
done
echo "wheels for Python $py on $platform in $dir (torch not included): $(ls "$dir" | wc -l)"
if [ ${#missing[@]} -gt 0 ]; then echo "no wheel found for: ${missing[*]}"; exit 1; fi
