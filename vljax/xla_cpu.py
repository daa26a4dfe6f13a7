"""XLA's CPU scheduler in vljax's commands: ordered for memory, not for concurrency.

XLA's CPU compiler by default schedules a program to let independent kernels run at once, which
keeps many buffers live together: a small ViT CLIP train step (the CPU benchmark's "small") asks for
772 MiB of temporaries whatever it saves for the backward (no remat, or only q/k/v: 926 or 126 MiB
of autodiff residuals, the same 772 MiB), and every byte of it is faulted in again each step. The
memory-ordered schedule gives 520 MiB without remat and 463 MiB with q/k/v saved, and the step is no
slower on a 2-core CPU (README, "XLA's CPU schedule"). vljax's commands (vljax.allocator.COMMANDS) set
the flag before JAX starts, unless XLA_FLAGS already names it; `import vljax` elsewhere changes
nothing. Other backends ignore it.
"""

from __future__ import annotations

import os
import sys

from vljax.allocator import running_command

FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"
SETTING = f"{FLAG}=false"


def with_memory_ordered_schedule(xla_flags: str) -> str:
  """XLA_FLAGS with SETTING added, unless the flag is already there (the user's choice stands)."""
  if FLAG in xla_flags:
    return xla_flags
  return f"{xla_flags} {SETTING}".strip()


def set_for_commands() -> None:
  """In `python -m vljax.CMD` (before JAX reads XLA_FLAGS, at its first backend), add SETTING."""
  if running_command(getattr(sys, "orig_argv", [])):
    os.environ["XLA_FLAGS"] = with_memory_ordered_schedule(os.environ.get("XLA_FLAGS", ""))
