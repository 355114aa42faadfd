# SPDX-License-Identifier: Apache-2.0
"""
``results/<path>.rst`` and ``benchmarks.rst``: the results in ``benchmarks/results/``
as reST, each with its source path and the command that wrote it (the usage
lines of the benchmark script or example whose docstring says it writes it).
"""

import ast
import os
import re
import shutil

from _paths import RESULTS, ROOT
from rst import _write, blocks_to_rst, code_block, csv_to_rst, heading, parse_markdown, rubric, split_title

SCRIPT_DIRS = ("benchmarks", "examples")

#: the fragments that hand-written pages include: written as a placeholder
#: when the result is missing (path under benchmarks/results, without suffix)
INCLUDED_RESULTS = [
    "variance/variance",
    "leaderboard/leaderboard",
    "rebar_toy/rebar_toy",
    "relaxation_bias",
    "lightning/scaling",
    "real_models/real_models",
    "compare/compare",
    "structures",
    "random_structures",
    "random_structures_per_site",
    "arsm_step",
    "grid_summary",
    "examples/tutorial_mnist",
    "examples/introduction",
    "examples/toys",
    "examples/concrete_shapes",
    "examples/air",
    "examples/sequence",
    "air_vectorized",
    "profile_estimators",
    "profile_estimators_b1024",
    "memory_scaling",
]

#: exact commands for results that a script's generic usage lines do not pin down (by path under results, or stem)
COMMAND_OVERRIDES = {
    "grid_jit": "python benchmarks/run_benchmarks.py --estimators jit --varied base,batch --rounds 15 --out grid_jit",
    "grid_jit_summary": "python benchmarks/run_benchmarks.py --estimators jit --varied base,batch --rounds 15 "
    "--out grid_jit",
    "grid_new_estimators": "python benchmarks/run_benchmarks.py --estimators loo,arsm,coupled_disarm,arms,carms,"
    "gumbel_rao,gst --varied base,batch --out grid_new_estimators",
    "grid_new_estimators_summary": "python benchmarks/run_benchmarks.py --estimators loo,arsm,coupled_disarm,arms,"
    "carms,gumbel_rao,gst --varied base,batch --out grid_new_estimators",
    "tutorial_mnist": "python examples/discrete_vae.py --data mnist --data-dir ../shared/data/mnist --binarize none "
    "--epochs 5 --estimator loo --particles 10",
    "introduction": "python examples/introduction.py",
    "toys": "python examples/toys.py --draws 2000 --grid 2,4,16,64,256,1024",
    "concrete_shapes": "python examples/concrete_shapes.py",
    "sequence": "python examples/sequence.py",
    "profile_estimators_b1024": "python benchmarks/profile_estimators.py --estimators rodeo,double_cv,rebar,"
    "unordered,sum_and_sample --batch 1024 --rounds 3",
    "air": "python examples/air.py --steps 5000 (and --elbo tracegraph)",
    "random_structures_per_site": "python benchmarks/random_structures.py --seeds 0:300 --estimators auto,mix "
    "--no-control --out benchmarks/results/random_structures_per_site",
    "compare_multisample/compare": "python benchmarks/compare_estimators.py --data mnist "
    "--data-dir ../shared/data/mnist --epochs 1 --checkpoints 2 --draws 50 --estimators loo,vimco,rebar,vargrad,expect "
    "--out benchmarks/results/compare_multisample",
}

#: results whose producing script is not named in any docstring's "Writes ..." (stem prefix -> script)
SCRIPT_OVERRIDES = {"refactor_grid": "benchmarks/run_benchmarks.py"}

#: titles for results whose Markdown has none of its own (path under benchmarks/results, no suffix)
TITLES = {
    "arsm_step": "ARSM: time per step at equal model evaluations",
    "grid": "Benchmark grid: time and memory against hand-written steps",
    "grid_summary": "Benchmark grid: summary",
    "grid_jit": "Benchmark grid, compiled (``jit_compile=True``)",
    "grid_jit_summary": "Benchmark grid, compiled: summary",
    "grid_new_estimators": "Benchmark grid: ARMS, CARMS, coupled DisARM and GST next to leave-one-out (one run)",
    "grid_new_estimators_summary": "Benchmark grid: ARMS, CARMS, coupled DisARM and GST (summary)",
    "refactor_grid_after": "Benchmark grid after the estimator contract",
    "refactor_grid_before": "Benchmark grid before the estimator contract",
    "svi_overhead_b64": "What ``SVI.step`` adds (batch 64)",
    "svi_overhead_b64_default_malloc": "What ``SVI.step`` adds (batch 64, default allocator)",
    "tracing_floor_b64": "The tracing floor (batch 64)",
    "compare/compare": "Training the tutorial VAE with each estimator",
    "real_models/real_models": "Three models users write",
    "variance/variance": "Gradient variance at equal model evaluations",
    "lightning/scaling": "Steps per second on 1 and 2 processes",
    "leaderboard/leaderboard": "Leaderboard on two protocols of the literature",
    "rebar_toy/rebar_toy": "REBAR's toy",
}

