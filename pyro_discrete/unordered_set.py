# SPDX-License-Identifier: Apache-2.0
r"""
Sampling without replacement: the unordered set estimator, and the pieces it
shares with sum-and-sample (:mod:`pyro_discrete.sum_and_sample`).

A :class:`SetSampler` draws ``k`` *distinct* values of the guide's discrete
site per element of its plates, laid out along the particle dim, and gives
each a weight :math:`W_s` and a linear baseline :math:`b_s = \sum_{s'} B_{ss'}
f_{s'}`. :class:`WeightedSamples` turns them into the value and the surrogate:

.. math::

    -\widehat{\text{ELBO}} = \sum_{\text{terms } t} \sum_s W_s\, t_s,
    \qquad
    \text{surrogate} = \sum_s \bar W_s \log q(z_s)\,\overline{(f_s - b_s)}
        + \text{the value's pathwise terms, with } \bar W,

(bars: no gradient) where :math:`f` is the cost the site influences
(:func:`~pyro_discrete.costs.site_costs`) and a term outside the site's plates
(a global continuous site, say) is averaged over the particles instead.
Reparameterizable sites drawn before the discrete site are drawn once and
shared by its ``k`` values; those after it are drawn per particle.

Supported: one discrete guide site (Bernoulli, Categorical,
OneHotCategorical, ``.to_event`` included) per guide, in any plates, with
continuous sites before and after it; for the unordered set estimator,
several discrete sites in the same plates, whose joint values are drawn by a
stochastic beam search across them (:mod:`~pyro_discrete.beam`). A term
outside the sites' plates that depends on them is an error (checked once per
model and guide, by provenance); so are several discrete sites under
sum-and-sample.
"""

import math

import torch
import torch.nn.functional as F
from pyro.ops.provenance import get_provenance
from pyro.poutine.subsample_messenger import _Subsample

from .costs import site_costs, vectorized_frames
from .elbo import DiscreteELBO, Surrogate
from .errors import EstimatorError
from .gumbel import gumbel_top_k, inclusion_log_ratios, stochastic_beam_search
from .samplers import Sampler
from .structure import LEFT_DIMS, PER_ELEMENT, SINGLE_SITE
from .traces import StructureChecks
from .util import BERNOULLI, CATEGORICAL, CONTINUOUS, ONEHOT, latent_shape, sample_sites, site_kind, site_logits

__all__ = ["SetSampler", "UnorderedSetELBO", "UnorderedSetSampler", "WeightedSamples"]

PARTICLE_PLATE = "num_particles_vectorized"


