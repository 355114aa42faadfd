# SPDX-License-Identifier: Apache-2.0
"""
The registry of estimators: one :class:`Estimator` entry per estimator and
configuration, saying what it can do. The tests are parametrized over it (a
registered estimator is enrolled in the unbiasedness, loss-method, dtype and
device, compilation, error-message, state and benchmark checks), the
benchmarks and the examples' ``--estimator`` options read it, and error
messages draw their alternatives from it (:func:`alternatives`, filtered by :func:`takes`).

Adding an estimator is its module, one ``_register(Estimator(...))`` call in
this module, and its docs page. :data:`REGISTRY` is read-only.

Example::

    from pyro_discrete.registry import REGISTRY
    elbo = REGISTRY["loo"].make(num_particles=8)
    [e.name for e in REGISTRY.values() if e.unbiased and "categorical" in e.site_kinds]
"""

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Optional

__all__ = ["Estimator", "PYRO_ELBOS", "REGISTRY", "alternatives", "entry_of", "make", "names", "takes"]


@dataclass(frozen=True)
class Estimator:
    """
    A registered estimator.

    :ivar str name: the registry key (also the examples' ``--estimator`` value).
    :ivar type cls: the ELBO class.
    :ivar dict options: constructor options that define this entry.
    :ivar bool unbiased: its gradient is unbiased for its objective (exact
        estimators included).
    :ivar bool exact: it computes the objective and its gradient exactly.
    :ivar str objective: ``"elbo"``, or ``"iwae"`` (the multi-sample bound).
    :ivar int min_particles: the fewest particles it takes.
    :ivar int particles: particles used by the tests and the benchmarks.
    :ivar bool stateful: it keeps state between steps (in ``state_dict``).
    :ivar bool compilable: ``jit_compile=True`` is supported.
    :ivar bool guide_dependencies: it takes guide sites whose distribution
        depends on the value of its discrete sites.
    :ivar bool vectorized_only: ``vectorize_particles=False`` is refused.
    :ivar bool coupled_particles: it couples the particles' draws of a
        discrete site (ARMS: Bernoulli sites; CARMS: every discrete site), so
        such a site whose distribution depends on another sampled guide site
        (and so differs between particles) is refused.
    :ivar bool single_site: it takes one discrete guide site (a ``.to_event``
        site may hold many latents).
    :ivar str cost: what its cost grows with: ``"particles"``, ``"replay"``
        (each particle's model evaluations at other values of its sites),
        ``"set"`` (distinct values drawn together) or ``"enumeration"`` (the
        support).
    :ivar evaluations: ``f(num_particles, num_categories, num_latents)``, the
        model evaluations per step for one site of ``num_latents`` latents.
    :ivar for_evaluations: ``f(evaluations, num_categories, num_latents)``,
        constructor options giving about that many evaluations per step (for
        comparisons at equal cost), or ``None`` if it has no knob.
    :ivar str summary: one line, for tables.
    """

    name: str
    cls: type
    options: dict = field(default_factory=dict)
    unbiased: bool = True
    exact: bool = False
    objective: str = "elbo"
    min_particles: int = 1
    particles: int = 1
    stateful: bool = False
    compilable: bool = True
    guide_dependencies: bool = True
    vectorized_only: bool = False
    coupled_particles: bool = False
    single_site: bool = False
    cost: str = "particles"
    evaluations: Callable = None
    for_evaluations: Optional[Callable] = None
    summary: str = ""

    @property
    def site_kinds(self):
        """The guide site kinds it takes (its surrogate's ``site_kinds``)."""
        return self.make().surrogate.site_kinds

    def make(self, **overrides):
        """The ELBO, with this entry's options, ``particles`` particles, and ``overrides``."""
        kwargs = dict(self.options)
        if "num_particles" not in overrides and self.particles != 1:
            kwargs["num_particles"] = self.particles
        kwargs.update(overrides)
        return self.cls(**kwargs)

    def make_for_evaluations(self, evaluations, num_categories, num_latents, **overrides):
        """The ELBO at about ``evaluations`` model evaluations per step (where it has a knob)."""
        kwargs = {} if self.for_evaluations is None else self.for_evaluations(evaluations, num_categories, num_latents)
        kwargs.update(overrides)
        return self.make(**kwargs)


_ENTRIES = {}

#: name -> :class:`Estimator`, in registration order (read-only)
REGISTRY = MappingProxyType(_ENTRIES)


def _register(entry):
    if entry.name in _ENTRIES:
        raise ValueError("estimator {!r} is already registered".format(entry.name))
    _ENTRIES[entry.name] = entry