#: a sentence that explains a table's cells, where the file does not
NOTES = {
    "grid_summary": "Cells: time ratio torch / SVI · peak-memory ratio torch / SVI, each against the hand-written "
    "PyTorch step of the same estimator timed in the same run (``torch``: ``differentiable_loss`` and a torch "
    "optimizer; ``SVI``: ``pyro.infer.SVI.step``).",
    "grid_jit_summary": "Cells: time ratio torch / SVI · peak-memory ratio torch / SVI, each against the "
    "hand-written PyTorch step of the same estimator timed in the same run.",
}


# ----------------------------------------------------------------------
# which script wrote a result, and its usage lines
# ----------------------------------------------------------------------
def script_docstrings():
    """``{relative path: docstring}`` of the benchmark scripts and examples (parsed, not imported)."""
    docs = {}
    for folder in SCRIPT_DIRS:
        directory = os.path.join(ROOT, folder)
        if not os.path.isdir(directory):
            continue
        for name in sorted(os.listdir(directory)):
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                try:
                    with open(path, encoding="utf-8") as f:
                        doc = ast.get_docstring(ast.parse(f.read()))
                except (SyntaxError, UnicodeDecodeError):
                    doc = None
                docs[folder + "/" + name] = doc or ""
    return docs


def usage_lines(doc):
    """The command lines of a docstring (``python ...``, ``pytest ...``, ``pip install ...``)."""
    commands, current = [], None
    for line in doc.splitlines():
        stripped = line.strip()
        if current is not None:
            current.append(stripped)
            if not stripped.endswith("\\"):
                commands.append("\n".join(current))
                current = None
            continue
        if re.match(r"^(python|pytest|pip install)\s", stripped):
            if stripped.endswith("\\"):
                current = [stripped]
            else:
                commands.append(stripped)
    return commands


def producing_script(relative, docs):
    """The script whose docstring says it writes ``relative`` (path under results, no suffix), or ``None``."""
    folder, stem = os.path.split(relative)
    for prefix, script in SCRIPT_OVERRIDES.items():
        if stem.startswith(prefix):
            return script
    tokens = []
    if folder:
        tokens.append(folder + "/" + stem)
    parts = stem.split("_")
    tokens += ["_".join(parts[:n]) for n in range(len(parts), 0, -1)]
    for token in tokens:
        # a file name: after a slash, a space or a backtick, and followed by its suffix, a folder or a pattern
        pattern = re.compile(r"(?<![\w.-])" + re.escape(token) + r"(?=[.\[_/{`])")
        for script, doc in docs.items():
            for m in re.finditer(r"(?i)\bwrites\b", doc):
                if pattern.search(doc[m.start() : m.start() + 400]):
                    return script
    return None


def provenance(relative, sources, docs):
    """Lines: the source files and the command that produced them."""
    out = []
    listed = ", ".join("``benchmarks/results/{}``".format(s) for s in sources)
    out += ["Source: " + listed, ""]
    stem = os.path.basename(relative)
    script = producing_script(relative, docs)
    override = COMMAND_OVERRIDES.get(relative, COMMAND_OVERRIDES.get(stem))
    if override is not None:
        out += ["Produced by:", ""] + code_block([override], "bash")
    elif script is not None:
        commands = usage_lines(docs.get(script, ""))
        out += ["Produced by ``{}``{}".format(script, ":" if commands else "."), ""]
        if commands:
            out += code_block(commands, "bash")
    else:
        out += ["Producing script: not named in the docstrings of ``benchmarks/*.py`` or ``examples/*.py``.", ""]
    return out


# ----------------------------------------------------------------------
# results
# ----------------------------------------------------------------------
def collect_results(results=RESULTS):
    """``{relative stem: {suffix: relative path}}`` of everything in ``benchmarks/results``."""
    groups = {}
    if not os.path.isdir(results):
        return groups
    for directory, subdirs, files in os.walk(results):
        subdirs.sort()
        for name in sorted(files):
            stem, suffix = os.path.splitext(name)
            suffix = suffix.lower().lstrip(".")
            if suffix not in ("md", "csv", "png"):
                continue
            relative = os.path.relpath(os.path.join(directory, stem), results).replace(os.sep, "/")
            groups.setdefault(relative, {}).setdefault(suffix, []).append(relative + "." + suffix)
    # a PNG without a table of its own goes with the longest table whose stem begins its name
    merged = {}
    for relative in sorted(groups):
        entry = groups[relative]
        if set(entry) == {"png"}:
            folder = os.path.dirname(relative)
            owners = [
                r
                for r in groups
                if r != relative
                and os.path.dirname(r) == folder
                and set(groups[r]) - {"png"}
                and os.path.basename(relative).startswith(os.path.basename(r))
            ]
            if owners:
                owner = max(owners, key=len)
                merged.setdefault(owner, {}).setdefault("extra_png", []).extend(entry["png"])
                continue
        merged.setdefault(relative, {}).update(entry)
    return merged


