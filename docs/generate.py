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

Run by ``docs/conf.py`` when the builder starts, or by hand::

    python docs/generate.py [--out DIR]
"""

import argparse
import ast
import csv
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(ROOT, "benchmarks", "results")
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
    "arsm_step",
    "grid_summary",
]

#: exact commands for results that a script's generic usage lines do not pin down
COMMAND_OVERRIDES = {
    "grid_jit": "python benchmarks/run_benchmarks.py --estimators jit --varied base,batch --rounds 15 --out grid_jit",
    "grid_jit_summary": "python benchmarks/run_benchmarks.py --estimators jit --varied base,batch --rounds 15 "
    "--out grid_jit",
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

#: one line per registry name: where the estimator is the one to pick (qualitative, no numbers)
WHEN = {
    "score": "A reference point: Pyro's Trace_ELBO estimator, one model run per particle, no baseline.",
    "loo": "The default for any guide: unbiased, no tuning, cost linear in particles.",
    "moving_average": "One particle per step when particles are expensive; the baseline is learned across steps.",
    "vargrad": "Where leave-one-out wins (the same gradient for discrete sites), written as a variance loss.",
    "arsm": "Categorical sites with few categories and many latents: the swaps are shared by all latents of a "
    "site; DisARM for binary sites.",
    "arm": "Binary sites, to compare with DisARM (``arsm``), which it is otherwise dominated by.",
    "indecater": "Few categories and cheap model runs: every category of every latent is evaluated, so each "
    "latent is summed exactly.",
    "rebar": "Bernoulli or one-hot sites in a model that accepts relaxed values: a learned control variate "
    "through the relaxation.",
    "rodeo": "Bernoulli sites in a model differentiable in its values: control variates built from the other "
    "samples, learned.",
    "double_cv": "Bernoulli sites, as RODEO with one learned scalar instead of a network.",
    "concrete": "A biased but pathwise gradient at one particle, when the relaxed objective is acceptable.",
    "st-concrete": "The model needs hard values and a biased pathwise gradient is acceptable.",
    "reinmax": "Straight-through with exact discrete samples and a second-order correction; biased.",
    "gumbel_rao": "Straight-through Gumbel-softmax with its variance reduced by conditional draws; biased.",
    "unordered": "One discrete site with a small or peaked support: distinct samples, exact when they cover it.",
    "sum_and_sample": "One discrete site whose guide puts most of its mass on a few values.",
    "vimco": "Training the multi-sample (importance-weighted) bound instead of the ELBO.",
    "expect": "Small supports: the exact gradient; its cost grows as the joint support.",
}

KIND_LABELS = {
    "bernoulli": "Bernoulli",
    "categorical": "Categorical",
    "onehot": "OneHotCategorical",
    "continuous": "continuous (reparameterized)",
    "other": "other (no rsample)",
}

KIND_ORDER = ["bernoulli", "categorical", "onehot", "continuous", "other"]


# ----------------------------------------------------------------------
# reST helpers
# ----------------------------------------------------------------------
_SAFE_NEIGHBOURS = set(" \t\n-:/'\"<([{)]}>.,;!?\\")


def _escape(text):
    """Plain text for reST: markup characters escaped."""
    text = re.sub(r"([\\*_`|])", r"\\\1", text)
    return text.replace("::", r":\:")


def _wrap(markup, before, after):
    """Inline markup with escaped spaces where a neighbour would keep docutils from seeing it."""
    left = "" if (not before or before in _SAFE_NEIGHBOURS) else "\\ "
    right = "" if (not after or after in _SAFE_NEIGHBOURS) else "\\ "
    return left + markup + right


_INLINE = re.compile(
    r"(?P<code>`+)(?P<codetext>.+?)(?P=code)"
    r"|\*\*(?P<bold>[^*\s](?:.*?[^*\s])?)\*\*"
    r"|(?<![\w*])\*(?P<em>[^*\s](?:[^*]*?[^*\s])?)\*(?![\w*])"
    r"|\[(?P<linktext>[^\]]+)\]\((?P<url>[^)\s]+)\)"
)


def inline(text):
    """Markdown inline markup (code, bold, emphasis, links) as reST; everything else escaped."""
    out, pos = [], 0
    for m in _INLINE.finditer(text):
        out.append(_escape(text[pos : m.start()]))
        before = text[m.start() - 1] if m.start() > 0 else ""
        after = text[m.end()] if m.end() < len(text) else ""
        if m.group("code"):
            code = m.group("codetext").strip()
            markup = "``{}``".format(code) if "``" not in code else _escape(code)
        elif m.group("bold"):
            markup = "**{}**".format(_escape(m.group("bold")))
        elif m.group("em"):
            markup = "*{}*".format(_escape(m.group("em")))
        else:
            markup = "`{} <{}>`__".format(_escape(m.group("linktext")).replace("<", r"\<"), m.group("url"))
        out.append(_wrap(markup, before, after))
        pos = m.end()
    out.append(_escape(text[pos:]))
    result = "".join(out).strip()
    if re.match(r"([-+#>]|\.\.|\d+[.)](\s|$)|[A-Za-z][.)](\s|$)|\([0-9A-Za-z]+\)(\s|$))", result):
        result = "\\" + result
    return result


_ADORNMENTS = ["=", "-", "~", "^", '"', "'"]


def heading(text, level):
    """A section title at ``level`` (0: ``=``, 1: ``-``, ...); the docs use this order throughout."""
    title = inline(text)
    return [title, _ADORNMENTS[level] * max(len(title) + 2, 4), ""]


def rubric(text):
    return [".. rubric:: " + inline(text), ""]


def list_table(header, rows, widths=None):
    """A ``list-table`` directive; cells are reST already."""
    ncols = max([len(header)] + [len(r) for r in rows])
    lines = [".. list-table::", "   :header-rows: 1"]
    if widths:
        lines.append("   :widths: " + " ".join(str(w) for w in widths))
    lines.append("")
    for row in [header] + rows:
        row = list(row) + [""] * (ncols - len(row))
        for i, cell in enumerate(row):
            bullet = "   * -" if i == 0 else "     -"
            cell_lines = str(cell).split("\n")
            lines.append(bullet + (" " + cell_lines[0] if cell_lines[0] else ""))
            lines.extend("       " + extra for extra in cell_lines[1:])
    lines.append("")
    return lines


def code_block(code_lines, language="text"):
    return [".. code-block:: " + language, ""] + ["   " + line for line in code_lines] + [""]


# ----------------------------------------------------------------------
# Markdown -> reST
# ----------------------------------------------------------------------
def _split_row(line):
    cells = re.split(r"(?<!\\)\|", line.strip())
    if cells and cells[0].strip() == "":
        cells = cells[1:]
    if cells and cells[-1].strip() == "":
        cells = cells[:-1]
    return [c.strip().replace("\\|", "|") for c in cells]


def _is_separator(line):
    return bool(re.match(r"^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$", line))


_LEXERS = {"python": "python", "py": "python", "bash": "bash", "sh": "bash", "shell": "bash", "console": "console"}


def parse_markdown(text):
    """Blocks of a Markdown file: ``("heading", level, text)``, ``("table", header, rows)``,
    ``("code", language, lines)``, ``("list", items)``, ``("para", text)``."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if not stripped:
            i += 1
            continue
        fence = re.match(r"^\s*(```+|~~~+)\s*([\w+-]*)", line)
        if fence:
            marker, language = fence.group(1), fence.group(2).lower()
            body, i = [], i + 1
            indent = len(line) - len(line.lstrip())
            while i < len(lines) and not lines[i].strip().startswith(marker):
                body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
                i += 1
            blocks.append(("code", _LEXERS.get(language, "text"), body))
            i += 1
            continue
        m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", stripped)
        if m:
            blocks.append(("heading", len(m.group(1)), m.group(2)))
            i += 1
            continue
        if stripped.startswith("|") and i + 1 < len(lines) and _is_separator(lines[i + 1]):
            header = _split_row(stripped)
            rows, i = [], i + 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(_split_row(lines[i]))
                i += 1
            blocks.append(("table", header, rows))
            continue
        if re.match(r"^\s*([-*+]|\d+[.)])\s+", line):
            items = []
            while i < len(lines) and lines[i].strip():
                item = re.match(r"^\s*([-*+]|\d+[.)])\s+(.*)", lines[i])
                if item and len(lines[i]) - len(lines[i].lstrip()) <= 1:
                    items.append(item.group(2))
                elif items:
                    items[-1] += " " + lines[i].strip()
                i += 1
            blocks.append(("list", items))
            continue
        para = []
        while i < len(lines) and lines[i].strip():
            if para and (lines[i].strip().startswith("|") or re.match(r"^\s*(#{1,6}\s|```)", lines[i])):
                break
            para.append(lines[i].strip())
            i += 1
        blocks.append(("para", " ".join(para)))
    return blocks


