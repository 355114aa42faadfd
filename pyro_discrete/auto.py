# SPDX-License-Identifier: Apache-2.0
"""
The automatic choice of a gradient method per guide site: the sites annotated
``infer={"estimator": "auto"}`` (``config_estimator(guide, "auto")``) get a
method chosen from the model's structure (:mod:`~pyro_discrete.structure`),
by rules that rest on this package's own measurements:

1. **Exact enumeration** (``expect``) of a site whose joint support per plate
   element fits, in guide order, while the product of the enumerated supports
   stays within ``budget`` (default 64), and whose elements can be summed one
   at a time (no term outside its plate, or in another element, depends on
   it; the model broadcasts over dims left of its plates). Its gradient term
   has no variance at a cost of its support size in (parallel) evaluations,
   and the sites sampled after it see its expectation: on a categorical
   label with a dependent Bernoulli, leave-one-out on the Bernoulli has 9×
   less gradient variance with the label enumerated than without
   (``tests/test_per_site.py``, 0.52 against 4.7).
2. **DisARM** (``arsm``) for Bernoulli sites that no guide site depends on
   and whose elements can be replayed one at a time, when every sampled
   discrete site can take it (its draws double the model evaluations of
   every site) and none is enumerated (the two do not mix yet): on the
   200-Bernoulli VAE, gradient variance 135 against leave-one-out's 277 at 2
   evaluations, 66 against 96 at 4 (``benchmarks/results/variance/variance.md``);
   on the sigmoid belief network, DisARM on its top layer with leave-one-out
   on the other has 14438 against leave-one-out's 5868 at 4 evaluations
   (``benchmarks/results/real_models``), so there it is not chosen.
3. **Leave-one-out** (``loo``; a moving average with one particle) for every
   other site: on the 20×10 categorical VAE at 46 evaluations, variance 5.5
   against ARSM's 87 and IndeCateR's 24 (same table); unbiased on every
   structure of the suite.

An ELBO whose own estimator does not mix per site (VarGrad's and VIMCO's
objectives, the replaying and relaxed estimators) keeps its own method for
every site, and says so. :func:`choose` returns the choice with the reason for
each site; :meth:`~pyro_discrete.elbo.DiscreteELBO.site_methods` shows it for
a model and guide. :func:`refine` measures the choice against the alternatives
on the user's own model and data (gradient variance times time per step) and
returns the one to use.
"""

from dataclasses import dataclass, field

from .util import BERNOULLI

__all__ = ["AUTO_ENUMERATION_BUDGET", "REFINE_CANDIDATES", "Refinement", "SiteChoice", "choose", "refine"]

#: what :func:`refine` measures by default: the structural choice, and each site method that mixes per site
#: under the ELBO objective applied to every discrete site
REFINE_CANDIDATES = ("auto", "loo", "arsm", "coupled_disarm", "arms", "carms")

#: ``"auto"`` enumerates sites while the product of their supports (per plate element) stays within this
AUTO_ENUMERATION_BUDGET = 64


@dataclass
class SiteChoice:
    """
    The method of one guide site.

    :ivar str site: the guide site.
    :ivar str method: a registry name (or the ELBO's class name).
    :ivar str why: the reason, in words.
    """

    site: str
    method: str
    why: str


def _enumerable(structure, broadcasts, name):
    # None, or why the site cannot be enumerated
    s = structure.sites[name]
    if s.support is None:
        return "its support cannot be enumerated"
    if not broadcasts:
        return "the model does not broadcast over dims left of its plates"
    if structure.mixed_particles([name]):
        return "a term reduces over dims left of the plates"
    failures = structure.not_per_element([name])
    if failures:
        _, plate, term, _ = failures[0]
        return "{} depends on it across plate '{}'".format(term, plate)
    plates = {(plate, dim) for plate, dim, _ in s.frames}
    for dependent in sorted(s.dependents):
        other = structure.all_sites.get(dependent)
        outside = plates - {(plate, dim) for plate, dim, _ in (other.frames if other is not None else ())}
        if outside:
            return "guide site '{}', outside plate '{}', depends on it".format(dependent, sorted(outside)[0][0])
    return None