def result_body(relative, entry, out_dir, docs, level=None, results=RESULTS):
    """The reST of one result: title (a section at ``level``, or a rubric), provenance, table, figures."""
    sources = entry.get("md", []) + entry.get("csv", []) + entry.get("png", []) + entry.get("extra_png", [])
    title, blocks, top = None, [], 1
    if entry.get("md"):
        with open(os.path.join(results, entry["md"][0]), encoding="utf-8") as f:
            title, blocks, top = split_title(parse_markdown(f.read()))
    title = title or TITLES.get(relative) or relative
    lines = heading(title, level) if level is not None else rubric(title)
    lines += provenance(relative, sources, docs)
    if relative in NOTES:
        lines += [NOTES[relative], ""]
    lines += blocks_to_rst(blocks, None if level is None else level + 1, top)
    for path in entry.get("csv", []):
        _copy(path, out_dir, results)
        lines += [":download:`{} </generated/results/{}>`".format(os.path.basename(path), path), ""]
        if not entry.get("md"):
            lines += csv_to_rst(os.path.join(results, path))
    for path in entry.get("png", []) + entry.get("extra_png", []):
        _copy(path, out_dir, results)
        lines += [
            ".. figure:: /generated/results/" + path,
            "   :width: 100%",
            "   :alt: " + path,
            "",
            "   ``benchmarks/results/{}``".format(path),
            "",
        ]
    return lines


def _copy(path, out_dir, results):
    target = os.path.join(out_dir, "results", path)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copyfile(os.path.join(results, path), target)


def placeholder(relative, docs):
    script = producing_script(relative, docs)
    lines = rubric(TITLES.get(relative, relative)) + [
        "``benchmarks/results/{}.*`` does not exist yet.".format(relative),
        "",
    ]
    if script is not None:
        commands = usage_lines(docs.get(script, ""))
        lines += ["``{}`` writes it{}".format(script, ":" if commands else "."), ""]
        if commands:
            lines += code_block(commands, "bash")
    return lines


_GROUP_TITLES = {
    "": "Top-level results",
    "variance": "Gradient variance at equal cost",
    "real_models": "Models users write",
    "lightning": "Distributed training",
    "leaderboard": "Leaderboard",
    "compare": "Training comparison",
    "rebar_toy": "REBAR's toy",
    "examples": "The examples' results",
    "compare_multisample": "Training comparison: VIMCO, REBAR and leave-one-out",
}


def write_results(out_dir, docs, results=RESULTS):
    groups = collect_results(results)
    written = []
    for relative, entry in groups.items():
        path = os.path.join(out_dir, "results", relative + ".rst")
        _write(path, result_body(relative, entry, out_dir, docs, level=None, results=results))
        written.append(path)
    for relative in INCLUDED_RESULTS:
        if relative not in groups:
            path = os.path.join(out_dir, "results", relative + ".rst")
            _write(path, placeholder(relative, docs))
            written.append(path)
    # the Benchmarks page: one section per folder, one subsection per result
    body = []
    if not groups:
        body += ["``benchmarks/results/`` holds no results yet.", ""]
    folders = sorted({os.path.dirname(r) for r in groups}, key=lambda f: (f != "", f))
    for folder in folders:
        title = _GROUP_TITLES.get(folder, folder.replace("_", " ").capitalize())
        body += [".. _results-{}:".format(_slug(folder or "top")), ""]
        body += heading(title + ("" if not folder else " (``{}/``)".format(folder)), 1)
        for relative in sorted(r for r in groups if os.path.dirname(r) == folder):
            body += [".. _results-{}:".format(_slug(relative)), ""]
            body += result_body(relative, groups[relative], out_dir, docs, level=2, results=results)
    path = os.path.join(out_dir, "benchmarks.rst")
    _write(path, body)
    written.append(path)
    _remove_stale(os.path.join(out_dir, "results"), written, groups)
    return written


def _remove_stale(directory, written, groups):
    """Removes what an earlier run generated for results that no longer exist."""
    keep = {os.path.abspath(p) for p in written}
    for entry in groups.values():
        for paths in entry.values():
            keep.update(os.path.abspath(os.path.join(directory, p)) for p in paths)
    for folder, subdirs, files in os.walk(directory, topdown=False):
        for name in files:
            if os.path.abspath(os.path.join(folder, name)) not in keep:
                os.remove(os.path.join(folder, name))
        if folder != directory and not os.listdir(folder):
            os.rmdir(folder)


def _slug(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
