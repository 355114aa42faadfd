# SPDX-License-Identifier: Apache-2.0
"""
The documentation's code and generator.

* The README's "Quick start" section: its ```python blocks run, in order, in
  one namespace. The README leaves the networks and the data to the reader, so
  the namespace provides them: ``encoder`` (``nn.Linear(D, K * C)``),
  ``decoder`` (``nn.Linear(K * C, D)``) and ``batches`` (two batches of random
  binary images, ``(B, D)``), with ``K`` and ``C`` read from a first run of
  the blocks with ``batches = []`` (which defines them and trains nothing).
* The pages under ``docs/``: a ``.. code-block:: python`` directly preceded by
  the comment ``.. runnable`` (a blank line between them is fine) is run; the
  runnable blocks of one page share a namespace and run in page order. Other
  code blocks (fragments, commands, examples that need data) are not run.
* ``docs/generate.py`` writes the generated pages, for the repository's
  results and for a made-up results folder (with a missing optional folder).
* Marked ``slow``: the Sphinx build itself, warnings as errors and every
  reference checked (skipped without Sphinx and furo).
"""

import importlib.util
import os
import re
import subprocess
import sys
import textwrap

import pyro
import pytest
import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")

D, BATCH = 16, 8  # pixels and batch size of the README fixture


# ----------------------------------------------------------------------
# code blocks
# ----------------------------------------------------------------------
def readme_quick_start():
    """The ```python blocks of the README's "Quick start" section (up to the next ``## `` heading)."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    match = re.search(r"^## Quick start\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, "README.md has no '## Quick start' section"
    return re.findall(r"^```python\s*\n(.*?)^```", match.group(1), re.M | re.S)


_BLOCK = re.compile(r"^(?P<indent>\s*)\.\. (?:code-block|code|sourcecode):: python\s*$")


def runnable_blocks(path):
    """``[(line, code)]``: the ``.. runnable`` code blocks of an .rst file."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if line.strip() != ".. runnable":
            continue
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        match = _BLOCK.match(lines[j]) if j < len(lines) else None
        assert match, "{}:{}: '.. runnable' must precede a '.. code-block:: python'".format(path, i + 1)
        indent = len(match.group("indent"))
        j += 1
        while j < len(lines) and re.match(r"^\s+:[\w-]+:", lines[j]):  # directive options
            j += 1
        start, body = j, []
        while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent):
            body.append(lines[j])
            j += 1
        code = textwrap.dedent("\n".join(body)).strip("\n")
        assert code, "{}:{}: empty runnable block".format(path, i + 1)
        blocks.append((start + 1, code))
    return blocks


def doc_pages():
    pages = []
    for directory, subdirs, files in os.walk(DOCS):
        subdirs[:] = sorted(d for d in subdirs if d not in ("_build", "generated"))
        pages += [os.path.join(directory, f) for f in sorted(files) if f.endswith(".rst")]
    return pages


RUNNABLE_PAGES = [p for p in doc_pages() if runnable_blocks(p)]


def _run(code, name, namespace):
    exec(compile(code, name, "exec"), namespace)


def test_readme_quick_start_runs():
    blocks = readme_quick_start()
    assert blocks, "the README's quick start has no python block"
    code = "\n\n".join(blocks)
    # first pass: no batches, so nothing trains; it defines the sizes the networks need
    probe = {"__name__": "readme_quick_start", "encoder": None, "decoder": None, "batches": []}
    _run(code, "README.md (quick start, probe)", probe)
    latents = probe.get("K", 1) * probe.get("C", 1)
    pyro.clear_param_store()
    namespace = {
        "__name__": "readme_quick_start",
        "encoder": nn.Linear(D, latents),
        "decoder": nn.Linear(latents, D),
        "batches": [torch.bernoulli(torch.full((BATCH, D), 0.5)) for _ in range(2)],
    }
    _run(code, "README.md (quick start)", namespace)
    assert len(pyro.get_param_store()) > 0, "the quick start trained nothing"


def test_there_are_runnable_blocks():
    assert RUNNABLE_PAGES, "no '.. runnable' code block under docs/"


@pytest.mark.parametrize("page", RUNNABLE_PAGES, ids=lambda p: os.path.relpath(p, DOCS))
def test_runnable_blocks_run(page):
    namespace = {"__name__": "docs_" + re.sub(r"\W", "_", os.path.relpath(page, DOCS))}
    for line, code in runnable_blocks(page):
        _run(code, "{}:{}".format(os.path.relpath(page, ROOT), line), namespace)


