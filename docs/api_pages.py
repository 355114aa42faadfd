# SPDX-License-Identifier: Apache-2.0
"""
``api_modules.rst``: an ``automodule`` section for every module of ``pyro_discrete``,
without what a hand-written page documents already or a module re-exports.
"""

import os
import re
import sys

from _paths import HERE
from rst import _write, heading

# ----------------------------------------------------------------------
# the API reference: every module, without what a page documents already
# ----------------------------------------------------------------------
#: module order on the API page: the public modules first, then the estimator families, then the rest
PUBLIC_MODULES = [
    "registry",
    "per_site",
    "mix",
    "auto",
    "broadcast",
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
    "arms",
    "carms",
    "indecater",
    "rodeo",
    "relax",
    "relaxed",
    "straight_through",
    "unordered_set",
    "beam",
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
