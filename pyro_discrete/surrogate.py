# SPDX-License-Identifier: Apache-2.0
"""
What a surrogate reads and implements: the traces of one step
(:class:`TracePair`, gathered in :class:`Particles`, with their
:class:`ScoreSite` s), the context of the step (:class:`Step`), and the
:class:`Surrogate` base class. :mod:`pyro_discrete.elbo` describes the
contract as a whole.
"""

from dataclasses import dataclass, field
from typing import Optional

import torch

from .costs import cost_terms, site_costs
from .errors import EstimatorError
from .structure import check_assumptions
from .traces import score_function_sites
from .util import (
    BERNOULLI,
    CATEGORICAL,
    CONTINUOUS,
    ONEHOT,
    OTHER,
    innermost_distribution,
    sample_sites,
    site_kind,
    total,
)

__all__ = ["Particles", "ScoreSite", "Step", "Surrogate", "TracePair"]

_KIND_WORDS = {
    BERNOULLI: "a Bernoulli site",
    CATEGORICAL: "a Categorical (index) site",
    ONEHOT: "a OneHotCategorical site",
    CONTINUOUS: "a reparameterizable continuous site",
    OTHER: "neither Bernoulli, Categorical, OneHotCategorical nor reparameterizable",
}


# ----------------------------------------------------------------------
# what a surrogate reads
# ----------------------------------------------------------------------
@dataclass
class TracePair:
    """
    One run of the guide (under its sampler) and the model against it.

    :ivar model_trace: the model's trace, log-probabilities computed.
    :ivar guide_trace: the guide's trace, score parts computed.
    :ivar sampler: the sampler that drew the guide's sites, with what it recorded.
    :ivar int num_particles: particles held in this pair (vectorized along ``particle_dim``).
    :ivar particle_dim: the batch dim of the particles, or ``None`` for one particle.
    :ivar model: the model as run (inside the particle plate), for replays.
    :ivar guide: the guide as run, without its sampler.
    :ivar raw_guide_trace: the guide trace before subsample sites were pruned.
    """

    model_trace: object
    guide_trace: object
    sampler: object
    num_particles: int = 1
    particle_dim: Optional[int] = None
    model: object = None
    guide: object = None
    raw_guide_trace: object = None
    _groups: dict = field(default=None, repr=False)

    def cost_terms(self, track_dependencies=False):
        """The :func:`~pyro_discrete.costs.cost_terms` of this pair (computed once)."""
        if self._groups is None or self._groups[0] != track_dependencies:
            groups = cost_terms(self.model_trace, self.guide_trace, track_dependencies, weights=self.weights)
            self._groups = (track_dependencies, groups)
        return self._groups[1]

    @property
    def weights(self):
        """The :class:`~pyro_discrete.expect.EnumerationWeights` of a pair that enumerated some sites, else ``None``."""
        return getattr(self.sampler, "enumeration_weights", None)

    def elbo(self):
        """``sum log p - sum log q`` of this pair, summed over its particles (with its graph)."""
        model_terms = [site["log_prob_sum"] for _, site in sample_sites(self.model_trace)]
        guide_terms = [site["log_prob_sum"] for _, site in sample_sites(self.guide_trace)]
        return total(model_terms) - total(guide_terms)


@dataclass
class ScoreSite:
    """
    A guide site that needs a non-pathwise gradient, with what every particle
    says of it.

    :ivar str name: the site's name.
    :ivar dict site: the guide site (of the first trace when particles are looped).
    :ivar score: :math:`\\log q(z)` of every particle, unscaled, with its graph
        (Pyro's ``score_function``), shaped like the site's batch, with the
        particles along ``particle_dim``.
    :ivar cost: the cost the site can influence (:func:`~pyro_discrete.costs.site_costs`),
        detached, shaped like ``score``.
    :ivar particle_dim: the dim of ``score`` and ``cost`` that holds the
        particles, or ``None`` with one particle.
    """

    name: str
    site: dict
    score: torch.Tensor
    cost: torch.Tensor
    particle_dim: Optional[int]


