# SPDX-License-Identifier: Apache-2.0
"""
Exact expectation over the discrete guide sites, by enumeration.
"""

import math

import torch

from .elbo import DiscreteELBO, Surrogate
from .errors import EstimatorError
from .samplers import Sampler
from .structure import LEFT_DIMS, PER_ELEMENT
from .traces import StructureChecks, check_dims_follow_provenance
from .util import (
    BERNOULLI,
    CATEGORICAL,
    CONTINUOUS,
    ONEHOT,
    innermost_distribution,
    sample_sites,
    support_size,
    total,
)

__all__ = [
    "EnumerateSampler",
    "EnumerationWeights",
    "ExpectELBO",
    "Expectation",
    "PartlyEnumeratedSampler",
    "check_enumerated_plates",
    "joint_support",
]


def joint_support(fn):
    """
    The joint support of a discrete distribution, ``.to_event`` included.

    For a distribution whose innermost base (under ``Independent``,
    ``MaskedDistribution``, ``ExpandedDistribution``) can enumerate its support
    with ``C`` values, and whose event holds ``K`` of them (``.to_event``), the
    joint support has ``C**K`` values.

    :returns: ``(size, make)`` where ``make()`` builds the values as a tensor of
        shape ``(size,) + fn.event_shape``; ``None`` when the distribution
        cannot be enumerated.
    """
    base = innermost_distribution(fn)
    if not getattr(base, "has_enumerate_support", False):
        return None
    base_event = tuple(base.event_shape)
    event = tuple(fn.event_shape)
    latent_shape = event[: len(event) - len(base_event)]
    num_latents = math.prod(latent_shape)

    def values_of_base():
        values = base.enumerate_support(expand=False)
        return values.reshape((values.shape[0],) + base_event)

    num_values = values_of_base().shape[0]
    size = support_size(fn)

    def make():
        values = values_of_base()
        if num_latents == 0:
            return values
        powers = num_values ** torch.arange(num_latents - 1, -1, -1, device=values.device)
        digits = torch.arange(size, device=values.device).unsqueeze(-1).div(powers, rounding_mode="floor")
        digits = digits.remainder(num_values)
        return values[digits].reshape((size,) + latent_shape + base_event)

    return size, make


class EnumerateSampler(Sampler):
    """
    Replaces the value of every discrete guide sample site by its whole joint
    support, laid out along a new batch dim left of all plates (one dim per
    site, as :class:`pyro.poutine.enum_messenger.EnumMessenger` does for
    ``"parallel"`` enumeration), and keeps each site's dim in :attr:`dims`.
    Continuous reparameterizable sites are left to be sampled; other sites are
    an error.
    """

    needs_plate_nesting = True

    def __init__(self, elbo, budget=None):
        super().__init__(elbo)
        self.next_dim = -elbo.max_plate_nesting - 1
        self.budget = elbo.budget if budget is None else budget
        self.evaluations = 1
        #: guide site name -> the (negative) batch dim that holds its enumerated values, filled as the guide
        #: runs: ``-max_plate_nesting - 1`` for the first discrete site, one further left for each next one
        self.dims = {}
        #: guide site name -> the size of its joint support (the length of its dim in :attr:`dims`)
        self.sizes = {}

    def draw(self, msg):
        fn = msg["fn"]
        if "enumerate" in msg["infer"] and not msg["infer"]["enumerate"]:
            raise EstimatorError(
                self.elbo,
                "guide site '{}' is marked infer={{'enumerate': {!r}}} (not to be enumerated), but this "
                "estimator sums over every discrete guide site. Remove the mark, or sample the site with "
                "another estimator.".format(msg["name"], msg["infer"]["enumerate"]),
                sites=(msg["name"],),
                requirement="enumerable",
                suggest=True,
            )
        support = joint_support(fn)
        if support is None:
            if getattr(fn, "has_rsample", False):
                return  # continuous: sampled, pathwise gradient
            raise EstimatorError(
                self.elbo,
                "guide site '{}' ({}) can neither be enumerated nor reparameterized.".format(
                    msg["name"], type(innermost_distribution(fn)).__name__
                ),
                sites=(msg["name"],),
                requirement="site_kind",
                suggest=True,
            )
        size, make = support
        if self.evaluations * size > self.budget:
            earlier = ", ".join("'{}': {}".format(k, v) for k, v in self.sizes.items())
            raise EstimatorError(
                self.elbo,
                "enumerating guide site '{}' ({} values) would make {} joint configurations "
                "of the discrete guide sites per plate element{}, over budget={}. Enumeration is "
                "exact but its cost grows with the product of the support sizes{}.".format(
                    msg["name"],
                    size,
                    self.evaluations * size,
                    " (with {})".format(earlier) if earlier else "",
                    self.budget,
                    ": pass a larger budget=... if memory allows"
                    if self.evaluations * size <= 100 * self.budget
                    else "",
                ),
                sites=tuple(self.sizes) + (msg["name"],),
                requirement="budget",
                suggest=True,
            )
        self.evaluations *= size
        dim = self.next_dim
        self.next_dim -= 1
        values = make()
        batch_ones = (1,) * (-dim - 1)
        msg["value"] = values.reshape((size,) + batch_ones + tuple(fn.event_shape))
        self.dims[msg["name"]] = dim
        self.sizes[msg["name"]] = size


