"""XLA's CPU compiler options in vljax's commands: a memory-ordered schedule, Eigen for lone matmuls.

- `--xla_cpu_enable_concurrency_optimized_scheduler=false`. XLA's CPU compiler by default schedules
  a program to let independent kernels run at once, which keeps many buffers live together: a small
  ViT CLIP train step (the CPU benchmark's "small") asks for 772 MiB of temporaries whatever it saves
  for the backward, and every byte of it is faulted in again each step. The memory-ordered schedule
  gives 520 MiB, and the step is no slower on a 2-core CPU (README, "XLA's CPU schedule").
- `--xla_cpu_experimental_ynn_fusion_type=-individual_dot`. XLA sends every matmul to YNNPACK by
  default; a matmul that fuses with nothing runs faster in Eigen's kernels at ViT shapes on a 2-core
  CPU (the medium CPU benchmark's step 7.1-7.8 s against 8.2-8.5 s; README, "Against PyTorch").
  Matmuls fused with their neighbours stay with YNNPACK.

vljax's commands (vljax.allocator.COMMANDS) add each setting before JAX starts, unless XLA_FLAGS
already names its flag (the user's choice stands); `import vljax` elsewhere changes nothing. Other
backends ignore them.
"""

from __future__ import annotations

import os
import sys

from vljax.allocator import running_command

SETTINGS = {  # flag -> the value vljax's commands give it
    "--xla_cpu_enable_concurrency_optimized_scheduler": "false",
    "--xla_cpu_experimental_ynn_fusion_type": "-individual_dot",
}


def with_cpu_settings(xla_flags: str) -> str:
  """XLA_FLAGS with each of SETTINGS added, unless the flag is already there."""
  names = {item.split("=", 1)[0] for item in xla_flags.split()}
  added = [f"{flag}={value}" for flag, value in SETTINGS.items() if flag not in names]
  return " ".join([xla_flags.strip(), *added]).strip()


def set_for_commands() -> None:
  """In `python -m vljax.CMD` (before JAX reads XLA_FLAGS, at its first backend), add SETTINGS."""
  if running_command(getattr(sys, "orig_argv", [])):
    os.environ["XLA_FLAGS"] = with_cpu_settings(os.environ.get("XLA_FLAGS", ""))
