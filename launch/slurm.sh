#!/usr/bin/env bash
# Multi-node GPU training under SLURM: one process per GPU (default) or per node, all running
# `python -m vljax.train`. Submit with sbatch from the repository root; the #SBATCH lines are
# defaults that sbatch's own options override (sbatch --nodes=4 launch/slurm.sh ...).
#
#SBATCH --job-name=vljax
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gres=gpu:8
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%j.out
# SIGTERM to every task 120 s before the time limit: the trainer checkpoints and exits cleanly.
#SBATCH --signal=TERM@120
#
# How processes find each other: this script exports JAX_COORDINATOR_ADDRESS=<first node>:<port>;
# inside the srun step vljax.parallel.distributed.initialize() sees SLURM (SLURM_STEP_NODELIST,
# SLURM_NTASKS > 1) and calls jax.distributed.initialize() with no arguments, so JAX takes the
# coordinator from JAX_COORDINATOR_ADDRESS and the process id / count from SLURM_PROCID /
# SLURM_NTASKS (JAX's SLURM cluster detection). One process per GPU: JAX gives each process the
# GPU numbered SLURM_LOCALID, so tasks must see all GPUs of the node (--gres=gpu:N, no per-task
# GPU binding). One process per node: JAX_LOCAL_DEVICE_IDS=0..N-1 gives it all of them.
set -euo pipefail