class ExpectELBO(DiscreteELBO):
    r"""
    Exact expectation over the discrete sites of the guide.

    Every discrete guide site is replaced by its whole support, each along its
    own batch dim left of the plates, so the model and guide run once on all
    configurations at once (no Python loop over them). The ELBO is then

    .. math::

        \text{ELBO} = \sum_{t} \sum_{z_{A(t)}} q(z_{A(t)})\, \ell_t(z_{A(t)})

    where :math:`\ell_t` runs over every model and guide log-probability term
    (scaled and masked as Pyro does), :math:`A(t)` is the set of discrete guide
    sites that term depends on together with their guide ancestors, and
    :math:`q(z_{A(t)})` is the product of their guide probabilities. Each term
    keeps one entry per element of its plates, so a local site in a data plate
    of size ``N`` costs ``N·C`` evaluations, not ``C**N``. Its gradient is the
    exact gradient of the ELBO with respect to the discrete sites'
    distributions.

    Unlike :class:`~pyro.infer.TraceEnum_ELBO`, a site holding ``K`` latents
    declared with ``.to_event(1)`` is enumerated over its joint support of
    ``C**K`` values; guide dependencies between discrete sites are allowed.
    Continuous reparameterizable guide sites are sampled (pathwise gradients,
    ``num_particles`` of them, vectorized).

    After each step, :attr:`num_evaluations` holds the number of joint
    configurations the model was evaluated on (per plate element, times
    ``num_particles``).

    Restriction (shared with Pyro's enumeration): a term outside a plate cannot
    depend on an enumerated site inside it; this is an error naming both.

    :param int budget: the largest number of joint configurations of the
        discrete guide sites (per plate element) that may be enumerated; more
        is a :class:`ValueError` that says how many there would be.
    :param int num_particles: samples of the continuous guide sites.

    **References**

    [1] `Tensor Variable Elimination for Plated Factor Graphs`,
    Fritz Obermeyer, Eli Bingham, Martin Jankowiak, et al. (ICML 2019)
    """

    def __init__(self, num_particles=1, budget=10000, **kwargs):
        self.budget = budget
        super().__init__(num_particles=num_particles, sampler=EnumerateSampler, surrogate=Expectation(), **kwargs)


class Expectation(Surrogate):
    """
    The exact expectation over the enumerated sites (see :class:`ExpectELBO`):
    its value is the loss, and it is its own surrogate.
    """

    assumes = frozenset([LEFT_DIMS, PER_ELEMENT])

    honored_infer_keys = ("enumerate",)

    site_kinds = frozenset([BERNOULLI, CATEGORICAL, ONEHOT, CONTINUOUS])

    def __init__(self):
        self.checked = StructureChecks()

    def check_site(self, elbo, name, site):
        pass  # the sampler enumerates (any discrete site with a finite support) or refuses every site

    def wants_provenance(self, step):
        # the first step of each model and guide carries provenance, to check that they broadcast
        return not self.checked.done(step)

    def loss(self, particles):
        step = particles.step
        if step is not None and not self.checked.done(step):
            for pair in particles:
                dims = {name: (dim, pair.sampler.sizes[name]) for name, dim in pair.sampler.dims.items()}
                check_dims_follow_provenance(
                    pair.sampler.elbo, (pair.model_trace, pair.guide_trace), dims, "(enumerates)"
                )
            self.checked.add(step)
        loss = -total([self.expected_elbo(pair) for pair in particles]) / particles.num_particles
        return loss + 0.0  # no negative zero for a model without sites

    def loss_and_surrogate(self, particles, step):
        loss = self.loss(particles)
        return (loss.detach() if torch.is_tensor(loss) else loss), loss

    def site_terms(self, particles, step, names, surrogate):
        """Enumerated sites need no term of their own: their weights carry their gradient."""
        return surrogate, _unchanged

    def expected_elbo(self, pair):
        weights = EnumerationWeights(pair.sampler.dims, pair.guide_trace)
        elbo = 0.0
        for trace, sign in ((pair.model_trace, 1.0), (pair.guide_trace, -1.0)):
            for name, site in sample_sites(trace):
                term = site["log_prob"]
                needed = weights.needed(term)
                if needed:
                    self._check_plates(pair.sampler.elbo, name, site, needed, pair.guide_trace)
                elbo = elbo + sign * weights.weigh(term, needed).sum()
        return elbo

    def _check_plates(self, elbo, name, site, needed, guide_trace):
        check_enumerated_plates(elbo, name, site, needed, guide_trace)


def _unchanged(total):
    return total


