"""Runs notebooks top to bottom in a Jupyter kernel (nbclient), with parameters set as papermill sets
them: a cell tagged "parameters" holds the defaults, and a cell injected right after it overrides them.

  python notebooks/execute.py notebooks/*.ipynb                  # `make notebooks`: full runs, outputs saved
  python notebooks/execute.py --set STEPS=3 --no_write notebooks/clip_shapes.ipynb   # a quick check

Each notebook runs with its own folder as the working directory; an error in any cell fails the run
(nbclient's CellExecutionError, naming the cell) and leaves the file as it was.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import time

import nbformat
from nbclient import NotebookClient

PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"


def with_parameters(nb: nbformat.NotebookNode, values: dict) -> nbformat.NotebookNode:
  """`nb` with a cell after its "parameters" cell assigning `values` (any earlier injected cell
  dropped); a value for a notebook without such a cell, or a name it does not define there, is an error."""
  cells = [c for c in nb.cells if INJECTED_TAG not in c.get("metadata", {}).get("tags", [])]
  at = next((i for i, c in enumerate(cells) if PARAMETERS_TAG in c.get("metadata", {}).get("tags", [])), None)
  if values:
    if at is None:
      raise ValueError(f"parameters {sorted(values)} given, but the notebook has no cell tagged {PARAMETERS_TAG!r}")
    defined = {t.id for node in ast.parse(cells[at].source).body if isinstance(node, ast.Assign)
               for t in node.targets if isinstance(t, ast.Name)}
    unknown = sorted(set(values) - defined)
    if unknown:
      raise ValueError(f"parameters {unknown} are not in the notebook's parameters cell; valid: {sorted(defined)}")
    source = "# Injected parameters\n" + "".join(f"{k} = {v!r}\n" for k, v in values.items())
    cells.insert(at + 1, nbformat.v4.new_code_cell(source, metadata={"tags": [INJECTED_TAG]}))
  nb.cells = cells
  return nb


def execute(path: str, values: dict | None = None, timeout: int = 3600) -> nbformat.NotebookNode:
  """The notebook at `path` run with `values` overriding its parameters; its outputs filled in."""
  _, nb = nbformat.validator.normalize(nbformat.read(path, as_version=4))  # every cell gets its id
  nb = with_parameters(nbformat.from_dict(nb), values or {})
  env = {"MPLBACKEND": "module://matplotlib_inline.backend_inline"}
  os.environ.update({k: v for k, v in env.items() if k not in os.environ})
  NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                 resources={"metadata": {"path": os.path.dirname(os.path.abspath(path))}}).execute()
  return nb


def _value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text  # a bare string


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("notebooks", nargs="+")
  parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a parameter to override")
  parser.add_argument("--no_write", action="store_true", help="run only; leave the files as they are")
  args = parser.parse_args(argv)
  values = {}
  for item in args.set:
    name, sep, text = item.partition("=")
    if not sep:
      parser.error(f"--set {item!r}: expected NAME=VALUE")
    values[name] = _value(text)
  for path in args.notebooks:
    start = time.perf_counter()
    nb = execute(path, values)
    if not args.no_write:
      nbformat.write(nb, path)
    print(f"{path}: ran in {time.perf_counter() - start:.0f} s" + ("" if args.no_write else ", outputs saved"))
  return 0


if __name__ == "__main__":
  sys.exit(main())