def split_title(blocks):
    """``(title, blocks, top)``: the file's only top-level heading if it opens the file, the other
    blocks, and the heading level that sections below the title start from."""
    headings = [b for b in blocks if b[0] == "heading"]
    top = min((b[1] for b in headings), default=1)
    if blocks and blocks[0][0] == "heading" and blocks[0][1] == top and sum(b[1] == top for b in headings) == 1:
        rest = [b[1] for b in headings[1:]]
        return blocks[0][2], blocks[1:], min(rest, default=top + 1)
    return None, blocks, top


def blocks_to_rst(blocks, level=None, top=1):
    """reST of Markdown blocks: headings become sections from ``level`` on, or rubrics without ``level``."""
    out = []
    for block in blocks:
        kind = block[0]
        if kind == "heading":
            if level is not None:
                out += heading(block[2], min(level + max(0, block[1] - top), len(_ADORNMENTS) - 1))
            else:
                out += rubric(block[2])
        elif kind == "table":
            out += list_table([inline(c) for c in block[1]], [[inline(c) for c in row] for row in block[2]])
        elif kind == "code":
            out += code_block(block[2], block[1])
        elif kind == "list":
            out += ["* " + inline(item) for item in block[1]] + [""]
        else:
            out += [inline(block[1]), ""]
    return out