class EnumerationWeights:
    r"""
    The weights of the terms of a trace whose guide enumerated some discrete
    sites (each along its own dim, :attr:`EnumerateSampler.dims`): a term
    :math:`\ell_t` that varies along the dims of the enumerated sites
    :math:`A(t)` (with their enumerated ancestors in the guide) is weighted by
    :math:`q(z_{A(t)}) = \prod_{e \in A(t)} q(z_e \mid \cdot)`, so that the sum
    over its configurations is its expectation under the guide. Sampled
    sites stay sampled: a term that depends on them is that expectation
    given their values.

    :param dict dims: enumerated guide site -> its (negative) batch dim.
    :param guide_trace: the guide's trace, log-probabilities computed.
    """

    def __init__(self, dims, guide_trace):
        self.dims = dims
        self.log_q = {name: guide_trace.nodes[name]["unscaled_log_prob"] for name in dims}
        self.parents = {name: self.present(self.log_q[name]) - {name} for name in dims}

    def present(self, tensor):
        """The enumerated sites along whose dims ``tensor`` varies."""
        return frozenset(name for name, dim in self.dims.items() if tensor.dim() >= -dim and tensor.shape[dim] > 1)

    def frames(self, tensor):
        """The enumerated dims ``tensor`` varies along, as frames ``("enumerated " + site, dim)`` for the costs."""
        return frozenset(("enumerated " + name, self.dims[name]) for name in self.present(tensor))

    def needed(self, term):
        """:math:`A(t)`: the enumerated sites ``term`` varies along, with their enumerated ancestors, leftmost last."""
        result = set(self.present(term))
        stack = list(result)
        while stack:
            for parent in self.parents[stack.pop()]:
                if parent not in result:
                    result.add(parent)
                    stack.append(parent)
        return sorted(result, key=lambda n: -self.dims[n])

    def weigh(self, term, needed=None, detach=False):
        """
        ``term`` times :math:`q(z_{A(t)})` (detached if ``detach``);
        configurations of probability zero give zero, even at ``-inf``.
        """
        if needed is None:
            needed = self.needed(term)
        if not needed:
            return term
        log_weight = total([self.log_q[n] for n in needed])
        if detach:
            log_weight = log_weight.detach()
        shape = torch.broadcast_shapes(term.shape, log_weight.shape)
        term = term.expand(shape)
        log_weight = log_weight.expand(shape)
        # configurations of probability zero contribute nothing, even if their log-density is -inf (avoids
        # 0 * inf = nan and its gradient)
        possible = log_weight > -math.inf
        term = torch.where(possible, term, torch.zeros((), dtype=term.dtype, device=term.device))
        return log_weight.exp() * term


class PartlyEnumeratedSampler(Sampler):
    """
    Enumerates the discrete guide sites that ``enumerated(name)`` selects,
    each along its own dim left of the plates (as :class:`EnumerateSampler`),
    and has ``base`` (a sampler class) draw every other site. After the guide
    ran, :attr:`enumeration_weights` weighs the terms (:class:`EnumerationWeights`).
    Used by per-site mixes of enumeration and sampling (:mod:`~pyro_discrete.per_site`).
    """

    needs_plate_nesting = True

    def __init__(self, elbo, base, enumerated, budget):
        super().__init__(elbo)
        self.base = base(elbo)
        self.enumerator = EnumerateSampler(elbo, budget)
        self.enumerated = enumerated
        #: the :class:`EnumerationWeights` of the last trace
        self.enumeration_weights = None

    @property
    def dims(self):
        return self.enumerator.dims

    @property
    def sizes(self):
        return self.enumerator.sizes

    @property
    def evaluations(self):
        return self.enumerator.evaluations

    def draw(self, msg):
        if self.enumerated(msg["name"]) and joint_support(msg["fn"]) is not None:
            self.enumerator.draw(msg)
        else:
            self.base.draw(msg)

    def model_handler(self):
        return self.base.model_handler()

    def after_trace(self, guide_trace):
        self.base.after_trace(guide_trace)
        self.enumeration_weights = EnumerationWeights(self.dims, guide_trace)


def check_enumerated_plates(elbo, name, site, needed, guide_trace):
    """An error if ``site`` is outside a plate of an enumerated guide site it depends on (``needed``)."""
    # every plate of size > 1 of every needed guide site must be a plate of the term too, by name: a term in
    # another plate on the same dim (sequential plates) would be multiplied element by element with it
    frames = {(f.name, f.dim) for f in site["cond_indep_stack"] if f.vectorized}
    for site_name in needed:
        for f in guide_trace.nodes[site_name]["cond_indep_stack"]:
            if not f.vectorized or f.size <= 1 or (f.name, f.dim) in frames:
                continue
            raise EstimatorError(
                elbo,
                "site '{}' is outside plate '{}' (batch dim {}) that the enumerated guide site '{}' is in, "
                "and depends on it; exact enumeration cannot sum over the joint of all plate elements. "
                "Move '{}' into the plate.".format(name, f.name, f.dim, site_name, name),
                sites=(site_name, name),
                requirement=PER_ELEMENT,
                suggest=lambda e: PER_ELEMENT not in e.make().surrogate.assumes,
            )
