"""One run of a comparison suite, as `python -m vljax.compare` resolved it into DIR/suite.json: arm ARM's
recipe and overrides, seed K, its matched total_steps and the suite's evaluations. What the cluster
plans of vljax.compare train (launch/slurm.sh --task-list, launch/tpu_pod.sh); a local run of the
suite trains the same config.

  python -m vljax.train --config configs/compare/run.py:workdir=DIR,arm=ARM,seed=K --workdir DIR/ARM/seedK

It reads nothing but DIR/suite.json and the recipes, and starts no JAX backend (absl loads it
before the trainer initialises multi-host JAX).
"""

from vljax.compare import record, suite


def get_config(arg=None):
  args = suite.parse_run_arg(arg)
  resolved = record.read(args["workdir"])
  if resolved is None:
    raise FileNotFoundError(f"{args['workdir']!r} holds no {record.RECORD}: run `python -m vljax.compare --suite "
                            f"... --workdir {args['workdir']} --plan ...` first")
  arms = resolved["arms"]
  if args["arm"] not in arms:
    raise ValueError(f"arm={args['arm']!r} is no arm of {resolved['suite_file']}; valid: {sorted(arms)}")
  seed = int(args["seed"])
  if seed not in resolved["definition"]["seeds"]:
    raise ValueError(f"seed={seed} is no seed of {resolved['suite_file']}; valid: {resolved['definition']['seeds']}")
  return suite.run_config(resolved["definition"], args["arm"], seed, arms[args["arm"]]["total_steps"])