class Particles:
    """
    The traces of one step: a list of :class:`TracePair` (one when particles
    are vectorized, ``num_particles`` when they are looped), with the
    per-particle quantities that surrogates read, stacked along a particle dim
    either way.
    """

    def __init__(self, pairs, num_particles, track_dependencies=False, step=None):
        self.pairs = pairs
        self.num_particles = num_particles
        self.track_dependencies = track_dependencies
        #: the :class:`Step` they were drawn in
        self.step = step
        self._pathwise = None

    def __iter__(self):
        return iter(self.pairs)

    def mc_loss(self):
        """The Monte Carlo estimate of ``-ELBO``: the mean over particles of ``log q - log p``."""
        return -self.pathwise_terms()[0] / self.num_particles

    def pathwise_terms(self):
        """
        ``(elbo, surrogate_elbo)`` summed over particles: the ELBO, and the part
        of the surrogate that carries pathwise gradients -- every model term,
        and each guide site's ``entropy_term`` (``log q`` for reparameterized
        sites, zero for the others, whose gradient comes from their estimator).
        Computed once.
        """
        if self._pathwise is None:
            self._pathwise = self._pathwise_terms()
        return self._pathwise

    def _pathwise_terms(self):
        elbos, surrogates = [], []
        for pair in self.pairs:
            if pair.weights is not None:
                elbo, surrogate = _weighted_pathwise_terms(pair)
                elbos.append(elbo)
                surrogates.append(surrogate)
                continue
            model_sum = total([site["log_prob_sum"] for _, site in sample_sites(pair.model_trace)])
            guide_terms, entropy_terms = [], []
            for _, site in sample_sites(pair.guide_trace):
                guide_terms.append(site["log_prob_sum"])
                entropy_term = site["score_parts"].entropy_term
                if torch.is_tensor(entropy_term) or entropy_term != 0:
                    entropy_terms.append(entropy_term.sum())
            elbos.append(model_sum - total(guide_terms))
            surrogates.append(model_sum - total(entropy_terms) if entropy_terms else model_sum)
        return total(elbos), total(surrogates)

    def score_sites(self):
        """The :class:`ScoreSite` s of the guide, in guide order."""
        per_pair = []
        for pair in self.pairs:
            sites = score_function_sites(pair.guide_trace)
            if pair.weights is not None:  # enumerated sites get their gradient from their weights
                sites = [(n, s) for n, s in sites if n not in pair.weights.dims]
            groups = pair.cost_terms(self.track_dependencies) if sites else None
            costs = site_costs(
                pair.model_trace,
                pair.guide_trace,
                [n for n, _ in sites],
                self.track_dependencies,
                groups,
                None if self.step is None else self.step.widened,
                pair.weights,
            )
            per_pair.append([(name, site, costs[name]) for name, site in sites])
        if len(self.pairs) == 1:
            dim = self.pairs[0].particle_dim
            return [ScoreSite(n, s, s["score_parts"].score_function, c, dim) for n, s, c in per_pair[0]]
        result = []
        for i, (name, site, _) in enumerate(per_pair[0]):
            score = torch.stack([entries[i][1]["score_parts"].score_function for entries in per_pair])
            cost = torch.stack([entries[i][2] for entries in per_pair])
            result.append(ScoreSite(name, site, score, cost, -score.dim()))
        return result


def _weighted_pathwise_terms(pair):
    # (elbo, surrogate elbo) of a pair with enumerated sites: every term weighted by the guide probability of the
    # configurations it depends on (EnumerationWeights). The weights carry the enumerated sites' gradient; a
    # sampled site's own log-density enters the surrogate detached (its gradient is its estimator's) but weighted.
    weights = pair.weights
    model_sum = total([weights.weigh(site["log_prob"]).sum() for _, site in sample_sites(pair.model_trace)])
    guide_terms, surrogate_terms = [], []
    for name, site in sample_sites(pair.guide_trace):
        log_prob = site["log_prob"]
        guide_terms.append(weights.weigh(log_prob).sum())
        entropy_term = site["score_parts"].entropy_term
        if name in weights.dims:
            surrogate_terms.append(guide_terms[-1])
        elif torch.is_tensor(entropy_term):
            surrogate_terms.append(weights.weigh(entropy_term).sum())
        else:
            surrogate_terms.append(weights.weigh(log_prob.detach()).sum())
    return model_sum - total(guide_terms), model_sum - total(surrogate_terms)


