# SPDX-License-Identifier: Apache-2.0
"""
The surrogate of a per-site mix (:class:`PerSite`): the methods that the
guide's ``infer={"estimator": ...}`` annotations name (:mod:`~pyro_discrete.per_site`)
under one ELBO, each adding the gradient terms of its own sites, with exact
enumeration of some sites and sampling of the others.
"""

from .surrogate import Surrogate
from .util import sample_sites

__all__ = ["PerSite"]


class PerSite(Surrogate):
    """
    The surrogate of a per-site mix under the ELBO: the ELBO's own surrogate
    (``own``) for the sites not annotated otherwise, and one surrogate per
    other method for its sites. The pathwise part is computed once; each
    method adds the gradient terms of its own sites
    (``site_terms(particles, step, names, surrogate)``), and the baselines'
    own objectives are added after the division by the particle count, as
    each method does alone.

    Sites of exact enumeration (:class:`~pyro_discrete.expect.Expectation`) are
    laid out over their supports along dims left of the plates, the others
    drawn as usual (:class:`~pyro_discrete.expect.PartlyEnumeratedSampler`);
    every term is weighted by the guide probability of the enumerated
    configurations it depends on (:class:`~pyro_discrete.expect.EnumerationWeights`),
    so a sampled site's cost is its expectation over the enumerated sites it
    does not depend on, weighted by those it does, as in
    :class:`~pyro.infer.TraceEnum_ELBO`.

    :param own: the ELBO's surrogate.
    :param dict others: ``site -> (label, method, surrogate)`` of the sites
        annotated with another method.
    """

    def __init__(self, own, others, budget=None):
        from .expect import Expectation
        from .traces import StructureChecks

        self.own = own
        self.groups = {}  # method -> (surrogate, set of sites)
        for name, (_, method, surrogate) in others.items():
            self.groups.setdefault(method, (surrogate, set()))[1].add(name)
        self.others = frozenset(others)
        self.site_kinds = own.site_kinds
        self.honored_infer_keys = own.honored_infer_keys
        #: the enumerated sites: ``(set, True)`` those in the set, ``(set, False)`` all but those
        self.enumerated = None
        if isinstance(own, Expectation):
            self.enumerated = (self.others, False)
        else:
            names = set()
            for surrogate, group in self.groups.values():
                if isinstance(surrogate, Expectation):
                    names |= group
            if names:
                self.enumerated = (frozenset(names), True)
        self.budget = budget
        self.checked = StructureChecks()

    def bind(self, elbo):
        for surrogate, _ in self.groups.values():
            surrogate.bind(elbo)

    def is_enumerated(self, name):
        names, inside = self.enumerated
        return (name in names) == inside

    def sampler(self, elbo):
        """The sampler class: the pseudo-action estimators' augmented draws if any site is theirs."""
        from .arms import AntitheticScore
        from .arsm import PseudoActionGradient
        from .samplers import IIDSampler

        surrogates = [self.own] + [s for s, _ in self.groups.values()]
        if any(isinstance(s, AntitheticScore) for s in surrogates):
            return _Coupled(self)
        if self.enumerated is not None:
            return _PartlyEnumerated(IIDSampler if self.enumerated[1] is False else elbo.sampler, self)
        if any(isinstance(s, PseudoActionGradient) for s in surrogates):
            return _Augmented(self)
        return elbo.sampler

    def surrogate_of(self, name):
        """The surrogate that gives site ``name`` its gradient."""
        for surrogate, names in self.groups.values():
            if name in names:
                return surrogate
        return self.own

    def draws_by_stick_breaking(self, name):
        """Whether site ``name`` is coupled DisARM's (its categorical values drawn as binary choices)."""
        from .arsm import STICK_BREAKING, PseudoActionGradient

        surrogate = self.surrogate_of(name)
        return isinstance(surrogate, PseudoActionGradient) and surrogate.categorical == STICK_BREAKING

    def check_site(self, elbo, name, site):
        for surrogate, names in self.groups.values():
            if name in names:
                return surrogate.check_site(elbo, name, site)
        return self.own.check_site(elbo, name, site)

    def check_structure(self, structure, names=None):
        own = [n for n in structure.sites if n not in self.others]
        failure = self.own.check_structure(structure, own)
        for surrogate, group in self.groups.values():
            failure = failure or surrogate.check_structure(structure, sorted(group))
        return failure

    def wants_provenance(self, step):
        # with enumerated sites, the first step of each model and guide checks that they broadcast over its dims
        if self.enumerated is not None and not self.checked.done(step):
            return True
        return self.own.wants_provenance(step)

    def _check_enumeration(self, particles, step):
        from .expect import check_enumerated_plates
        from .traces import check_dims_follow_provenance

        if step is None or self.checked.done(step):
            return
        for pair in particles:
            sampler = pair.sampler
            dims = {name: (dim, sampler.sizes[name]) for name, dim in sampler.dims.items()}
            check_dims_follow_provenance(step.elbo, (pair.model_trace, pair.guide_trace), dims, "(enumerates)")
            weights = pair.weights
            for trace in (pair.model_trace, pair.guide_trace):
                for name, site in sample_sites(trace):
                    needed = weights.needed(site["log_prob"])
                    if needed:
                        check_enumerated_plates(step.elbo, name, site, needed, pair.guide_trace)
        self.checked.add(step)

    def __call__(self, particles, step):
        if self.enumerated is not None:
            self._check_enumeration(particles, step)
        _, surrogate_elbo = particles.pathwise_terms()
        own = [n for n in _score_site_names(particles) if n not in self.others]
        surrogate, after = self.own.site_terms(particles, step, own, -surrogate_elbo)
        afters = [after]
        for method in sorted(self.groups):
            group_surrogate, names = self.groups[method]
            surrogate, after = group_surrogate.site_terms(particles, step, names, surrogate)
            afters.append(after)
        total = surrogate / particles.num_particles
        for after in afters:
            total = after(total)
        return total

    def after_step(self):
        self.own.after_step()
        for surrogate, _ in self.groups.values():
            surrogate.after_step()

    def assignment(self):
        """``{site: method}`` of the annotated sites: what a state of this mix is a state of."""
        return {name: method for method, (_, names) in self.groups.items() for name in sorted(names)}

    def group_state_dict(self):
        """The state of each annotated method (the ELBO's own is in the ELBO's state)."""
        return {
            "sites": self.assignment(),
            "groups": {
                method: {
                    "surrogate": surrogate.state_dict(),
                    "auxiliary": {n: m.state_dict() for n, m in surrogate.auxiliary_modules().items()},
                }
                for method, (surrogate, _) in self.groups.items()
            },
        }

    def load_group_state_dict(self, state):
        for method, group_state in state["groups"].items():
            surrogate = self.groups[method][0]
            surrogate.load_state_dict(group_state["surrogate"])
            modules = surrogate.auxiliary_modules()
            for name, module_state in group_state.get("auxiliary", {}).items():
                modules[name].load_state_dict(module_state)


