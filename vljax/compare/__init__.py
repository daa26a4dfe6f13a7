"""Objective comparisons: arms (a recipe plus overrides) x seeds at matched compute, each run an
ordinary resumable workdir, every arm judged by the same evaluations, and a report with intervals
over seeds, paired differences and plots. `python -m vljax.compare --help`; suites in configs/compare/.

  suite.py    the suite file's definition, checked, and each run's training config (no JAX)
  resolve.py  every arm through the trainer's start-up checks; its step cost and matched steps
  budget.py   step costs (the models' FLOP counts, examples, steps, seconds) and the matching
  timing.py   equal wall time: every arm's step timed on this machine, arms interleaved
  record.py   DIR/suite.json: which suite a directory holds
  runs.py     the runs one after another, skipping finished ones, filling missing evaluations
  stats.py    t intervals over seeds, paired differences
  report.py   report.json's numbers; markdown.py, plots.py: report.md and the figures
  launch.py   --dry_run's table and the SLURM / TPU plans
"""