class SetSampler(Sampler):
    """
    Base of the samplers that draw a set of distinct values of one discrete
    guide site along the particle dim. Subclasses implement :meth:`draw_set`
    and :meth:`weights`.

    Records: :attr:`site` (its name), :attr:`log_p` (the joint
    log-probabilities of the values, ``(n,) + batch``, "front" layout: the
    particles first, then the site's batch dims without the particle dim) and
    :attr:`log_rest` (the log-probability of the values left out).
    """

    def __init__(self, elbo):
        super().__init__(elbo)
        self.num = elbo.num_particles
        self.plate_nesting = elbo.max_plate_nesting
        #: the name of the discrete guide site drawn (``None`` until the guide reaches it)
        self.site = None
        #: the joint log-probabilities of the drawn values, ``(n,) + batch`` in front layout (``n`` the number
        #: of particles; rows that pad a set smaller than ``n`` are ``-inf``); ``None`` until the site is drawn
        self.log_p = None
        #: the log-probability of the values that :meth:`draw_set` left out (for sum-and-sample, those not
        #: summed), shape ``batch`` (``-inf`` when none is left out); ``None`` until the site is drawn
        self.log_rest = None
        #: the discrete guide sites whose joint values the set holds, in guide order
        self.sites = []
        self.num_discrete = 1

    #: the search across the sites of a guide with several discrete sites (``None`` for one): what
    #: :meth:`search_sequences` returned, a :class:`~pyro_discrete.beam.SequenceBeams`
    beams = None

    def prepare(self, guide, step):
        counts = self.elbo._discrete_site_counts
        key = (step.model, step.guide)
        if key not in counts:
            from .per_site import guide_annotations

            counts[key] = len(guide_annotations(guide, step.args, step.kwargs, with_sites=True)[1])
        #: the number of discrete guide sites (counted once per model and guide)
        self.num_discrete = counts[key]
        if self.num_discrete >= 2:
            self.beams = self.search_sequences(guide, step)

    def search_sequences(self, guide, step):
        """
        The set over several discrete guide sites, before the step's run: sets
        :attr:`log_p` and :attr:`log_rest` and returns the search, whose
        ``site_value`` the step's guide run takes its values from.
        """
        raise EstimatorError(
            self.elbo,
            "the guide has {} discrete sites; this estimator draws its set over one site.".format(self.num_discrete),
            requirement=SINGLE_SITE,
            suggest=True,
        )

    def _pyro_sample(self, msg):
        # the step runs on the subsample the search ran on
        if self.beams is not None and isinstance(msg["fn"], _Subsample) and msg["name"] in self.beams.subsamples:
            msg["value"] = self.beams.subsamples[msg["name"]]
            return
        super()._pyro_sample(msg)

    def _draw_from_beams(self, msg):
        name, fn = msg["name"], msg["fn"]
        if name in self.beams.shared:
            msg["value"] = self.beams.shared[name]
        elif name in self.beams.values:
            msg["value"] = self.beams.site_value(name, fn)
            if self.site is None:
                self.site = name
            self.sites.append(name)
        elif site_kind(fn) in (BERNOULLI, CATEGORICAL, ONEHOT):
            from .beam import unknown_site_error

            raise unknown_site_error(self.elbo, name, self.beams.order)

    def _padded(self, log_p):
        # the whole joint support in fewer rows than particles: the other particles repeat a value, weight zero
        if log_p.shape[0] < self.num:
            pad = self.num - log_p.shape[0]
            log_p = torch.cat([log_p, log_p.new_full((pad,) + log_p.shape[1:], -math.inf)])
        return log_p

    # layout: the particle dim of a site's batch, as a positive index
    def particle_index(self, batch_shape):
        return len(batch_shape) - self.plate_nesting

    def to_site(self, front, batch_shape):
        """A ``(n,) + batch`` tensor with the particles moved to the site's particle dim."""
        return front.movedim(0, self.particle_index(batch_shape))

    def to_front(self, tensor, batch_shape):
        return tensor.movedim(self.particle_index(batch_shape), 0)

    def draw(self, msg):
        if self.beams is not None:
            return self._draw_from_beams(msg)
        fn, name = msg["fn"], msg["name"]
        kind = site_kind(fn)
        if kind == CONTINUOUS:
            if self.site is None and self.num_discrete and not msg["args"] and not msg["kwargs"]:
                # before the discrete site: one draw, shared by its values (they are drawn from one distribution);
                # a guide without a discrete site keeps one draw per particle
                value = fn.rsample()
                j = self.particle_index(fn.batch_shape)
                msg["value"] = value.narrow(j, 0, 1).expand(value.shape)
            return
        if kind not in (BERNOULLI, CATEGORICAL, ONEHOT):
            return
        if self.site is not None:
            raise EstimatorError(
                self.elbo,
                "the guide has several discrete sites ('{}' and '{}'); sampling without replacement "
                "is done over one site (a .to_event site may hold many latents). Declare the latents "
                "as one site.".format(self.site, name),
                sites=(self.site, name),
                requirement=SINGLE_SITE,
                suggest=True,
            )
        self.site = name
        self.sites.append(name)
        log_p = self._compact_log_probs(fn, name)  # batch' + (K, C)
        index, self.log_p, self.log_rest = self.draw_set(log_p, name)
        if index.shape[0] < self.num:  # the whole support: the other particles repeat a value, weight zero
            pad = self.num - index.shape[0]
            index = torch.cat([index, index[:1].expand((pad,) + index.shape[1:])])
            self.log_p = torch.cat([self.log_p, self.log_p.new_full((pad,) + self.log_p.shape[1:], -math.inf)])
        index = index.reshape(index.shape[:-1] + latent_shape(fn))  # (n,) + batch' + latent
        index = index.movedim(0, self.particle_index(fn.batch_shape))
        if kind == CATEGORICAL:
            msg["value"] = index
        elif kind == ONEHOT:
            msg["value"] = F.one_hot(index, log_p.shape[-1]).to(site_logits(fn).dtype)
        else:
            msg["value"] = index.to(site_logits(fn).dtype)

    def _compact_log_probs(self, fn, name):
        kind = site_kind(fn)
        logits = site_logits(fn).detach()
        if kind == BERNOULLI:
            logits = torch.stack([-logits, logits], -1) / 2  # log-odds split over the two values
        log_p = logits.log_softmax(-1)
        j = self.particle_index(fn.batch_shape)
        first = log_p.narrow(j, 0, 1)
        if not torch.equal(log_p, first.expand_as(log_p)):
            raise EstimatorError(
                self.elbo,
                "the distribution of guide site '{}' differs between particles: it depends on a site "
                "drawn per particle. The values of '{}' are drawn without replacement from one "
                "distribution.".format(name, name),
                sites=(name,),
                requirement="no_guide_dependencies",
                suggest=lambda e: e.cost != "set",
            )
        log_p = first.squeeze(j)
        batch = log_p.shape[: len(fn.batch_shape) - 1]
        return log_p.reshape(batch + (-1, log_p.shape[-1]))

    def draw_set(self, log_p, name):
        """``(index (n,) + batch + (K,), log_p (n,) + batch, log_rest batch)`` of the drawn values."""
        raise NotImplementedError

    def weights(self, baseline):
        """``(W, B)`` in front layout: the weights ``(n,) + batch`` and, with ``baseline``, ``B`` ``(n, n) + batch``."""
        raise NotImplementedError