# ----------------------------------------------------------------------
# the generator
# ----------------------------------------------------------------------
def _generate_module():
    spec = importlib.util.spec_from_file_location("docs_generate", os.path.join(DOCS, "generate.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generate_writes_the_pages(tmp_path):
    generate = _generate_module()
    written = generate.main(out_dir=str(tmp_path), help_pages=False)
    assert written and all(os.path.exists(p) for p in written)
    for name in ("registry.rst", "decision.rst", "capabilities.rst", "benchmarks.rst", "api_modules.rst"):
        assert (tmp_path / name).stat().st_size > 0, name
    from pyro_discrete.registry import REGISTRY

    decision = (tmp_path / "decision.rst").read_text(encoding="utf-8")
    for name, entry in REGISTRY.items():
        assert "``{}``".format(name) in decision
        assert (tmp_path / "registry" / (entry.cls.__name__ + ".rst")).exists()
    # every fragment a page includes exists, if only as a placeholder
    for relative in generate.INCLUDED_RESULTS:
        assert (tmp_path / "results" / (relative + ".rst")).exists(), relative
    # every result in benchmarks/results is on the Benchmarks page, with its source path
    benchmarks = (tmp_path / "benchmarks.rst").read_text(encoding="utf-8")
    results = os.path.join(ROOT, "benchmarks", "results")
    for directory, _, files in os.walk(results):
        for name in files:
            if name.rsplit(".", 1)[-1] in ("md", "csv", "png"):
                relative = os.path.relpath(os.path.join(directory, name), results).replace(os.sep, "/")
                assert "benchmarks/results/" + relative in benchmarks, relative


def test_generate_with_made_up_results(tmp_path):
    generate = _generate_module()
    results = tmp_path / "results"
    (results / "variance").mkdir(parents=True)
    (results / "variance" / "variance.md").write_text(
        "# Variance at equal cost\n\nSome *prose* with `code`, a_name_ and |pipes|.\n\n"
        "| estimator | variance |\n|---|---|\n| loo | 1.5 |\n| - | -2 |\n\n### more\n\n- a list item\n",
        encoding="utf-8",
    )
    (results / "variance" / "variance.csv").write_text("estimator,variance\nloo,1.5\n", encoding="utf-8")
    (results / "variance" / "variance.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (results / "orphan.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    out = tmp_path / "generated"
    generate.main(out_dir=str(out), results=str(results), help_pages=False)
    fragment = (out / "results" / "variance" / "variance.rst").read_text(encoding="utf-8")
    assert ".. rubric:: Variance at equal cost" in fragment
    assert "``benchmarks/results/variance/variance.md``" in fragment
    assert "benchmarks/variance.py" in fragment  # the script whose docstring says it writes it
    assert "a\\_name\\_" in fragment and "\\|pipes\\|" in fragment
    assert "     - 1.5" in fragment and "   * - \\-" in fragment
    assert (out / "results" / "variance" / "variance.png").exists()
    assert "csv" in (out / "results" / "orphan.rst").read_text(encoding="utf-8")
    # lightning/ and leaderboard/ are absent: placeholders, and the page still lists what exists
    assert "does not exist yet" in (out / "results" / "lightning" / "scaling.rst").read_text(encoding="utf-8")
    page = (out / "benchmarks.rst").read_text(encoding="utf-8")
    assert "benchmarks/results/variance/variance.png" in page and "benchmarks/results/orphan.csv" in page


def test_generate_runs_as_a_script(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(DOCS, "generate.py"), "--out", str(tmp_path), "--no-help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "decision.rst").exists() and (tmp_path / "benchmarks.rst").exists()


# ----------------------------------------------------------------------
# the build
# ----------------------------------------------------------------------
@pytest.mark.slow
def test_sphinx_build_has_no_warnings(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("furo")
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "-n", "--keep-going", "-q", "-b", "dummy", DOCS, str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]


# ----------------------------------------------------------------------
# the README's links
# ----------------------------------------------------------------------
def test_readme_links_resolve():
    """Every relative link of the README names a file of the repository."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [link.split("#")[0] for link in links if "://" not in link and not link.startswith("#")]
    assert local, "the README links to no documentation page"
    missing = [link for link in local if not os.path.exists(os.path.join(ROOT, link))]
    assert not missing, "README links to missing files: {}".format(missing)


def test_the_math_renderer_is_bundled():
    # the pages render their math offline: MathJax is a file of the docs' static path, not a CDN address
    sys.path.insert(0, DOCS)
    try:
        import conf
    finally:
        sys.path.remove(DOCS)
    assert "//" not in conf.mathjax_path
    assert os.path.getsize(os.path.join(DOCS, "_static", conf.mathjax_path)) > 500_000
    assert os.path.exists(os.path.join(DOCS, "_static", "mathjax", "LICENSE"))
