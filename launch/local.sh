#!/usr/bin/env bash
# One host, all its local devices: python -m vljax.train with the given config and workdir.
set -euo pipefail

usage() {
  cat <<USAGE
usage: launch/local.sh [--dry-run] [--cpu-devices N] CONFIG WORKDIR [--config.KEY=VALUE ...]

  CONFIG         recipe file, e.g. configs/clip_shapes.py (optionally :ARG)
  WORKDIR        run directory; rerun with the same one to resume
  --cpu-devices  simulate N CPU devices (tests sharding on a laptop)
  --dry-run      print the command instead of running it
USAGE
}

dry_run=0; cpu_devices=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run) dry_run=1; shift ;;
    --cpu-devices) cpu_devices="$2"; shift 2 ;;
    *) break ;;
  esac
done
[[ $# -ge 2 ]] || { usage >&2; exit 2; }
config="$1"; workdir="$2"; shift 2

py="${PYTHON:-$(dirname "$0")/../.venv/bin/python}"
[[ -x "$py" ]] || py=python3
cmd=("$py" -m vljax.train --config "$config" --workdir "$workdir" "$@")
env_prefix=()
if [[ -n "$cpu_devices" ]]; then
  env_prefix=(env JAX_PLATFORMS=cpu "XLA_FLAGS=--xla_force_host_platform_device_count=$cpu_devices ${XLA_FLAGS:-}")
fi
if [[ $dry_run -eq 1 ]]; then
  printf '%q ' "${env_prefix[@]}" "${cmd[@]}"; echo
else
  exec "${env_prefix[@]}" "${cmd[@]}"
fi