class UnorderedSetSampler(SetSampler):
    """
    ``k`` distinct values per plate element, by Gumbel-top-k for a site of
    one latent and by stochastic beam search over the joint support of a
    ``.to_event`` site [2]; weights :math:`p(s)R(S,s)` and the built-in
    baseline's :math:`B_{ss'} = p(s')R^{D\\setminus\\{s\\}}(S, s')` [1].
    A guide with several discrete sites gets ``k`` distinct joint sequences
    of them, by a stochastic beam search across the sites
    (:class:`~pyro_discrete.beam.SequenceBeams`, run in :meth:`prepare`).
    """

    #: ``(log_p, log_rest, log_r1, log_r2)``: the inclusion ratios of the set last asked for
    _ratios = None

    def search_sequences(self, guide, step):
        from .beam import SequenceBeams

        beams = SequenceBeams(self.elbo, self.num)
        beams.search(guide, step.args, step.kwargs, self.num_discrete)
        self.log_p, self.log_rest = self._padded(beams.phi), beams.discarded
        return beams

    def draw_set(self, log_p, name):
        K, C = log_p.shape[-2:]
        k = min(self.num, C**K)  # more than the support: all of it
        if K == 1:
            index, log_p_sample, log_rest = gumbel_top_k(log_p[..., 0, :], k)
            return index.unsqueeze(-1), log_p_sample, log_rest
        return stochastic_beam_search(log_p, k)

    def weights(self, baseline):
        # the ratios of this step's set, computed once (the loss, the weighted ELBO and the baseline all use
        # them; the second-order ones only when a gradient is asked for)
        cached = self._ratios
        if (
            cached is None
            or cached[0] is not self.log_p
            or cached[1] is not self.log_rest
            or (baseline and cached[3] is None)
        ):
            cached = (self.log_p, self.log_rest) + inclusion_log_ratios(
                self.log_p, self.log_rest, second_order=baseline
            )
            self._ratios = cached
        log_r1, log_r2 = cached[2:]
        weights = (self.log_p + log_r1).exp()
        if not baseline:
            return weights, None
        if self.num == 1:
            # the baseline of s estimates E[f] from the other k - 1 values; with none, it would be p(s) f(s),
            # which depends on s: no baseline (the estimator is then REINFORCE)
            return weights, weights.new_zeros((1,) + weights.shape)
        return weights, (self.log_p.unsqueeze(0) + log_r2).exp()


