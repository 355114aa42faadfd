# SPDX-License-Identifier: Apache-2.0
"""
Sphinx configuration of the pyro_discrete documentation.

Build (warnings are errors, every reference checked)::

    sphinx-build -W -n --keep-going -b html docs docs/_build/html

Nothing is fetched at build time (no intersphinx): references into torch,
Pyro, NumPy and the standard library are listed in ``nitpick_ignore_regex``;
every reference into ``pyro_discrete`` must resolve. ``docs/generate.py`` runs
when the builder starts and writes ``docs/generated/`` (the registry tables and
the benchmark results), which the pages include.
"""

import importlib
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import generate  # noqa: E402  (docs/generate.py)

import pyro_discrete  # noqa: E402

project = "pyro_discrete"
author = "the pyro_discrete authors"
copyright = "the pyro_discrete authors"
release = version = pyro_discrete.__version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.mathjax", "sphinx.ext.viewcode"]
#: the math renderer is bundled (MathJax 4.1.0, SVG output with its font, Apache-2.0: _static/mathjax/LICENSE),
#: so that the pages render their math without a network; the menu (which loads speech tools) is off
mathjax_path = "mathjax/tex-svg.js"
mathjax3_config = {"options": {"enableMenu": False}}

html_theme = "furo"
html_title = "pyro_discrete {}".format(release)
html_static_path = ["_static"]
#: the decision table keeps to the page: its column widths are honoured and long literals wrap
html_css_files = ["tables.css"]

source_suffix = {".rst": "restructuredtext"}
root_doc = "index"
# the generated fragments are included by the pages, not documents of their own
exclude_patterns = ["_build", "generated"]

autodoc_member_order = "bysource"
autodoc_default_options = {"show-inheritance": False}
autodoc_typehints = "none"
autoclass_content = "class"
add_module_names = True

nitpicky = True

# Targets outside this package: without intersphinx they cannot resolve.
nitpick_ignore_regex = [
    (r"py:.*", r"~?(torch|pyro|numpy|np|lightning|matplotlib)(\..*)?"),
    (r"py:.*", r"(int|float|str|bool|dict|list|tuple|type|callable|object|None|iterable|sequence)"),
]


# ----------------------------------------------------------------------
# resolving references into pyro_discrete that Sphinx cannot place alone
# ----------------------------------------------------------------------
def _import(path):
    """The object at a dotted path (``pyro_discrete.x.Y.z``), or ``None``."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for name in parts[i:]:
                obj = getattr(obj, name)
        except AttributeError:
            return None
        return obj
    return None


def _canonical(obj):
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if isinstance(obj, property) and obj.fget is not None:
        module, qualname = obj.fget.__module__, obj.fget.__qualname__
    if module and qualname and "<" not in qualname:
        return module + "." + qualname
    return None


def _canonical_path(path):
    """Where the object documented as ``path`` is defined: ``module.Qualified.name``."""
    parent, _, name = path.rpartition(".")
    owner = _import(parent) if parent else None
    if isinstance(owner, type):  # a member: where the class that defines it lives
        for base in owner.__mro__:
            if name in vars(base):
                found = _canonical(vars(base)[name])
                return found or (_canonical(base) + "." + name)
        return _canonical(owner) + "." + name  # an instance attribute documented with the class
    obj = _import(path)
    if obj is not None and not isinstance(obj, type(sys)):
        return _canonical(obj) or path
    return path


def _documented(env):
    """``{canonical path: documented name}`` of every Python object the build documents (cached per build)."""
    domain = env.get_domain("py")
    cache = getattr(env, "_pyro_discrete_documented", None)
    if cache is not None and cache[0] == len(domain.objects):
        return cache[1]
    mapping = {}
    for name in domain.objects:
        if name.startswith("pyro_discrete"):
            mapping.setdefault(_canonical_path(name), name)
    env._pyro_discrete_documented = (len(domain.objects), mapping)
    return mapping


def _candidates(target, module, cls):
    """
    Canonical paths a reference may mean, most specific first:

    * a dotted name into the package (``pyro_discrete.ExpectELBO``, ``DiscreteELBO.loss`` in a module
      that imports ``DiscreteELBO``) -> where it is defined;
    * an unqualified name in a class's docstring -> a member of the class or of one of its bases (an
      inherited ``loss``, an instance attribute documented on a base), or a name of the module that
      defines the class (a class documented under its re-exported name).
    """
    target = target.lstrip("~.")
    if target.startswith("pyro_discrete."):
        yield _canonical_path(target)
        return
    owner = _import(module + "." + cls) if module and cls else None
    if isinstance(owner, type):
        for base in owner.__mro__:
            if base.__module__.startswith("pyro_discrete"):
                yield _canonical(base) + "." + target
        yield _canonical_path(owner.__module__ + "." + target)
    if module:
        yield _canonical_path(module + "." + target)


def _resolve_internal(app, env, node, contnode):
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    domain = env.get_domain("py")
    documented = _documented(env)
    for candidate in _candidates(target, node.get("py:module"), node.get("py:class")):
        name = documented.get(candidate, candidate)
        if name == target or (name not in domain.objects and name not in domain.modules):
            continue
        result = domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], name, node, contnode)
        if result is not None:
            return result
    return None


def _generate(app):
    generate.main()


def setup(app):
    app.connect("builder-inited", _generate)
    app.connect("missing-reference", _resolve_internal)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