def choose(elbo, structure, broadcasts=True, names=None, budget=AUTO_ENUMERATION_BUDGET):
    """
    ``{site: SiteChoice}`` for the discrete guide sites ``names`` (default
    all) of a model and guide of this ``structure``, by the rules of this
    module, among the methods that mix with ``elbo``'s own.

    :param structure: a :class:`~pyro_discrete.structure.Structure`, or ``None``
        when the model could not be analyzed (then the ELBO's own method or
        leave-one-out, said so).
    :param bool broadcasts: whether the model and guide broadcast over a dim
        left of their plates (needed to enumerate).
    """
    from .per_site import _family, _label

    own = _family(elbo.surrogate)
    own_label = _label(elbo)
    sampled = "loo" if elbo.num_particles >= 2 else "moving_average"
    sampled_why = "leave-one-out" if sampled == "loo" else "a moving average (one particle; leave-one-out needs two)"
    if names is None:
        names = list(structure.sites) if structure is not None else []
    if own is None:
        why = "{} does not mix per site (its objective or replays are the whole model's): its own method".format(
            own_label
        )
        return {name: SiteChoice(name, own_label, why) for name in names}
    if structure is None:
        why = "{}: the structure could not be analyzed".format(sampled_why)
        return {name: SiteChoice(name, sampled, why) for name in names}
    choices, not_enumerated = {}, {}
    product = 1
    for name in names:
        reason = "ARSM/ARM do not mix with enumeration" if own == "pseudo_action" else None
        reason = reason or _enumerable(structure, broadcasts, name)
        support = structure.sites[name].support
        if reason is None and product * support > budget:
            reason = "{} joint values{}, over {}".format(
                product * support, " with the sites enumerated before it" if product > 1 else "", budget
            )
        if reason is None:
            product *= support
            choices[name] = SiteChoice(
                name, "expect", "exact enumeration: {} values per element, no variance".format(support)
            )
        else:
            not_enumerated[name] = reason
    enumerated = bool(choices)
    for name in names:
        if name in choices:
            continue
        s = structure.sites[name]
        # DisARM replays the model at the pseudo-actions along a dim left of the plates (and of the particles)
        not_replayable = None
        if s.kind != BERNOULLI:
            not_replayable = "the lowest variance measured for categorical sites"
        elif s.dependents:
            not_replayable = "guide site{} {} depend{} on it".format(
                "s" if len(s.dependents) > 1 else "",
                ", ".join("'{}'".format(n) for n in sorted(s.dependents)),
                "" if len(s.dependents) > 1 else "s",
            )
        elif not broadcasts or structure.not_per_element([name]) or structure.mixed_particles([name]):
            not_replayable = "it cannot be replayed one plate element at a time"
        elif enumerated or own == "enumeration":
            not_replayable = "DisARM does not mix with enumerated sites"
        if not_replayable is None:
            choices[name] = SiteChoice(
                name, "arsm", "DisARM: a Bernoulli site no guide site depends on; half leave-one-out's variance"
            )
        else:
            why = "{}: {}; not enumerated: {}".format(sampled_why, not_replayable, not_enumerated[name])
            choices[name] = SiteChoice(name, sampled, why)
    # DisARM's draws double the model evaluations of every particle, for every site: worth it when it is the
    # method of every sampled discrete site (the 200-Bernoulli VAE), not when other sites pay for it with
    # leave-one-out (the sigmoid belief network of examples/real_models.py: DisARM on its top layer and
    # leave-one-out on the other, gradient variance 14438 against 5868 for leave-one-out at 4 evaluations)
    others = [n for n in names if choices[n].method not in ("arsm", "expect")]
    if others and any(choices[n].method == "arsm" for n in names):
        for name in names:
            if choices[name].method == "arsm":
                why = "{}: DisARM would double the evaluations of every site, and {} cannot take it".format(
                    sampled_why, ", ".join("'{}'".format(n) for n in others)
                )
                choices[name] = SiteChoice(name, sampled, why)
    return {name: choices[name] for name in names}


@dataclass
class Refinement:
    """
    What :func:`refine` measured: one row per candidate, and the chosen one.

    :ivar str best: the candidate with the lowest ``variance * ms_per_step``;
        ``config_estimator(guide, refinement.best)`` applies it.
    :ivar list rows: dicts with ``candidate``, ``methods`` (site: method),
        ``variance``, ``ms_per_step``, ``score`` and ``refused`` (the
        :class:`~pyro_discrete.errors.EstimatorError` of a candidate the ELBO
        refused on this model, ``None`` otherwise).
    """

    best: str
    rows: list = field(default_factory=list)

    def __str__(self):
        lines = ["| candidate | methods | variance | ms per step | variance x ms | |", "|---|---|---|---|---|---|"]
        for r in self.rows:
            if r["refused"] is not None:
                lines.append("| {} | – | – | – | – | refused: {} |".format(r["candidate"], r["refused"].requirement))
                continue
            lines.append(
                "| {} | {} | {:.4g} | {:.2f} | {:.4g} | {} |".format(
                    r["candidate"],
                    ", ".join("{}: {}".format(k, v) for k, v in r["methods"].items()),
                    r["variance"],
                    r["ms_per_step"],
                    r["score"],
                    "chosen" if r["candidate"] == self.best else "",
                )
            )
        return "\n".join(lines)


def refine(elbo, model, guide, *args, candidates=REFINE_CANDIDATES, num_draws=50, params=None, **kwargs):
    """
    Measures per-site specs on the user's model and data and picks the one
    with the lowest gradient variance times time per step (the variance at
    equal time): each candidate -- ``"auto"`` or a registry name, applied to
    every discrete guide site with :func:`~pyro_discrete.config_estimator` --
    gets ``num_draws`` gradient draws and a timing at the current parameters
    through :func:`~pyro_discrete.diagnostics.gradient_statistics`; nothing is
    trained and the ELBO's state is not advanced. A candidate the ELBO refuses
    on this model (an :class:`~pyro_discrete.errors.EstimatorError`, e.g. a
    replaying method on a site another guide site depends on) is a row that
    says why.

    :param elbo: the ELBO to train with (its own estimator for the sites a
        candidate does not annotate).
    :param candidates: the specs to measure.
    :param int num_draws: gradient draws per candidate.
    :param params: the parameters whose gradient variance counts (default:
        every parameter the ELBO touches).
    :returns: a :class:`Refinement`.
    """
    from .diagnostics import gradient_statistics
    from .errors import EstimatorError
    from .per_site import config_estimator

    rows = []
    for candidate in candidates:
        annotated = config_estimator(guide, candidate)
        row = {"candidate": candidate, "refused": None}
        try:
            row["methods"] = {c.site: c.method for c in elbo.site_methods(model, annotated, *args, **kwargs)}
            stats = gradient_statistics(
                elbo, model, annotated, *args, num_draws=num_draws, params=params, timing_repeats=3, **kwargs
            )
        except EstimatorError as error:
            row["refused"] = error
            rows.append(row)
            continue
        row["variance"] = stats.total_variance
        row["ms_per_step"] = 1000 * stats.seconds_per_step
        row["score"] = row["variance"] * row["ms_per_step"]
        rows.append(row)
    measured = [r for r in rows if r["refused"] is None]
    if not measured:
        raise rows[0]["refused"]
    return Refinement(min(measured, key=lambda r: r["score"])["candidate"], rows)