class Step:
    """
    The context of one evaluation of an estimator, for its surrogate: the model,
    guide and arguments (for replays), whether the estimator's state may
    advance (``update``), and the count of model evaluations.
    """

    def __init__(self, elbo, model, guide, args, kwargs, update):
        self.elbo, self.model, self.guide, self.args, self.kwargs = elbo, model, guide, args, kwargs
        self.update = update
        self.evaluations = 0
        #: whether this step's costs are TraceGraph_ELBO's downstream costs (provenance)
        self.track_dependencies = bool(elbo.track_dependencies)
        #: the :class:`~pyro_discrete.structure.Structure` of the model and guide (``None`` if not analyzed)
        self.structure = None
        #: the surrogate of this step: the ELBO's, or a per-site mix (:class:`~pyro_discrete.mix.PerSite`)
        self.surrogate = elbo.surrogate
        #: the sampler class of this step's gradient draws (``None``: the ELBO's)
        self.sampler = None

    def widened(self, name):
        """The ``(plate, dim)`` frames over which site ``name``'s cost is summed (:mod:`~pyro_discrete.structure`)."""
        return frozenset() if self.structure is None else self.structure.widened(name)

    def replay(self, pair, alternatives):
        """
        The model and guide replayed, without gradients and in one batched run,
        at other values of chosen guide sites: see :class:`~pyro_discrete.replay.Replay`.
        """
        from .replay import Replay

        return Replay(self)(pair, alternatives)


class Surrogate:
    """
    How the traces of one step become the objective's value and a surrogate
    loss whose gradient is the estimator. Subclasses implement :meth:`__call__`
    and, when the value is not the plain Monte Carlo estimate of ``-ELBO``,
    :meth:`loss`.
    """

    #: the ``infer`` options of Pyro this surrogate honors (see :func:`~pyro_discrete.traces.check_infer_keys`)
    honored_infer_keys = ()

    #: the kinds of guide sites it takes (see :func:`~pyro_discrete.util.site_kind`)
    site_kinds = frozenset([BERNOULLI, CATEGORICAL, ONEHOT, CONTINUOUS, OTHER])

    def bind(self, elbo):
        """Checks the ELBO's options; called once, when the ELBO is built."""

    #: the assumptions of :mod:`pyro_discrete.structure` it rests on, beyond particles that are not mixed:
    #: :data:`~pyro_discrete.structure.PER_ELEMENT` (it replays every element of a plate at once),
    #: :data:`~pyro_discrete.structure.UNMASKED` (masks are not functions of its discrete sites)
    assumes = frozenset()

    def check_structure(self, structure, names=None):
        """
        ``None`` if this surrogate takes a model and guide of this
        :class:`~pyro_discrete.structure.Structure` for the guide sites
        ``names`` it handles (default: all), else ``(sites, requirement,
        message)`` saying which assumption fails where.
        """
        return check_assumptions(self.assumes, structure, names)

    def wants_provenance(self, step):
        """Whether this step's traces should carry provenance (a check of the model's structure)."""
        return False

    def check_site(self, elbo, name, site):
        """Raises an error naming the site, the estimator and what to use instead, for a site it cannot take."""
        kind = site_kind(site["fn"])
        if kind not in self.site_kinds:
            raise EstimatorError(
                elbo,
                "guide site '{}' ({}) is {}, which this estimator does not take.".format(
                    name, type(innermost_distribution(site["fn"])).__name__, _KIND_WORDS[kind]
                ),
                sites=(name,),
                requirement="site_kind",
                suggest=True,
            )

    def loss(self, particles):
        """The estimate of the negated objective (``-ELBO`` by default); a tensor or ``0.``."""
        return particles.mc_loss()

    def __call__(self, particles, step):
        """A tensor whose gradient is the estimator of the gradient of :meth:`loss`'s expectation."""
        raise NotImplementedError

    def loss_and_surrogate(self, particles, step):
        """``(loss, surrogate)``; override to share work between the two."""
        return self.loss(particles), self(particles, step)

    def jit_unsupported(self):
        """Why a step of this surrogate cannot be compiled, or ``None``."""
        return None

    def after_step(self):
        """Called once per gradient step that may update state."""

    def configuration(self):
        """
        What a state of this surrogate is a state of (a string): its class, and
        what else decides the meaning of its state (see :meth:`DiscreteELBO.load_state_dict`).
        """
        return type(self).__name__

    def method(self):
        """
        Which gradient method this is (a string): the same for every ELBO a
        registry entry makes, whatever its numeric options; used to match
        ``infer={"estimator": ...}`` annotations (:mod:`~pyro_discrete.per_site`).
        """
        return type(self).__name__

    def state_dict(self):
        """The surrogate's state (moving averages, ...), for :meth:`DiscreteELBO.state_dict`."""
        return {}

    def load_state_dict(self, state):
        """Restores what :meth:`state_dict` returned."""

    def auxiliary_modules(self):
        """``{name: nn.Module}``: the auxiliary parameters this surrogate learns (:mod:`~pyro_discrete.auxiliary`)."""
        return {}