def markdown_to_rst(text, level=None, default_title=None):
    """
    reST of a Markdown file: its title (its only top heading, if it opens the
    file, else ``default_title``) as a section at ``level`` -- or a rubric
    without ``level`` -- and its other headings as sections below it (rubrics).
    """
    title, blocks, top = split_title(parse_markdown(text))
    title = title or default_title
    out = []
    if title:
        out += heading(title, level) if level is not None else rubric(title)
    sub = None if level is None else level + 1
    return out + blocks_to_rst(blocks, sub, top)


def csv_to_rst(path, max_rows=200):
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        return ["(empty file)", ""]
    header, body = rows[0], rows[1:]
    out = list_table([inline(c) for c in header], [[inline(c) for c in row] for row in body[:max_rows]])
    if len(body) > max_rows:
        out += ["The first {} of {} rows; the whole file is the download above.".format(max_rows, len(body)), ""]
    return out


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
    if stem in COMMAND_OVERRIDES:
        out += ["Produced by:", ""] + code_block([COMMAND_OVERRIDES[stem]], "bash")
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


# ----------------------------------------------------------------------
# the registry
# ----------------------------------------------------------------------
class _Symbol:
    """A formula in LaTeX, built by running a registry ``evaluations`` function on symbols."""

    def __init__(self, tex, precedence=3):
        self.tex, self.precedence = tex, precedence

    @staticmethod
    def _of(value):
        return value if isinstance(value, _Symbol) else _Symbol(str(value), 3)

    def _wrapped(self, precedence):
        return "({})".format(self.tex) if self.precedence < precedence else self.tex

    def __add__(self, other):
        other = self._of(other)
        return _Symbol("{} + {}".format(self.tex, other.tex), 1)

    def __radd__(self, other):
        return self._of(other) + self

    def __sub__(self, other):
        other = self._of(other)
        return _Symbol("{} - {}".format(self.tex, other._wrapped(2)), 1)

    def __rsub__(self, other):
        return self._of(other) - self

    def __mul__(self, other):
        other = self._of(other)
        left, right = self._wrapped(2), other._wrapped(2)
        glue = "" if (right.startswith("(") or left[-1:].isdigit() and not right[:1].isdigit()) else r"\,"
        return _Symbol(left + glue + right, 2)

    def __rmul__(self, other):
        return self._of(other) * self

    def __floordiv__(self, other):
        other = self._of(other)
        return _Symbol("{}/{}".format(self._wrapped(2), other._wrapped(3)), 2)

    __truediv__ = __floordiv__

    def __pow__(self, other):
        other = self._of(other)
        return _Symbol("{}^{{{}}}".format(self._wrapped(3), other.tex), 3)

    def __rpow__(self, other):
        return self._of(other) ** self