usage() {
  cat <<USAGE
usage: sbatch [SBATCH OPTIONS] launch/slurm.sh --config CONFIG --workdir DIR [options] [--config.KEY=VALUE ...]
       sbatch --array=0-N [SBATCH OPTIONS] launch/slurm.sh --task-list FILE [options]
       launch/slurm.sh --dry-run --nodes-list host1,host2 --config CONFIG --workdir DIR [...]

  --config CONFIG       recipe file, e.g. configs/clip_vit_b16.py (required)
  --workdir DIR         run directory on a filesystem every node sees; rerun to resume (required)
  --per-node            one process per node driving all its GPUs (default: one process per GPU)
  --gpus-per-node N     GPUs per node (default: \$SLURM_GPUS_ON_NODE, else 8)
  --cpus-per-task N     CPUs per process (default: CPUs on the node / processes per node)
  --port PORT           coordinator port (default: 61440 + job id % 4096, as JAX picks)
  --python PATH         interpreter on every node (default: .venv/bin/python of the repo, else python3)
  --repo DIR            repository root (default: this script's parent, else the submit directory)
  --nodes-list H1,H2    node names (default: scontrol show hostnames \$SLURM_JOB_NODELIST)
  --no-perf-flags       do not add the recommended XLA / NCCL settings (your XLA_FLAGS still apply)
  --validate-only       check XLA_FLAGS with --python (import jax; jax.devices()) and exit
  --dry-run             print the environment and commands; run nothing (works without SLURM)
  --task-list FILE      a job array: line i of FILE (0-based, shell-quoted) holds the --config, --workdir
                        and --config.KEY=VALUE arguments of array task i (python -m vljax.compare --plan
                        slurm writes one)
  --task-index I        the line to take (default: \$SLURM_ARRAY_TASK_ID)
  -h, --help            this text

Your own XLA_FLAGS go after the recommended ones (the last occurrence of a flag wins); NCCL_* /
CUDA_* / XLA_PYTHON_CLIENT_* variables already set are kept. XLA aborts on a flag it does not
know, so the flags are tried once on this node before the job starts.
USAGE
}

die() { echo "error: $*" >&2; exit 2; }
squote() { local s="$1"; printf "'%s'" "${s//\'/\'\\\'\'}"; }  # one shell word, readable

# ---- recommended settings for A100 / H100 (jax 0.10's XLA; each is checked at start) ----------
# Sources: [J] JAX GPU performance tips (docs.jax.dev/en/latest/gpu_performance_tips.html),
# [T] NVIDIA JAX-Toolbox GPU performance (rosetta/docs/GPU_performance.md),
# [M] MaxText A3 (H100) recipes (MaxText/configs/a3/llama_2_7b/16vm.sh).
PERF_XLA_FLAGS=(
  --xla_gpu_enable_latency_hiding_scheduler=true     # overlap collectives with compute [J][T][M]
  --xla_gpu_enable_triton_gemm=false                 # cuBLAS for matmuls [T][M]
  --xla_gpu_enable_command_buffer=                   # no CUDA graphs: auto-PGLE needs them off [J];
                                                     # [M]'s --xla_gpu_graph_level=0, removed in jax 0.10
  --xla_gpu_enable_highest_priority_async_stream=true  # collectives' stream first [T][M]
  --xla_gpu_all_reduce_combine_threshold_bytes=1073741824   # fewer, larger collectives [J][M]
  --xla_gpu_all_gather_combine_threshold_bytes=134217728    # >= one layer's FSDP weights [J][M]
  --xla_gpu_reduce_scatter_combine_threshold_bytes=134217728
  --xla_gpu_enable_pipelined_all_gather=true         # FSDP: prefetch next layer's weights [T][M]
  --xla_gpu_enable_pipelined_reduce_scatter=true     # [T][M]
  --xla_gpu_enable_pipelined_all_reduce=true         # [T][M]
  --xla_gpu_enable_while_loop_double_buffering=true  # [T][M]
  --xla_gpu_enable_all_gather_combine_by_dim=false   # [T][M]
  --xla_gpu_enable_reduce_scatter_combine_by_dim=false  # [T][M]
)
perf_env() {  # NAME=VALUE lines; a value already in the environment wins
  echo "NCCL_PROTO=${NCCL_PROTO:-SIMPLE,LL,LL128}"            # [J] NCCL flags, [T]
  echo "NCCL_LL128_BUFFSIZE=${NCCL_LL128_BUFFSIZE:--2}"       # [J] (helps within a node)
  echo "NCCL_LL_BUFFSIZE=${NCCL_LL_BUFFSIZE:--2}"             # [J]
  # One CUDA queue keeps the latency-hiding schedule's order [T]; NVIDIA advises against it on
  # Blackwell (B200/GB200): use --no-perf-flags there, or export CUDA_DEVICE_MAX_CONNECTIONS=32.
  echo "CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}"
  echo "XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.90}"  # [T]; JAX's default 0.75
}

# ---- arguments ----------------------------------------------------------------------------
config=""; workdir=""; per_node=0; gpus_per_node=""; cpus_per_task=""; port=""; py=""; repo=""
nodes_list=""; perf=1; validate_only=0; dry_run=0; overrides=()
task_list=""; task_index=""; task_loaded=0
parse_args() {
  while [[ $# -gt 0 ]]; do
    case "$1" in
      -h|--help) usage; exit 0 ;;
      --config) config="${2:?--config needs a value}"; shift 2 ;;
      --workdir) workdir="${2:?--workdir needs a value}"; shift 2 ;;
      --per-node) per_node=1; shift ;;
      --gpus-per-node) gpus_per_node="${2:?}"; shift 2 ;;
      --cpus-per-task) cpus_per_task="${2:?}"; shift 2 ;;
      --port) port="${2:?}"; shift 2 ;;
      --python) py="${2:?}"; shift 2 ;;
      --repo) repo="${2:?}"; shift 2 ;;
      --nodes-list) nodes_list="${2:?}"; shift 2 ;;
      --no-perf-flags) perf=0; shift ;;
      --validate-only) validate_only=1; shift ;;
      --dry-run) dry_run=1; shift ;;
      --task-list) task_list="${2:?--task-list needs a value}"; shift 2 ;;
      --task-index) task_index="${2:?--task-index needs a value}"; shift 2 ;;
      --config.*) overrides+=("$1"); shift ;;
      *) usage >&2; die "unknown argument '$1' (config overrides look like --config.KEY=VALUE)" ;;
    esac
  done
  if [[ -n "$task_list" && $task_loaded -eq 0 ]]; then
    task_loaded=1
    local line words
    line="$(task_line)" || exit 2
    eval "words=($line)"  # the file's words are shell-quoted
    parse_args "${words[@]}"
    return 0
  fi
  [[ -n "$config" ]] || die "--config is required, e.g. --config configs/clip_vit_b16.py"
  [[ $validate_only -eq 1 || -n "$workdir" ]] || die "--workdir is required (a directory every node sees)"
  local n
  for n in gpus_per_node cpus_per_task port; do
    [[ -z "${!n}" || "${!n}" =~ ^[1-9][0-9]*$ ]] || die "--${n//_/-} must be a positive integer, got '${!n}'"
  done
}

