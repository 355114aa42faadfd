# SPDX-License-Identifier: Apache-2.0
"""
``registry.rst``, ``capabilities.rst``, ``decision.rst``, ``pyro_elbos.rst``,
``registry/<Class>.rst`` and ``lists/<key>.rst``: tables and lists drawn from
:data:`pyro_discrete.registry.REGISTRY`.
"""

import os

from rst import _write, inline, list_table

#: one line per registry name: where the estimator is the one to pick (qualitative, no numbers)
WHEN = {
    "score": "A reference point: Pyro's Trace_ELBO estimator, one model run per particle, no baseline.",
    "loo": "The default for any guide: unbiased, no tuning, cost linear in particles.",
    "moving_average": "One particle per step when particles are expensive; the baseline is learned across steps.",
    "vargrad": "Where leave-one-out wins (the same gradient for discrete sites), written as a variance loss.",
    "arsm": "Binary sites (DisARM: lower variance than leave-one-out at equal evaluations on 200 Bernoullis); "
    "on categorical sites leave-one-out had 16-30x lower variance at equal evaluations in the benchmarks.",
    "arm": "Binary sites, to compare with DisARM (``arsm``), which it is otherwise dominated by.",
    "coupled_disarm": "Categorical sites with many categories where ARSM's C(C-1)/2 evaluations are too many: two "
    "evaluations per particle, DisARM on the stick-breaking choices.",
    "arms": "Bernoulli sites that depend on no other sampled guide site: DisARM's antithetic coupling for any "
    "number of particles, no extra model evaluations.",
    "carms": "Categorical sites that depend on no other sampled guide site: ARMS's coupling for categories, "
    "no extra model evaluations; its pair probabilities cost O(C^2 (C + n^2)) per latent.",
    "indecater": "A few latents per site: every category of every latent is evaluated (half leave-one-out's "
    "variance at equal evaluations with 2 x 10 latents; with 20 x 10 the K(C-1) evaluations cost more).",
    "rebar": "Bernoulli or one-hot sites in a model that accepts relaxed values: a learned control variate "
    "through the relaxation.",
    "rodeo": "Bernoulli sites in a model differentiable in its values: control variates built from the other "
    "samples, learned.",
    "double_cv": "Bernoulli sites, as RODEO with one learned scalar instead of a network.",
    "concrete": "A biased but pathwise gradient at one particle, when the relaxed objective is acceptable.",
    "st-concrete": "The model needs hard values and a biased pathwise gradient is acceptable.",
    "reinmax": "Straight-through with exact discrete samples and a second-order correction; biased.",
    "gumbel_rao": "Straight-through Gumbel-softmax with its variance reduced by conditional draws; biased.",
    "gst": "Gumbel-Rao's low-variance straight-through gradient without its conditional draws; biased.",
    "unordered": "One discrete site with a small or peaked joint support: distinct samples, exact when they "
    "cover it (no gain over leave-one-out on a 20 x 10 site).",
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

#: the same, for narrow tables
SHORT_KIND_LABELS = {
    "bernoulli": "Bernoulli",
    "categorical": "Categorical",
    "onehot": "one-hot",
    "continuous": "continuous",
    "other": "other",
}


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


def _kinds(entry, short=False):
    try:
        kinds = entry.site_kinds
    except Exception:  # noqa: BLE001
        return "?"
    labels = SHORT_KIND_LABELS if short else KIND_LABELS
    return ", ".join(labels.get(k, k) for k in KIND_ORDER if k in kinds)


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

    # narrow enough for the page: the registry name and the site kinds in short words
    header = [
        "estimator",
        "unbiased",
        "evaluations per step",
        "site kinds",
        "guide deps.",
        "when it wins",
    ]
    rows = [
        [
            "``{}``: {}".format(e.name, class_cell(e)),
            _unbiased(e),
            evaluations_formula(e),
            _kinds(e, short=True),
            _yes(e.guide_dependencies),
            WHEN.get(e.name) or inline(e.summary),
        ]
        for e in REGISTRY.values()
    ]
    _write(
        os.path.join(out_dir, "decision.rst"),
        list_table(header, rows, widths=[22, 11, 13, 14, 11, 29], css_class="fixed-widths"),
    )
    written.append(os.path.join(out_dir, "decision.rst"))

    # the assumptions each estimator rests on, beyond unmixed particles (pyro_discrete.structure)
    from pyro_discrete import structure

    assumptions = [
        structure.INDEPENDENT,
        structure.SINGLE_SITE,
        structure.LEFT_DIMS,
        structure.PER_ELEMENT,
        structure.UNMASKED,
    ]
    rows = [
        ["``{}``".format(e.name)] + [_yes(a in e.make().surrogate.assumes) for a in assumptions]
        for e in REGISTRY.values()
    ]
    _write(
        os.path.join(out_dir, "assumptions.rst"),
        list_table(["estimator"] + ["``{}``".format(a) for a in assumptions], rows),
    )
    written.append(os.path.join(out_dir, "assumptions.rst"))

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
