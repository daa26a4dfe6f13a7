#!/usr/bin/env bash
# A TPU pod slice on Cloud TPU VMs: create the VM (or reuse it), put this code and a venv on every
# worker, then run `python -m vljax.train` on all workers at once with the workdir on GCS.
#
# How processes find each other: every worker runs the same command; inside it
# vljax.parallel.distributed.initialize() sees a Cloud TPU VM and calls jax.distributed.initialize()
# with no arguments, and JAX reads the worker list and this worker's id from the TPU VM metadata
# (worker 0 is the coordinator). Nothing to pass here.
set -euo pipefail

usage() {
  cat <<USAGE
usage: launch/tpu_pod.sh --name NAME --zone ZONE --config CONFIG --workdir gs://BUCKET/DIR [options]
                         [--config.KEY=VALUE ...]

  --name NAME              TPU VM name: reused if it exists, created otherwise (required)
  --zone ZONE              e.g. us-central2-b (required)
  --config CONFIG          recipe file, e.g. configs/clip_vit_b16.py (required)
  --workdir gs://B/DIR     run directory on GCS: every worker sees it, it outlives the VM (required)
  --accelerator-type TYPE  when creating (default: v4-32)
  --runtime-version VER    when creating (default by generation: v6e v2-alpha-tpuv6e, v5p
                           v2-alpha-tpuv5, v5e v2-alpha-tpuv5-lite, v4 and older tpu-ubuntu2204-base)
  --project PROJECT        gcloud project (default: gcloud's configured project)
  --spot                   create a Spot VM (preemptible; the trainer checkpoints on SIGTERM and a
                           rerun resumes)
  --repo-url URL           git clone URL on the workers (default: copy this checkout with scp)
  --ref REF                commit / branch / tag for --repo-url (default: this checkout's HEAD)
  --remote-dir DIR         code directory on the workers, relative to home (default: vljax)
  --python-bin BIN         Python >= 3.11 on the workers (default: python3.11; apt-installed from
                           the deadsnakes PPA where missing)
  --skip-setup             code and venv are already on the workers: only run
  --detach                 run under nohup (log: ~/DIR/train.log on each worker); ssh returns at once
  --dry-run                print every command (gcloud included) and run none; needs no gcloud
  -h, --help               this text
USAGE
}

die() { echo "error: $*" >&2; exit 2; }

# One shell word per argument, quoted only where needed: what --dry-run prints can be pasted.
show() {
  local out=() a
  for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then out+=("$a"); else out+=("'${a//\'/\'\\\'\'}'"); fi
  done
  echo "${out[*]}"
}
run() {  # print, then run unless --dry-run (the trace goes to stderr so $(run ...) captures output only)
  if [[ $dry_run -eq 1 ]]; then echo "$(show "$@")"; else echo "+ $(show "$@")" >&2; "$@"; fi
}

# ---- arguments ------------------------------------------------------------------------------
name=""; zone=""; config=""; workdir=""; accel="v4-32"; runtime=""; project=""; spot=0
repo_url=""; ref=""; remote_dir="vljax"; python_bin="python3.11"; skip_setup=0; detach=0; dry_run=0
overrides=()
parse_args() {
  while [[ $# -gt 0 ]]; do
    case "$1" in
      -h|--help) usage; exit 0 ;;
      --name) name="${2:?--name needs a value}"; shift 2 ;;
      --zone) zone="${2:?--zone needs a value}"; shift 2 ;;
      --config) config="${2:?--config needs a value}"; shift 2 ;;
      --workdir) workdir="${2:?--workdir needs a value}"; shift 2 ;;
      --accelerator-type) accel="${2:?}"; shift 2 ;;
      --runtime-version) runtime="${2:?}"; shift 2 ;;
      --project) project="${2:?}"; shift 2 ;;
      --spot) spot=1; shift ;;
      --repo-url) repo_url="${2:?}"; shift 2 ;;
      --ref) ref="${2:?}"; shift 2 ;;
      --remote-dir) remote_dir="${2:?}"; shift 2 ;;
      --python-bin) python_bin="${2:?}"; shift 2 ;;
      --skip-setup) skip_setup=1; shift ;;
      --detach) detach=1; shift ;;
      --dry-run) dry_run=1; shift ;;
      --config.*) overrides+=("$1"); shift ;;
      *) usage >&2; die "unknown argument '$1' (config overrides look like --config.KEY=VALUE)" ;;
    esac
  done
  [[ -n "$name" ]] || die "--name is required (the TPU VM to create or reuse)"
  [[ -n "$zone" ]] || die "--zone is required, e.g. --zone us-central2-b"
  [[ -n "$config" ]] || die "--config is required, e.g. --config configs/clip_vit_b16.py"
  [[ -n "$workdir" ]] || die "--workdir is required: a gs:// path, e.g. gs://my-bucket/runs/clip"
  # Every worker writes checkpoints into the same run directory, and a TPU VM's disk dies with it.
  [[ "$workdir" =~ ^gs://[^/]+ ]] \
    || die "--workdir must be on a GCS bucket (gs://BUCKET/DIR), got '$workdir':" \
           "all workers share it and it outlives the VM"
  [[ -z "$runtime" ]] && runtime="$(default_runtime "$accel")"
  return 0
}

# Cloud TPU's software-version table for JAX (cloud.google.com/tpu/docs/runtimes).
default_runtime() {
  case "$1" in
    v6e-*) echo v2-alpha-tpuv6e ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-*|v5e-*) echo v2-alpha-tpuv5-lite ;;
    *) echo tpu-ubuntu2204-base ;;
  esac
}