def names(predicate=None):
    """The registered names, optionally those whose entry satisfies ``predicate``."""
    return [name for name, entry in REGISTRY.items() if predicate is None or predicate(entry)]


def _pyro_trace(num_particles):
    from pyro.infer import Trace_ELBO

    return Trace_ELBO(num_particles=num_particles, vectorize_particles=True)


def _pyro_tracegraph(num_particles):
    from pyro.infer import TraceGraph_ELBO

    return TraceGraph_ELBO(num_particles=num_particles, vectorize_particles=True)


def _pyro_traceenum(num_particles):
    from pyro.infer import TraceEnum_ELBO

    return TraceEnum_ELBO(max_plate_nesting=1)


#: Pyro's own ELBOs, for comparisons (``name -> f(num_particles)``): ``"trace"``
#: (:class:`~pyro.infer.Trace_ELBO`), ``"tracegraph"`` (:class:`~pyro.infer.TraceGraph_ELBO`),
#: ``"enum"`` (:class:`~pyro.infer.TraceEnum_ELBO`, for models written with one site per latent)
PYRO_ELBOS = MappingProxyType({"trace": _pyro_trace, "tracegraph": _pyro_tracegraph, "enum": _pyro_traceenum})


def make(name, num_particles=None, **options):
    """
    The ELBO of a registered estimator or of :data:`PYRO_ELBOS`, by name.
    ``num_particles`` applies where the cost grows with particles (the others
    keep their registered default), as the examples' ``--particles`` does.
    """
    if name in PYRO_ELBOS:
        return PYRO_ELBOS[name](num_particles or 1)
    entry = REGISTRY[name]
    if num_particles is not None and entry.cost == "particles":
        options["num_particles"] = num_particles
    return entry.make(**options)


def takes(entry, structure, vectorized=True, left_dims=True):
    """
    Whether the registered estimator ``entry`` takes a model and guide of this
    :class:`~pyro_discrete.structure.Structure`: the kinds of its discrete guide
    sites, their number, the guide sites that depend on them, looped particles
    when ``vectorized`` is false, the joint support within the budget of an
    exact estimator, and every assumption its surrogate checks against the
    structure.
    """
    if structure.mixed_particles():  # only looped particles keep them apart, and no value laid out left of the plates
        vectorized, left_dims = False, False
    if not left_dims and entry.cost != "particles":  # replays, enumeration and sets use a dim left of the plates
        return False
    if not vectorized and entry.vectorized_only:
        return False
    kinds = {s.kind for s in structure.sites.values()}
    if not kinds <= entry.site_kinds:
        return False
    if entry.single_site and len(structure.sites) > 1:
        return False
    if not entry.guide_dependencies and any(s.dependents for s in structure.sites.values()):
        return False
    elbo = entry.make()
    if entry.cost == "enumeration":  # the joint support of one plate element, within the budget
        sizes = [s.support for s in structure.sites.values()]
        if None in sizes or math.prod(sizes) > getattr(elbo, "budget", math.inf):
            return False
    return elbo.surrogate.check_structure(structure) is None


def entry_of(elbo):
    """The first registry entry of ``elbo``'s class (``None`` for an unregistered class)."""
    for entry in REGISTRY.values():
        if entry.cls is type(elbo):
            return entry
    return None


def alternatives(elbo, structure, vectorized=True, left_dims=True):
    """
    The registry names of the unbiased estimators of the ELBO that take this
    structure (:func:`takes`), other than ``elbo``'s own class -- unless
    ``vectorized`` is false and that class runs looped particles. With
    ``left_dims`` false, the model does not broadcast over a batch dim left of
    its plates: only estimators that need none (looped particles) are named.
    """
    own = type(elbo)
    found = []
    for entry in REGISTRY.values():
        if not entry.unbiased or entry.objective != "elbo":
            continue
        if entry.cls is own and vectorized:
            continue
        if takes(entry, structure, vectorized, left_dims):
            found.append(entry.name)
    return found


def _particles(evaluations, num_categories, num_latents):
    return {"num_particles": max(1, int(evaluations))}


def _particles_at_least_2(evaluations, num_categories, num_latents):
    return {"num_particles": max(2, int(evaluations))}


def _same(num_particles, num_categories, num_latents):
    return num_particles


def _distinct(num_particles, num_categories, num_latents):
    # a set of distinct values holds at most the whole joint support
    return min(num_particles, num_categories**num_latents)


def _set_size(evaluations, num_categories, num_latents):
    # no larger than the joint support: past it the set is the support (exact), and its cost keeps growing
    return {"num_particles": max(2, min(int(evaluations), num_categories**num_latents))}


