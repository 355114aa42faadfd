# SPDX-License-Identifier: Apache-2.0
"""
reST for the generated pages: inline markup, headings, rubrics, ``list-table``
and ``code-block`` directives; Markdown files and CSV tables as reST; and
``_write``, which writes a fragment's lines (and leaves an unchanged file alone).
"""

import csv
import os
import re

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


def list_table(header, rows, widths=None, css_class=None):
    """A ``list-table`` directive; cells are reST already. ``css_class``: an HTML class for the table."""
    if not rows:  # a header alone is not a table to docutils; say so in words instead
        return ["*(no rows)*", ""]
    ncols = max([len(header)] + [len(r) for r in rows])
    lines = [".. list-table::", "   :header-rows: 1"]
    if widths:
        lines.append("   :widths: " + " ".join(str(w) for w in widths))
    if css_class:
        lines.append("   :class: " + css_class)
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
# writing a fragment
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