repo="$(cd "$(dirname "$0")/.." && pwd)"
jax_version() {  # the jax pinned in requirements.txt, so the TPU build matches CPU runs
  local v; v="$(sed -n 's/^jax==\([^[:space:]#]*\).*/\1/p' "$repo/requirements.txt" | head -n 1)"
  [[ -n "$v" ]] || die "no 'jax==VERSION' line in $repo/requirements.txt"
  echo "$v"
}

tpu() {  # gcloud compute tpus tpu-vm SUBCOMMAND NAME ... with zone / project
  local sub="$1"; shift
  local cmd=(gcloud compute tpus tpu-vm "$sub" "$@" --zone="$zone")
  [[ -n "$project" ]] && cmd+=(--project="$project")
  run "${cmd[@]}"
}

# ---- 1. the TPU VM --------------------------------------------------------------------------
ensure_tpu() {
  if [[ $dry_run -eq 1 ]]; then
    tpu describe "$name" --format='value(state)'
    echo "# if it does not exist:"
    create_tpu
    echo "# if its state is STOPPED:"
    tpu start "$name"
    return 0
  fi
  command -v gcloud >/dev/null || die "gcloud not found: install the Google Cloud CLI (or use --dry-run)"
  local state
  if state="$(tpu describe "$name" --format='value(state)' 2>/dev/null)"; then
    case "$state" in
      READY) echo "reusing TPU VM $name ($zone)" ;;
      STOPPED) tpu start "$name" ;;
      *) die "TPU VM $name is $state; wait for READY, or delete it" \
             "(gcloud compute tpus tpu-vm delete $name --zone=$zone) and rerun" ;;
    esac
  else
    create_tpu
  fi
}

create_tpu() {
  local extra=(); [[ $spot -eq 1 ]] && extra+=(--spot)
  tpu create "$name" --accelerator-type="$accel" --version="$runtime" "${extra[@]}"
}

ssh_all() { tpu ssh "$name" --worker=all --command="$1"; }

# ---- 2. code and venv on every worker --------------------------------------------------------
ship_code() {
  if [[ -n "$repo_url" ]]; then
    if [[ -z "$ref" ]]; then
      ref="$(git -C "$repo" rev-parse HEAD 2>/dev/null)" || die "--ref is required when this is not a git checkout"
    fi
    local d url; d="$(printf '%q' "$remote_dir")"; url="$(printf '%q' "$repo_url")"
    ssh_all "set -e; if [ -d $d/.git ]; then git -C $d fetch -q origin; else git clone -q $url $d; fi
git -C $d checkout -q $(printf '%q' "$ref")"
    return 0
  fi
  # Copy the working tree as it is here (uncommitted edits included), without venv, runs or .git.
  local tarball="${TMPDIR:-/tmp}/vljax-$name.tgz"
  run tar -czf "$tarball" -C "$repo" --exclude=./.git --exclude=./.venv --exclude=./runs \
    --exclude=__pycache__ --exclude=.pytest_cache --exclude='*.egg-info' .
  tpu scp "$tarball" "$name:vljax-code.tgz" --worker=all
  ssh_all "set -e; mkdir -p $(printf '%q' "$remote_dir"); tar -xzf vljax-code.tgz -C $(printf '%q' "$remote_dir")"
}

setup_venv() {
  local d py; d="$(printf '%q' "$remote_dir")"; py="$(printf '%q' "$python_bin")"
  # TPU VM images ship Python 3.10; vljax needs >= 3.11.
  ssh_all "set -e; cd $d
if ! command -v $py >/dev/null; then
  sudo apt-get update -q && sudo apt-get install -y -q software-properties-common
  sudo add-apt-repository -y ppa:deadsnakes/ppa && sudo apt-get install -y -q $py $py-venv
fi
[ -x .venv/bin/python ] || $py -m venv .venv
.venv/bin/pip install -q --upgrade pip
# gcsfs: metrics/config on gs:// through etils.epath without TensorFlow; google-cloud-storage: tensorboard event files.
.venv/bin/pip install -q -r requirements.txt \"jax[tpu]==$jax_ver\" gcsfs google-cloud-storage"
}

# ---- 3. train on every worker ----------------------------------------------------------------
train() {
  local cmd a
  cmd=".venv/bin/python -m vljax.train --config $(printf '%q' "$config") --workdir $(printf '%q' "$workdir")"
  for a in "${overrides[@]}"; do cmd+=" $(printf '%q' "$a")"; done
  if [[ $detach -eq 1 ]]; then
    cmd="nohup $cmd > train.log 2>&1 < /dev/null &"
  fi
  ssh_all "cd $(printf '%q' "$remote_dir") && $cmd"
}

main() {
  parse_args "$@"
  jax_ver="$(jax_version)"
  [[ $dry_run -eq 1 ]] && echo "# dry run: nothing is created, copied or started"
  ensure_tpu
  if [[ $skip_setup -eq 0 ]]; then
    ship_code
    setup_venv
  fi
  train
}

main "$@"
