#!/usr/bin/env bash
# The accelerator table in one command: bf16/cuDNN numerics checks, then the B/16 train-step
# benchmarks, results to bench_results/ (python -m vljax.bench.accelerator; --help lists the options).
#   launch/gpu_bench.sh [--dry_run] [--out DIR] [--batch_per_device N] [--recipes A,B] [--steps N]
#                       [--warmup N] [--skip_checks]
set -euo pipefail

py="${PYTHON:-$(dirname "$0")/../.venv/bin/python}"
[[ -x "$py" ]] || py=python3
exec "$py" -m vljax.bench.accelerator "$@"