task_line() {  # line task_index (0-based) of the task list
  local i="${task_index:-${SLURM_ARRAY_TASK_ID:-}}" count
  [[ -n "$i" ]] || die "--task-list needs a job array (sbatch --array=0-N) or --task-index I"
  [[ "$i" =~ ^[0-9]+$ ]] || die "--task-index must be an integer >= 0, got '$i'"
  [[ -f "$task_list" ]] || die "--task-list '$task_list' does not exist"
  count="$(grep -c '' "$task_list")"
  (( i < count )) || die "--task-list '$task_list' has $count task(s) (0..$(( count - 1 ))); no task $i"
  sed -n "$(( i + 1 ))p" "$task_list"
}

# Under sbatch, $0 is a copy in SLURM's spool directory, so fall back to the submit directory.
find_repo() {
  local here; here="$(cd "$(dirname "$0")/.." 2>/dev/null && pwd || true)"
  if [[ -z "$repo" ]]; then
    if [[ -f "$here/vljax/__init__.py" ]]; then repo="$here"; else repo="${SLURM_SUBMIT_DIR:-$PWD}"; fi
  fi
  [[ -f "$repo/vljax/__init__.py" ]] \
    || die "no vljax checkout at '$repo': sbatch from the repository root or pass --repo"
  if [[ -z "$py" ]]; then
    py="${PYTHON:-$repo/.venv/bin/python}"
    [[ -x "$py" ]] || py=python3
  fi
  if [[ "$py" == */* && "$py" != /* ]]; then py="$PWD/$py"; fi  # we cd to the repo before running it
}

find_nodes() {  # fills the nodes array
  if [[ -n "$nodes_list" ]]; then
    IFS=',' read -r -a nodes <<< "$nodes_list"
  elif [[ -n "${SLURM_JOB_NODELIST:-}" ]]; then
    command -v scontrol >/dev/null || die "scontrol not found, yet SLURM_JOB_NODELIST is set"
    mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
  elif [[ $dry_run -eq 1 || $validate_only -eq 1 ]]; then
    nodes=(node1)  # placeholder so --dry-run / --validate-only work anywhere
    [[ $dry_run -eq 1 ]] && echo "# not in a SLURM allocation: placeholder node list (use --nodes-list)"
  else
    die "not inside a SLURM allocation: submit with sbatch (or try --dry-run --nodes-list host1,host2)"
  fi
  [[ ${#nodes[@]} -ge 1 && -n "${nodes[0]}" ]] || die "empty node list"
}

# ---- the environment every process gets -------------------------------------------------------
build_env() {  # fills the env_lines array (NAME=VALUE)
  local gpus="${gpus_per_node:-${SLURM_GPUS_ON_NODE:-8}}"
  gpus="${gpus%%(*}"  # some SLURM versions write "8(x2)"
  tasks_per_node=$(( per_node ? 1 : gpus ))
  num_tasks=$(( ${#nodes[@]} * tasks_per_node ))
  if [[ -z "$cpus_per_task" && -n "${SLURM_CPUS_ON_NODE:-}" ]]; then
    # JAX: divide the node's CPUs among its processes; collectives need host CPUs [J].
    local cpus="${SLURM_CPUS_ON_NODE%%(*}"
    cpus_per_task=$(( cpus / tasks_per_node )); (( cpus_per_task >= 1 )) || cpus_per_task=1
  fi
  [[ -n "$port" ]] || port=$(( 61440 + ${SLURM_JOB_ID:-0} % 4096 ))
  local xla_flags="${XLA_FLAGS:-}"
  [[ $perf -eq 1 ]] && xla_flags="${PERF_XLA_FLAGS[*]}${xla_flags:+ $xla_flags}"
  env_lines=("XLA_FLAGS=$xla_flags" "JAX_COORDINATOR_ADDRESS=${nodes[0]}:$port")
  if [[ $per_node -eq 1 ]]; then
    env_lines+=("JAX_LOCAL_DEVICE_IDS=$(seq -s, 0 $(( gpus - 1 )))")
  fi
  [[ $perf -eq 1 ]] && mapfile -t -O "${#env_lines[@]}" env_lines < <(perf_env)
  return 0
}

# XLA parses XLA_FLAGS when the backend starts and aborts on an unknown flag or a bad value; find
# out here, on one node, in a second, instead of from N crashed tasks after the queue wait.
validate_xla_flags() {
  local out rc=0
  out="$(env "${env_lines[@]}" XLA_PYTHON_CLIENT_PREALLOCATE=false "$py" -c \
    'import jax; d = jax.devices(); print(f"jax {jax.__version__}: {len(d)} {d[0].platform} device(s)")' 2>&1)" || rc=$?
  if [[ $rc -ne 0 ]]; then
    local why
    why="$(grep -E -o "(Unknown flags? in XLA_FLAGS: .*|Couldn't interpret value .*)" <<< "$out" | head -3 || true)"
    if [[ -n "$why" ]]; then
      echo "error: XLA rejected XLA_FLAGS (checked with $py):" >&2
      echo "  $why" >&2
      echo "  remove or fix that flag (export XLA_FLAGS=..., or --no-perf-flags to drop ours)" >&2
    else
      echo "error: '$py -c \"import jax; jax.devices()\"' failed on ${HOSTNAME:-this node}:" >&2
      tail -n 20 <<< "$out" >&2
    fi
    exit 3
  fi
  echo "XLA_FLAGS ok: $(tail -n 1 <<< "$out")"
  if [[ $validate_only -eq 0 && "$out" == *" cpu device"* ]]; then
    echo "warning: jax sees no GPU on ${HOSTNAME:-this node}; install its CUDA build into the venv:" \
      "pip install \"jax[cuda12]==<the jax version in requirements.txt>\"" >&2
  fi
}

main() {
  parse_args "$@"
  find_repo
  find_nodes
  build_env
  local srun_cmd=(srun --nodes="${#nodes[@]}" --ntasks="$num_tasks" --ntasks-per-node="$tasks_per_node")
  [[ -n "$cpus_per_task" ]] && srun_cmd+=(--cpus-per-task="$cpus_per_task")
  # One failed task ends the step, instead of leaving the others blocked in a collective.
  srun_cmd+=(--kill-on-bad-exit=1 "$py" -m vljax.train --config "$config" --workdir "$workdir" "${overrides[@]}")

  if [[ $dry_run -eq 1 ]]; then
    echo "# nodes: ${nodes[*]} (${#nodes[@]}); processes: $num_tasks ($tasks_per_node per node);" \
      "coordinator: ${nodes[0]}:$port"
    echo "cd $(printf '%q' "$repo")"
    local line; for line in "${env_lines[@]}"; do echo "export ${line%%=*}=$(squote "${line#*=}")"; done
    echo "XLA_PYTHON_CLIENT_PREALLOCATE=false $(printf '%q' "$py") -c 'import jax; jax.devices()'" \
      " # validates XLA_FLAGS"
    printf '%q ' "${srun_cmd[@]}"; echo
    return 0
  fi

  cd "$repo"
  validate_xla_flags
  [[ $validate_only -eq 1 ]] && return 0
  echo "nodes: ${nodes[*]}; $num_tasks processes ($tasks_per_node per node); coordinator ${nodes[0]}:$port"
  export "${env_lines[@]}"
  exec "${srun_cmd[@]}"
}

main "$@"