class WeightedSamples(Surrogate):
    """
    The value and surrogate of a weighted set of samples (see the module's
    docstring), for the samplers of this module and of sum-and-sample.
    """

    site_kinds = frozenset([BERNOULLI, CATEGORICAL, ONEHOT, CONTINUOUS])

    def check_structure(self, structure, names=None):
        failure = super().check_structure(structure, names)
        if failure is not None or SINGLE_SITE in self.assumes:
            return failure
        from .beam import SAME_PLATES

        sites = [s for n, s in structure.sites.items() if names is None or n in names]
        for s in sites[1:]:
            if s.frames != sites[0].frames:
                message = (
                    "guide sites '{}' and '{}' are in different plates; the distinct sequences of the discrete "
                    "sites are chosen per element of their plates, so every discrete site must be in the same "
                    "plates.".format(sites[0].name, s.name)
                )
                return (sites[0].name, s.name), SAME_PLATES, message
        return None

    def __init__(self, single_site=True):
        self.checked = StructureChecks()
        #: the structural assumptions: one discrete site (sum-and-sample), or any number in the same plates
        self.assumes = frozenset([SINGLE_SITE, LEFT_DIMS, PER_ELEMENT] if single_site else [LEFT_DIMS, PER_ELEMENT])

    def bind(self, elbo):
        if not elbo.vectorize_particles:
            raise EstimatorError(
                elbo,
                "needs vectorize_particles=True: the distinct values are drawn together, along the particle dim.",
            )
        if elbo.track_dependencies:
            raise EstimatorError(elbo, "track_dependencies is not supported.")

    def loss(self, particles):
        return -self._weighted_elbo(particles, "log_prob")

    def loss_and_surrogate(self, particles, step):
        for pair in particles:  # the weights with their baseline, before the loss asks for the weights alone
            if pair.sampler.site is not None:
                pair.sampler.weights(baseline=True)
        loss = self.loss(particles)
        return loss, self(particles, step)

    def __call__(self, particles, step):
        surrogate = -self._weighted_elbo(particles, "surrogate", detach=True)
        for pair in particles:
            sampler = pair.sampler
            if sampler.site is None:
                continue
            site = pair.guide_trace.nodes[sampler.site]
            batch_shape = site["fn"].batch_shape
            weights, baseline = sampler.weights(baseline=True)
            cost = site_costs(pair.model_trace, pair.guide_trace, [sampler.site], widened=step.widened)[sampler.site]
            f = sampler.to_front(cost, batch_shape)
            b = (baseline * f.unsqueeze(0)).sum(1)
            centered = sampler.to_site(weights * (f - b), batch_shape).detach()
            score = sum(pair.guide_trace.nodes[name]["score_parts"].score_function for name in sampler.sites)
            surrogate = surrogate + (score * centered).sum()
        return surrogate

    def _weighted_elbo(self, particles, which, detach=False):
        """The ELBO of the weighted samples: each term weighted inside the site's plates, averaged outside."""
        (pair,) = particles.pairs
        self._check_independence(particles, pair)
        sampler = pair.sampler
        if sampler.site is not None:
            site = pair.guide_trace.nodes[sampler.site]
            target = _frames(site)
            weights, _ = sampler.weights(baseline=False)
            weights = sampler.to_site(weights, site["fn"].batch_shape)
            if detach:
                weights = weights.detach()
        total = 0.0
        for trace, sign in ((pair.model_trace, 1.0), (pair.guide_trace, -1.0)):
            for _, node in sample_sites(trace):
                term = node["log_prob"]
                if which == "surrogate" and trace is pair.guide_trace:
                    term = node["score_parts"].entropy_term
                    if not torch.is_tensor(term):
                        continue
                if sampler.site is not None and target <= _frames(node):
                    total = total + sign * _weighted_sum(term, weights)
                else:
                    total = total + sign * term.sum() / particles.num_particles
        return total

    def wants_provenance(self, step):
        # the first step of each model and guide carries provenance, for _check_independence
        return not self.checked.done(step)

    def _check_independence(self, particles, pair):
        # no term outside the site's plates may depend on it (on traces that carry provenance)
        step = particles.step
        if self.checked.done(step):
            return
        sampler = pair.sampler
        if sampler.site is not None:
            target = _frames(pair.guide_trace.nodes[sampler.site])
            for trace in (pair.model_trace, pair.guide_trace):
                for name, node in sample_sites(trace):
                    if target <= _frames(node) or not set(sampler.sites) & get_provenance(node["log_prob"]):
                        continue
                    raise EstimatorError(
                        sampler.elbo,
                        "site '{}' is outside a plate that guide site '{}' is in, and depends on it; the "
                        "values of '{}' are drawn without replacement per plate element, which cannot "
                        "weight a term that depends on all of them. Move '{}' into the plate.".format(
                            name, sampler.site, sampler.site, name
                        ),
                        sites=(sampler.site, name),
                        requirement=PER_ELEMENT,
                        suggest=lambda e: e.cost == "particles",
                    )
        self.checked.add(step)

    def jit_unsupported(self):
        return "the first step of a model checks its structure by provenance tracking, which cannot be traced."


def _frames(site):
    return frozenset(f for f in vectorized_frames(site) if f[0] != PARTICLE_PLATE)