def evaluations_formula(entry):
    """Model evaluations per step as ``:math:`...```, in S (particles), C (categories), K (latents)."""
    if entry.evaluations is None:
        return "--"
    try:
        value = entry.evaluations(_Symbol("S"), _Symbol("C"), _Symbol("K"))
    except Exception:  # noqa: BLE001 - a function that does not take symbols: show one value instead
        value = None
    if isinstance(value, _Symbol):
        return ":math:`{}`".format(value.tex)
    return "{} (S = {}, C = 10, K = 2)".format(entry.evaluations(entry.particles, 10, 2), entry.particles)


def _options(entry):
    return ", ".join("{}={!r}".format(k, v) for k, v in entry.options.items())


def class_cell(entry):
    options = _options(entry)
    ref = ":class:`~{}.{}`".format(entry.cls.__module__, entry.cls.__qualname__)
    return ref + ("" if not options else " ``({})``".format(options))


def _kinds(entry):
    try:
        kinds = entry.site_kinds
    except Exception:  # noqa: BLE001
        return "?"
    return ", ".join(KIND_LABELS.get(k, k) for k in KIND_ORDER if k in kinds)


def _yes(value):
    return "yes" if value else "no"


def _unbiased(entry):
    if entry.exact:
        return "exact"
    return "yes" if entry.unbiased else "**no**"


