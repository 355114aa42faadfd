# SPDX-License-Identifier: Apache-2.0
"""
Writes ``docs/generated/`` (git-ignored), which the pages include:

* ``registry.rst``, ``decision.rst``, ``capabilities.rst`` and
  ``registry/<Class>.rst``: tables drawn from
  :data:`pyro_discrete.registry.REGISTRY`;
* ``results/<path>.rst``: one fragment per result in ``benchmarks/results/``
  (Markdown tables as ``list-table`` directives, CSVs as downloads or tables,
  PNGs as figures), each with its source path and the command that wrote it
  (the usage lines of the producing script's docstring); a fragment that a
  page includes is written as a placeholder when its result does not exist;
* ``benchmarks.rst``: every result, grouped by folder, for the Benchmarks page;
* ``examples/<name>.rst``: the ``--help`` of every example, for the tutorials.

Which module writes what (all in ``docs/``):

* ``registry_pages.py``: the registry tables, ``pyro_elbos.rst`` and
  ``lists/<key>.rst`` (the registry names with and without a property);
* ``api_pages.py``: ``api_modules.rst``, the modules of the API page;
* ``results_pages.py``: ``results/<path>.rst`` and ``benchmarks.rst``;
* ``rst.py``: the reST they are made of (Markdown and CSV as reST) and
  ``_write``; ``_paths.py``: the folders;
* this file: ``examples/<name>.rst``, and ``main()``, which runs them all.

Run by ``docs/conf.py`` when the builder starts, or by hand::

    python docs/generate.py [--out DIR]
"""

import argparse
import os
import subprocess
import sys

# the modules beside this file, also when it is loaded by its path (tests/test_docs.py)
if os.path.dirname(os.path.abspath(__file__)) not in sys.path:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _paths import HERE, RESULTS, ROOT
from api_pages import api_modules
from registry_pages import registry_lists, registry_tables
from results_pages import INCLUDED_RESULTS, script_docstrings, write_results  # noqa: F401 (tests/test_docs.py reads INCLUDED_RESULTS)
from rst import _write, code_block


# ----------------------------------------------------------------------
# the examples' options
# ----------------------------------------------------------------------
def example_help(out_dir, timeout=120):
    """``examples/<name>.rst``: the ``--help`` of each example (argparse only, nothing is trained)."""
    written = []
    directory = os.path.join(ROOT, "examples")
    if not os.path.isdir(directory):
        return written
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".py"):
            continue
        path = os.path.join(out_dir, "examples", name[:-3] + ".rst")
        source = os.path.join(directory, name)
        if os.path.exists(path) and os.path.getmtime(path) >= os.path.getmtime(source):
            written.append(path)  # up to date: --help imports torch and Pyro, seconds per example
            continue
        try:
            result = subprocess.run(
                [sys.executable, os.path.join(directory, name), "--help"],
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=ROOT,
                env=env,
            )
            text = result.stdout if result.returncode == 0 else "(--help failed: {})".format(result.stderr[-500:])
        except (OSError, subprocess.TimeoutExpired) as e:
            text = "(--help failed: {})".format(e)
        text = text.replace("\t", "    ")
        lines = code_block(["$ python examples/{} --help".format(name)] + text.rstrip().splitlines(), "text")
        _write(path, lines, force=True)
        written.append(path)
    return written


def main(out_dir=None, results=RESULTS, help_pages=True):
    """Writes every generated file; returns their paths."""
    out_dir = out_dir or os.path.join(HERE, "generated")
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    os.makedirs(out_dir, exist_ok=True)
    docs = script_docstrings()
    written = registry_tables(out_dir)
    written += registry_lists(out_dir)
    written += api_modules(out_dir)
    written += write_results(out_dir, docs, results)
    if help_pages:
        written += example_help(out_dir)
    return written


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="output folder (default: docs/generated)")
    parser.add_argument("--no-help", action="store_true", help="skip running the examples' --help")
    args = parser.parse_args()
    paths = main(args.out, help_pages=not args.no_help)
    print("wrote {} files under {}".format(len(paths), args.out or os.path.join(HERE, "generated")))