def _weighted_sum(term, weights):
    # the weights have the site's batch shape; the term may be in more plates (right-aligned dims)
    if term.dim() < weights.dim():
        term = term.reshape((1,) * (weights.dim() - term.dim()) + term.shape)
    return (term * weights).sum()


class UnorderedSetELBO(DiscreteELBO):
    r"""
    The unordered set estimator [1]: ``k`` distinct values of the guide's
    discrete site per element of its plates, drawn without replacement, with
    the built-in baseline. For a sample :math:`S` of ``k`` values of a site
    with guide probabilities :math:`p`,

    .. math::

        \widehat{E_q[f]} = \sum_{s\in S} p(s) R(S, s)\, f(s),
        \qquad
        \hat g = \sum_{s\in S} \nabla p(s)\, R(S, s)\,\big(f(s) - b_s\big),
        \qquad
        b_s = \sum_{s'\in S} p(s') R^{D\setminus\{s\}}(S, s')\, f(s'),

    where :math:`R(S, s) = P^{D\setminus\{s\}}(S\setminus\{s\})/P(S)` is the
    leave-one-out ratio of the probability of the unordered sample,
    :math:`R^{D\setminus\{s\}}(S, s)=1`, and :math:`f` the cost the site
    influences. Both are unbiased; the value of :meth:`loss` is the ``-ELBO``
    estimated with the same weights. With ``k`` equal to the support size the
    weights become :math:`p(s)` and the estimator is exact.

    The values are drawn by the Gumbel-top-k trick [2]; for a ``.to_event``
    site of ``K`` latents, by stochastic beam search over the joint support
    [2], so a 20x10 site works without listing :math:`10^{20}` values. The
    probability of the unordered sample is the numerical integral of
    :mod:`pyro_discrete.gumbel`, in log space and float64: finite for logits
    up to :math:`\pm 30` in float32.

    Supported: discrete guide sites (Bernoulli, Categorical or
    OneHotCategorical, ``.to_event`` included) in any plates, subsampling
    included, with reparameterizable continuous sites before them (drawn
    once, shared by the ``k`` values) and after them (drawn per value).
    Several discrete sites, each possibly depending on the earlier ones, get
    ``k`` distinct joint values by a stochastic beam search across them in
    guide order (:class:`~pyro_discrete.beam.SequenceBeams`: one partial
    guide run per site, without gradients, before the step); they must be in
    the same plates, else an error names them.

    :param int num_samples: ``k``, the number of distinct values (the
        particles; the model runs once on all of them, vectorized).

    **References**

    [1] `Estimating Gradients for Discrete Random Variables by Sampling
    without Replacement`, Wouter Kool, Herke van Hoof, Max Welling (ICLR 2020)

    [2] `Stochastic Beams and Where to Find Them: The Gumbel-Top-k Trick for
    Sampling Sequences Without Replacement`, Wouter Kool, Herke van Hoof,
    Max Welling (ICML 2019)
    """

    def __init__(self, num_samples=4, **kwargs):
        if "num_particles" in kwargs:
            num_samples = kwargs.pop("num_particles")
        if not isinstance(num_samples, int) or num_samples < 1:
            raise EstimatorError(self, "num_samples must be a positive integer, got {!r}".format(num_samples))
        super().__init__(
            num_particles=num_samples,
            sampler=UnorderedSetSampler,
            surrogate=WeightedSamples(single_site=False),
            **kwargs,
        )
        if num_samples == 1 and self.max_plate_nesting != float("inf"):
            self.max_plate_nesting += 1  # a given bound: ELBO adds the particle dim for two or more only

    @property
    def num_samples(self):
        return self.num_particles

    # the values are laid out along the particle dim, even for one (a plate of size 1)
    def _ensure_plate_nesting(self, step, sampler):
        ensure_particle_plate(self, step)

    def _particle_dim(self):
        return -self.max_plate_nesting

    def _vectorized_num_particles(self, fn):
        return vectorized_set(self, fn)


def ensure_particle_plate(elbo, step):
    """Guesses ``max_plate_nesting``, with a particle dim even for one particle (a set sampler's layout)."""
    if elbo.max_plate_nesting == float("inf"):
        elbo._guess_max_plate_nesting(step.model, step.guide, step.args, step.kwargs)
        if elbo.num_particles == 1:
            elbo.max_plate_nesting += 1


def vectorized_set(elbo, fn):
    """``fn`` in the particle plate, of size one too."""
    import pyro

    return pyro.plate(PARTICLE_PLATE, elbo.num_particles, dim=-elbo.max_plate_nesting)(fn)