def registry_tables(out_dir):
    from pyro_discrete.registry import PYRO_ELBOS, REGISTRY

    written = []
    header = ["name", "class and options", "summary", "unbiased", "site kinds", "model evaluations per step"]
    rows = [
        [
            "``{}``".format(e.name),
            class_cell(e),
            inline(e.summary),
            _unbiased(e),
            _kinds(e),
            evaluations_formula(e),
        ]
        for e in REGISTRY.values()
    ]
    note = [
        "Generated from :data:`pyro_discrete.registry.REGISTRY` ({} entries). :math:`S`: particles, "
        ":math:`C`: categories, :math:`K`: latents of one site.".format(len(REGISTRY)),
        "",
    ]
    _write(os.path.join(out_dir, "registry.rst"), note + list_table(header, rows))
    written.append(os.path.join(out_dir, "registry.rst"))

    header = [
        "name",
        "objective",
        "particles (fewest / tests)",
        "guide dependencies",
        "keeps state",
        "``jit_compile``",
        "vectorized only",
        "one discrete site",
        "cost grows with",
    ]
    rows = [
        [
            "``{}``".format(e.name),
            e.objective,
            "{} / {}".format(e.min_particles, e.particles),
            _yes(e.guide_dependencies),
            _yes(e.stateful),
            _yes(e.compilable),
            _yes(e.vectorized_only),
            _yes(e.single_site),
            e.cost,
        ]
        for e in REGISTRY.values()
    ]
    _write(os.path.join(out_dir, "capabilities.rst"), list_table(header, rows))
    written.append(os.path.join(out_dir, "capabilities.rst"))

    header = [
        "name",
        "class and options",
        "unbiased",
        "model evaluations per step",
        "site kinds",
        "guide dependencies",
        "when it wins",
    ]
    rows = [
        [
            "``{}``".format(e.name),
            class_cell(e),
            _unbiased(e),
            evaluations_formula(e),
            _kinds(e),
            _yes(e.guide_dependencies),
            WHEN.get(e.name) or inline(e.summary),
        ]
        for e in REGISTRY.values()
    ]
    _write(os.path.join(out_dir, "decision.rst"), list_table(header, rows, widths=[8, 18, 6, 12, 16, 7, 33]))
    written.append(os.path.join(out_dir, "decision.rst"))

    pyro_rows = [["``{}``".format(name), ":class:`~pyro.infer.{}`".format(_pyro_class(name))] for name in PYRO_ELBOS]
    _write(os.path.join(out_dir, "pyro_elbos.rst"), list_table(["name", "Pyro ELBO"], pyro_rows))
    written.append(os.path.join(out_dir, "pyro_elbos.rst"))

    # one fragment per class: its registry entries
    import pyro_discrete

    classes = {e.cls for e in REGISTRY.values()}
    for name in pyro_discrete.__all__:
        obj = getattr(pyro_discrete, name)
        base = pyro_discrete.DiscreteELBO
        if isinstance(obj, type) and issubclass(obj, base) and obj is not base:
            classes.add(obj)
    for cls in sorted(classes, key=lambda c: c.__name__):
        entries = [e for e in REGISTRY.values() if e.cls is cls]
        if not entries:
            lines = ["No registry entry uses this class.", ""]
        else:
            header = [
                "name",
                "options",
                "unbiased",
                "particles (fewest / tests)",
                "model evaluations per step",
                "guide dependencies",
                "keeps state",
                "summary",
            ]
            rows = [
                [
                    "``{}``".format(e.name),
                    "``{}``".format(_options(e)) if e.options else "--",
                    _unbiased(e),
                    "{} / {}".format(e.min_particles, e.particles),
                    evaluations_formula(e),
                    _yes(e.guide_dependencies),
                    _yes(e.stateful),
                    inline(e.summary),
                ]
                for e in entries
            ]
            lines = list_table(header, rows) + [
                "Site kinds: {}.".format(_kinds(entries[0])),
                "",
            ]
        path = os.path.join(out_dir, "registry", cls.__name__ + ".rst")
        _write(path, lines)
        written.append(path)
    return written


#: ``generated/lists/<key>.rst``: the registry names with (and without) a property, for the guidance pages
LISTS = {
    "one_particle": lambda e: e.min_particles == 1,
    "guide_dependencies": lambda e: e.guide_dependencies,
    "categorical": lambda e: "categorical" in _kind_set(e),
    "onehot": lambda e: "onehot" in _kind_set(e),
    "bernoulli": lambda e: "bernoulli" in _kind_set(e),
    "other": lambda e: "other" in _kind_set(e),
    "unbiased": lambda e: e.unbiased,
    "stateful": lambda e: e.stateful,
    "compilable": lambda e: e.compilable,
    "single_site": lambda e: e.single_site,
    "replay": lambda e: e.cost == "replay",
}


def _kind_set(entry):
    try:
        return set(entry.site_kinds)
    except Exception:  # noqa: BLE001
        return set()


def _names(entries):
    names = ["``{}``".format(e.name) for e in entries]
    if not names:
        return "none"
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def registry_lists(out_dir):
    from pyro_discrete.registry import REGISTRY

    written = []
    for key, predicate in LISTS.items():
        yes = [e for e in REGISTRY.values() if predicate(e)]
        no = [e for e in REGISTRY.values() if not predicate(e)]
        for suffix, entries in (("", yes), ("_not", no)):
            path = os.path.join(out_dir, "lists", key + suffix + ".rst")
            _write(path, [_names(entries) + ".", ""])
            written.append(path)
    return written