def _arsm_evaluations(num_particles, num_categories, num_latents):
    return num_particles * (1 + num_categories * (num_categories - 1) // 2)


def _arsm_particles(evaluations, num_categories, num_latents):
    per_particle = 1 + num_categories * (num_categories - 1) // 2
    return {"num_particles": max(1, round(evaluations / per_particle))}


def _antithetic_evaluations(num_particles, num_categories, num_latents):
    return 2 * num_particles  # the sample and its antithetic partner, every latent flipped at once


def _antithetic_particles(evaluations, num_categories, num_latents):
    return {"num_particles": max(1, round(evaluations / 2))}


def _indecater_evaluations(num_particles, num_categories, num_latents):
    return num_particles * (1 + num_latents * (num_categories - 1))


def _indecater_particles(evaluations, num_categories, num_latents):
    return {"num_particles": max(1, round(evaluations / (1 + num_latents * (num_categories - 1))))}


def _rebar_evaluations(num_particles, num_categories, num_latents):
    return 3 * num_particles  # the sample, and the model at the two relaxed values


def _rebar_particles(evaluations, num_categories, num_latents):
    return {"num_particles": max(1, round(evaluations / 3))}


def _enumeration(num_particles, num_categories, num_latents):
    return num_particles * num_categories**num_latents


def _register_builtins():
    from .arms import ARMSELBO
    from .arsm import ARSMELBO, CoupledDisARMELBO
    from .carms import CARMSELBO
    from .expect import ExpectELBO
    from .indecater import IndeCateRELBO
    from .relax import RELAXELBO
    from .relaxed import RelaxedConcreteELBO
    from .rodeo import RODEOELBO
    from .score import TraceScoreELBO
    from .sum_and_sample import SumAndSampleELBO
    from .unordered_set import UnorderedSetELBO
    from .vargrad import VarGradELBO
    from .vimco import VIMCOELBO

    _register(
        Estimator(
            "score",
            TraceScoreELBO,
            {"baseline": None},
            evaluations=_same,
            for_evaluations=_particles,
            summary="score function (REINFORCE), no baseline: Pyro's Trace_ELBO estimator",
        )
    )
    _register(
        Estimator(
            "loo",
            TraceScoreELBO,
            {"baseline": "loo"},
            min_particles=2,
            particles=4,
            evaluations=_same,
            for_evaluations=_particles_at_least_2,
            summary="score function with the leave-one-out baseline (RLOO)",
        )
    )
    _register(
        Estimator(
            "moving_average",
            TraceScoreELBO,
            {"baseline": "moving_average"},
            particles=2,
            stateful=True,
            compilable=False,
            evaluations=_same,
            for_evaluations=_particles,
            summary="score function with a moving-average baseline",
        )
    )
    _register(
        Estimator(
            "vargrad",
            VarGradELBO,
            min_particles=2,
            particles=4,
            evaluations=_same,
            for_evaluations=_particles_at_least_2,
            summary="the log-variance loss (VarGrad); equals leave-one-out sample for sample",
        )
    )
    _register(
        Estimator(
            "arsm",
            ARSMELBO,
            {"binary": "disarm"},
            guide_dependencies=False,
            cost="replay",
            evaluations=_arsm_evaluations,
            for_evaluations=_arsm_particles,
            summary="ARSM for categorical sites, DisARM for binary ones",
        )
    )
    _register(
        Estimator(
            "arm",
            ARSMELBO,
            {"binary": "arm"},
            guide_dependencies=False,
            cost="replay",
            evaluations=_arsm_evaluations,
            for_evaluations=_arsm_particles,
            summary="ARSM for categorical sites, ARM for binary ones",
        )
    )
    _register(
        Estimator(
            "coupled_disarm",
            CoupledDisARMELBO,
            guide_dependencies=False,
            cost="replay",
            evaluations=_antithetic_evaluations,
            for_evaluations=_antithetic_particles,
            summary="coupled DisARM: categorical sites as stick-breaking binary choices, DisARM on them",
        )
    )
    _register(
        Estimator(
            "arms",
            ARMSELBO,
            min_particles=2,
            particles=4,
            vectorized_only=True,
            coupled_particles=True,
            evaluations=_same,
            for_evaluations=_particles_at_least_2,
            summary="ARMS: Bernoulli draws coupled across particles (Dirichlet copula), corrected leave-one-out",
        )
    )
    _register(
        Estimator(
            "carms",
            CARMSELBO,
            min_particles=2,
            particles=4,
            vectorized_only=True,
            coupled_particles=True,
            evaluations=_same,
            for_evaluations=_particles_at_least_2,
            summary="CARMS: categorical draws coupled across particles, pairs importance-weighted (ARMS for binary)",
        )
    )
    _register(
        Estimator(
            "indecater",
            IndeCateRELBO,
            guide_dependencies=False,
            cost="replay",
            evaluations=_indecater_evaluations,
            for_evaluations=_indecater_particles,
            summary="IndeCateR: every category of every latent evaluated, the others at the sample",
        )
    )
    _register(
        Estimator(
            "rebar",
            RELAXELBO,
            {"control_variate": "rebar"},
            stateful=True,
            compilable=False,
            guide_dependencies=False,
            cost="replay",
            evaluations=_rebar_evaluations,
            for_evaluations=_rebar_particles,
            summary="REBAR: the relaxation as a control variate, eta and temperature learned",
        )
    )
    _register(
        Estimator(
            "rodeo",
            RODEOELBO,
            min_particles=2,
            particles=2,
            stateful=True,
            compilable=False,
            vectorized_only=True,
            evaluations=_same,
            for_evaluations=_particles_at_least_2,
            summary="RODEO: leave-one-out with learned discrete Stein control variates (Bernoulli sites)",
        )
    )
    _register(
        Estimator(
            "double_cv",
            RODEOELBO,
            {"variant": "double_cv"},
            min_particles=2,
            particles=2,
            stateful=True,
            compilable=False,
            vectorized_only=True,
            evaluations=_same,
            for_evaluations=_particles_at_least_2,
            summary="Double control variates: leave-one-out plus a learned linear control variate (Bernoulli)",
        )
    )
    _register(
        Estimator(
            "concrete",
            RelaxedConcreteELBO,
            {"temperature": 0.5},
            unbiased=False,
            evaluations=_same,
            for_evaluations=_particles,
            summary="Concrete / Gumbel-softmax relaxation (biased)",
        )
    )
    _register(
        Estimator(
            "st-concrete",
            RelaxedConcreteELBO,
            {"temperature": 0.5, "straight_through": True},
            unbiased=False,
            evaluations=_same,
            for_evaluations=_particles,
            summary="straight-through Gumbel-softmax (biased)",
        )
    )
    _register(
        Estimator(
            "reinmax",
            RelaxedConcreteELBO,
            {"temperature": 1.3, "straight_through": "reinmax"},
            unbiased=False,
            evaluations=_same,
            for_evaluations=_particles,
            summary="ReinMax: second-order straight-through, exact discrete samples (biased)",
        )
    )
    _register(
        Estimator(
            "gumbel_rao",
            RelaxedConcreteELBO,
            {"temperature": 0.5, "straight_through": "gumbel_rao", "num_rao_samples": 10},
            unbiased=False,
            evaluations=_same,
            for_evaluations=_particles,
            summary="Gumbel-Rao: straight-through Gumbel-softmax Rao-Blackwellized over 10 draws (biased)",
        )
    )
    _register(
        Estimator(
            "gst",
            RelaxedConcreteELBO,
            {"temperature": 0.5, "straight_through": "gapped", "gap": 1.0},
            unbiased=False,
            evaluations=_same,
            for_evaluations=_particles,
            summary="gapped straight-through (GST): a fixed perturbation in place of Gumbel-Rao's draws (biased)",
        )
    )
    _register(
        Estimator(
            "unordered",
            UnorderedSetELBO,
            particles=4,
            compilable=False,
            vectorized_only=True,
            cost="set",
            evaluations=_distinct,
            for_evaluations=_set_size,
            summary="the unordered set estimator: distinct samples without replacement, built-in baseline",
        )
    )
    _register(
        Estimator(
            "sum_and_sample",
            SumAndSampleELBO,
            {"num_samples": 2},
            particles=4,
            compilable=False,
            vectorized_only=True,
            cost="set",
            evaluations=_distinct,
            for_evaluations=_set_size,
            summary="sum-and-sample: the most probable values summed, the rest sampled",
        )
    )
    _register(
        Estimator(
            "vimco",
            VIMCOELBO,
            objective="iwae",
            min_particles=2,
            particles=4,
            evaluations=_same,
            for_evaluations=_particles_at_least_2,
            summary="VIMCO: the K-sample importance-weighted bound, per-sample leave-one-out baselines",
        )
    )
    _register(
        Estimator(
            "expect",
            ExpectELBO,
            exact=True,
            cost="enumeration",
            evaluations=_enumeration,
            summary="exact sum over the guide's discrete support",
        )
    )


_register_builtins()