class _Augmented:
    """A sampler factory: :class:`~pyro_discrete.arsm.AugmentedSampler` drawing each site as its method needs."""

    def __init__(self, per_site):
        self.per_site = per_site

    def __call__(self, elbo):
        from .arsm import AugmentedSampler

        return AugmentedSampler(elbo, stick_breaking=self.per_site.draws_by_stick_breaking)


class _Coupled:
    """A sampler factory: :class:`~pyro_discrete.arms.CopulaSampler` coupling the ARMS sites of a mix only."""

    def __init__(self, per_site):
        self.per_site = per_site

    def __call__(self, elbo):
        from .arms import AntitheticScore
        from .carms import CARMSSampler, CategoricalCopulaScore

        surrogate_of = self.per_site.surrogate_of
        return CARMSSampler(
            elbo,
            coupled=lambda name: isinstance(surrogate_of(name), AntitheticScore),
            categorical=lambda name: isinstance(surrogate_of(name), CategoricalCopulaScore),
        )


class _PartlyEnumerated:
    """A sampler factory: :class:`~pyro_discrete.expect.PartlyEnumeratedSampler` for a :class:`PerSite` mix."""

    needs_plate_nesting = True

    def __init__(self, base, per_site):
        self.base, self.per_site = base, per_site

    def __call__(self, elbo):
        from .expect import PartlyEnumeratedSampler

        budget = self.per_site.budget or getattr(elbo, "budget", 10000)
        return PartlyEnumeratedSampler(elbo, self.base, self.per_site.is_enumerated, budget)


def _score_site_names(particles):
    from .traces import score_function_sites

    return [name for name, _ in score_function_sites(particles.pairs[0].guide_trace)]