def _pyro_class(name):
    return {"trace": "Trace_ELBO", "tracegraph": "TraceGraph_ELBO", "enum": "TraceEnum_ELBO"}.get(name, name)


# ----------------------------------------------------------------------
# the API reference: every module, without what a page documents already
# ----------------------------------------------------------------------
#: module order on the API page: the public modules first, then the estimator families, then the rest
PUBLIC_MODULES = [
    "registry",
    "diagnostics",
    "likelihood",
    "statistics",
    "samplers",
    "baselines",
    "auxiliary",
    "errors",
    "replay",
]
FAMILY_MODULES = [
    "score",
    "vargrad",
    "arsm",
    "indecater",
    "rodeo",
    "relax",
    "relaxed",
    "straight_through",
    "unordered_set",
    "sum_and_sample",
    "gumbel",
    "vimco",
    "expect",
]

_AUTO = re.compile(r"^\.\. auto(?:class|function|data|exception|attribute|method)::\s+(\S+)", re.M)


def documented_elsewhere(docs_dir=HERE):
    """``{module: [names]}`` of the objects that hand-written pages document with ``auto*`` directives."""
    import importlib

    found = {}
    for directory, subdirs, files in os.walk(docs_dir):
        subdirs[:] = [d for d in subdirs if d not in ("_build", "generated")]
        for name in files:
            if not name.endswith(".rst"):
                continue
            with open(os.path.join(directory, name), encoding="utf-8") as f:
                for target in _AUTO.findall(f.read()):
                    module, _, attr = target.rpartition(".")
                    try:
                        obj = getattr(importlib.import_module(module), attr)
                    except (ImportError, AttributeError):
                        continue
                    home = getattr(obj, "__module__", module)
                    found.setdefault(home, []).append(getattr(obj, "__name__", attr))
    return found


def api_modules(out_dir):
    import pkgutil

    import pyro_discrete

    names = [m.name for m in pkgutil.iter_modules(pyro_discrete.__path__) if not m.name.startswith("_")]
    others = sorted(n for n in names if n not in PUBLIC_MODULES and n not in FAMILY_MODULES)
    groups = [
        ("Public modules", [n for n in PUBLIC_MODULES if n in names]),
        ("Estimator families: surrogates, samplers and helpers", [n for n in FAMILY_MODULES if n in names]),
        ("Internals", others),
    ]
    import importlib

    elsewhere = documented_elsewhere()
    lines = []
    for title, modules in groups:
        lines += heading(title, 1)
        for name in modules:
            full = "pyro_discrete." + name
            module = importlib.import_module(full)
            # names in __all__ defined in another module are documented there, not twice
            reexported = sorted(
                n
                for n in getattr(module, "__all__", [])
                if getattr(getattr(module, n, None), "__module__", full) not in (full, None)
                and not isinstance(getattr(module, n, None), type(sys))
            )
            exclude = sorted(set(elsewhere.get(full, [])) | set(reexported))
            lines += heading("``{}``".format(full), 2)
            lines += [".. automodule:: " + full, "   :members:"]
            if exclude:
                lines.append("   :exclude-members: " + ", ".join(exclude))
            lines.append("")
            if elsewhere.get(full):
                refs = ", ".join(":py:obj:`~{}.{}`".format(full, n) for n in sorted(set(elsewhere[full])))
                lines += ["Documented on its own page: {}.".format(refs), ""]
            if reexported:
                refs = ", ".join(":py:obj:`{}.{}`".format(full, n) for n in reexported)
                lines += ["Re-exported from their own modules: {}.".format(refs), ""]
    path = os.path.join(out_dir, "api_modules.rst")
    _write(path, lines)
    return [path]


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


# ----------------------------------------------------------------------
def _write(path, lines, force=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    text = "\n".join(lines).rstrip() + "\n"
    if os.path.exists(path) and not force:
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return  # unchanged: Sphinx keeps its cache
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


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
