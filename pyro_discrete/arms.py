# SPDX-License-Identifier: Apache-2.0
r"""
ARMS: antithetic samples of Bernoulli sites across the particles, coupled
through a copula, with a leave-one-out baseline corrected for their
dependence.

For a Bernoulli latent with probability :math:`p = \sigma(\theta)` and
:math:`n` particles, the uniforms :math:`u_1..u_n` behind the draws
:math:`b_i = 1[u_i < p]` are dependent (each marginally uniform, so each
:math:`b_i` is an exact draw): with :math:`d \sim \text{Dir}(1_n)`, a point
of the simplex, :math:`u_i = 1 - (1 - d_i)^{n-1}` (the distribution
function of :math:`d_i \sim \text{Beta}(1, n-1)`). Any two of the draws then
have :math:`P(b_i = b_j = 1) = r(p)` in closed form, their correlation is
:math:`\rho = (r - p^2) / (p(1-p)) \le 0`, and

.. math::

    E\big[f(b_j)(b_i - p)\big] = \rho\, E\big[f(b_j)(b_j - p)\big]

for :math:`i \ne j`, so the leave-one-out estimator built on these draws,
divided by :math:`1 - \rho`, is unbiased:

.. math::

    \hat g_\theta = \frac{1}{n(1-\rho)} \sum_{i=1}^n
        \Big(f(b_i) - \frac{1}{n-1}\sum_{j \ne i} f(b_j)\Big)(b_i - p).

With independent draws (:math:`\rho = 0`) it is leave-one-out; with
:math:`n = 2`, :math:`u_2 = 1 - u_1` and it is DisARM draw for draw
(:math:`1/(1-\rho) = \sigma(|\theta|)`). For :math:`n > 2` the coupling is
oriented by the side of :math:`p`: the value of probability below one half is
the one that the copula makes exclusive, as in the authors' code.

**References**

[1] `ARMS: Antithetic-REINFORCE-Multi-Sample Gradient for Binary Variables`,
Aleksandar Dimitriev, Mingyuan Zhou (ICML 2021)

[2] `DisARM: An Antithetic Gradient Estimator for Binary Latent Variables`,
Zhe Dong, Andriy Mnih, George Tucker (NeurIPS 2020)
"""

import torch
import torch.nn.functional as F

from .baselines import LeaveOneOutBaseline
from .elbo import DiscreteELBO, Surrogate
from .errors import EstimatorError
from .samplers import IIDSampler
from .structure import LEFT_DIMS, check_assumptions
from .util import BERNOULLI, CATEGORICAL, CONTINUOUS, ONEHOT, latent_shape, site_kind, site_logits, site_masks

__all__ = ["ARMSELBO", "AntitheticScore", "CopulaSampler", "dirichlet_copula_draws", "dirichlet_copula_factor"]

#: the requirement an ARMS site fails when its distribution differs between particles
SAME_DISTRIBUTION = "same_distribution_across_particles"


def dirichlet_copula_draws(logits, num, dim):
    """
    ``num`` coupled Bernoulli draws of probability ``sigmoid(logits)`` along a
    new dim inserted at ``dim`` (the particles' dim), by the Dirichlet copula.
    With ``num == 2`` the uniforms are ``u`` and ``1 - u``, ``u`` drawn of the
    logits' shape, and the draws are ``1[u < p]`` and ``1[1 - u < p]`` (DisARM's).
    """
    theta = logits.detach()
    p = torch.sigmoid(theta)
    if num == 2:
        u = torch.rand(theta.shape, dtype=theta.dtype, device=theta.device)
        return torch.stack([u < p, 1.0 - u < p], dim).to(theta.dtype)
    e = torch.empty((num,) + theta.shape, dtype=theta.dtype, device=theta.device).exponential_()
    d = e / e.sum(0, keepdim=True)
    # the value of probability q = max(p, 1 - p) is drawn where (1 - d)^(n - 1) > 1 - q, i.e. in log space
    log_q_bar = F.logsigmoid(-theta.abs())  # log(1 - q)
    likely = (num - 1) * torch.log1p(-d) > log_q_bar
    draws = torch.where(theta >= 0, likely, ~likely).to(theta.dtype)
    return draws.movedim(0, dim)


def dirichlet_copula_factor(logits, num):
    r"""
    :math:`1 / (1 - \rho)` of two of ``num`` draws of the Dirichlet copula
    (:func:`dirichlet_copula_draws`), per latent: :math:`\sigma(|\theta|)` for
    ``num == 2``; in general, with :math:`q = \max(p, 1-p)` and
    :math:`t = 1 - (1-q)^{1/(n-1)}`, :math:`q / (1 - ((1-2t)/(1-t))^{n-1})` for
    :math:`t < 1/2` and :math:`q` otherwise, computed without cancellation.
    """
    theta = logits.detach()
    q = torch.sigmoid(theta.abs())
    if num == 2:
        return q
    t = -torch.expm1(F.logsigmoid(-theta.abs()) / (num - 1))
    inner = t < 0.5  # else the joint mass beyond 2q - 1 is zero and 1 / (1 - rho) = q
    ratio = torch.where(inner, -t / (1 - t), torch.full_like(t, -0.5))  # the other branch's value is unused
    denominator = -torch.expm1((num - 1) * torch.log1p(ratio))
    return torch.where(inner, q / denominator, q)


class CopulaSampler(IIDSampler):
    """
    Draws the Bernoulli guide sites (``.to_event`` included) of the coupled
    set jointly across the particles, by the Dirichlet copula, and the other
    discrete sites independently (:class:`~pyro_discrete.samplers.IIDSampler`).
    Records :attr:`factors` (site name to :math:`1/(1-\\rho)` per latent, the
    particles' dim of size one). A coupled site whose distribution differs
    between particles (it depends on a site drawn per particle) is an error.

    :param coupled: a predicate on site names (default: every Bernoulli site).
    """

    def __init__(self, elbo, coupled=None):
        super().__init__(elbo)
        self.num = elbo.num_particles
        self.plate_nesting = elbo.max_plate_nesting
        self.coupled = coupled
        #: guide site name -> 1 / (1 - rho) per latent, of the logits' shape with the particles' dim of size one
        self.factors = {}

    def draw(self, msg):
        fn, name = msg["fn"], msg["name"]
        if site_kind(fn) != BERNOULLI or msg["args"] or msg["kwargs"]:
            return super().draw(msg)
        if self.coupled is not None and not self.coupled(name):
            return super().draw(msg)
        first, j = self.first_particle(msg, "ARMS", "Bernoulli")
        msg["value"] = dirichlet_copula_draws(first.squeeze(j), self.num, j)
        self.factors[name] = dirichlet_copula_factor(first, self.num)

    def first_particle(self, msg, method, kind):
        """
        ``(logits, j)``: the site's logits (detached) at the first particle,
        along its particles' dim ``j`` (kept, of size one), after checking that
        every particle has the same; an error naming the site otherwise.
        """
        fn, name = msg["fn"], msg["name"]
        logits = site_logits(fn).detach()
        j = len(fn.batch_shape) - self.plate_nesting
        first = logits.narrow(j, 0, 1)
        if not torch.equal(logits, first.expand_as(logits)):
            raise EstimatorError(
                self.elbo,
                "the distribution of guide site '{}' differs between particles: it depends on a site drawn per "
                "particle. {} couples the particles' draws of one {} distribution; use it for sites "
                "that depend on no other sampled guide site.".format(name, method, kind),
                sites=(name,),
                requirement=SAME_DISTRIBUTION,
                suggest=lambda e: not e.coupled_particles,
            )
        return first, j


_LEAVE_ONE_OUT = LeaveOneOutBaseline()


def apply_masks(signal, site):
    """``signal`` (the site's batch shape and latents) times the site's masks (of its batch shape)."""
    extra = len(latent_shape(site["fn"]))
    for mask in site_masks(site):
        signal = signal * mask.reshape(mask.shape + (1,) * extra).to(signal.dtype)
    return signal


class AntitheticScore(Surrogate):
    r"""
    The ARMS surrogate: for every coupled Bernoulli site, the leave-one-out
    centered cost times :math:`1/(1-\rho)` per latent, applied to the
    latents' log-densities (whose gradient is :math:`b - p`); for the other
    discrete sites, leave-one-out; pathwise terms for the rest.
    """

    assumes = frozenset([LEFT_DIMS])

    site_kinds = frozenset([BERNOULLI, CATEGORICAL, ONEHOT, CONTINUOUS])

    #: the kinds of site drawn coupled across particles (they need one distribution in every particle)
    coupled_kinds = frozenset([BERNOULLI])

    def check_structure(self, structure, names=None):
        failure = check_assumptions({LEFT_DIMS}, structure, names)
        if failure is not None:
            return failure
        for s in structure.all_sites.values():  # continuous sites too: drawn per particle as well
            later = sorted(
                d for d in s.dependents if d in structure.sites and structure.sites[d].kind in self.coupled_kinds
            )
            later = [d for d in later if names is None or d in names]
            if later:
                message = (
                    "guide site '{}' depends on the value of guide site '{}', drawn per particle: its distribution "
                    "differs between particles, and this estimator couples the particles' draws of one "
                    "distribution.".format(later[0], s.name)
                )
                return (s.name, later[0]), SAME_DISTRIBUTION, message
        return None

    def bind(self, elbo):
        if not elbo.vectorize_particles:
            raise EstimatorError(
                elbo,
                "couples the particles' draws along the vectorized particles' dim; vectorize_particles=False "
                "is not supported.",
                requirement="vectorized_particles",
                suggest=lambda e: e.name in ("loo", "vargrad"),
            )
        if elbo.num_particles < 2:
            raise EstimatorError(
                elbo, "needs num_particles >= 2 (the coupled draws), got {}.".format(elbo.num_particles)
            )

    def __call__(self, particles, step):
        _, surrogate_elbo = particles.pathwise_terms()
        surrogate, after = self.site_terms(particles, step, None, -surrogate_elbo)
        return after(surrogate / particles.num_particles)

    def site_terms(self, particles, step, names, surrogate):
        """``surrogate`` plus the terms of the sites ``names`` (all: ``None``), summed over particles."""
        sampler = particles.pairs[0].sampler
        for score_site in particles.score_sites():
            if names is None or score_site.name in names:
                surrogate = surrogate + self.site_term(score_site, sampler)
        return surrogate, lambda total: total

    def site_term(self, score_site, sampler):
        """The term of one site: ARMS for a coupled Bernoulli site, leave-one-out for one drawn independently."""
        centered = (score_site.cost - _LEAVE_ONE_OUT(score_site)).detach()
        factor = sampler.factors.get(score_site.name)
        if factor is None:
            return (score_site.score * centered).sum()
        site = score_site.site
        fn = site["fn"]
        logits = site_logits(fn)
        log_q = -F.binary_cross_entropy_with_logits(logits, site["value"].expand_as(logits), reduction="none")
        weight = centered.reshape(centered.shape + (1,) * len(latent_shape(fn))) * factor
        return (apply_masks(weight, site) * log_q).sum()


class ARMSELBO(DiscreteELBO):
    r"""
    ARMS [1]: the particles' draws of every Bernoulli guide site coupled by
    the Dirichlet copula (antithetic for :math:`n` samples), with the
    leave-one-out baseline corrected for their dependence,

    .. math::

        \hat g_\theta = \frac{1}{n(1-\rho)} \sum_{i=1}^n
            \Big(f(b_i) - \frac{1}{n-1}\sum_{j \ne i} f(b_j)\Big)(b_i - p)

    per latent (see :mod:`~pyro_discrete.arms`), where ``f`` is the cost the
    site can influence, per element of its plates. It needs no model
    evaluation beyond the :math:`n` particles; with ``num_particles=2`` it is
    DisARM [2] (``ARSMELBO(num_particles=1)``) draw for draw, and with
    independent draws it would be leave-one-out. Categorical and
    OneHotCategorical sites are drawn independently per particle and get
    leave-one-out; reparameterizable sites and model parameters pathwise
    gradients.

    Not supported, and an error naming the site: a Bernoulli site whose
    distribution differs between particles (it depends on another sampled
    guide site, e.g. the second layer of a sigmoid belief network's guide:
    use leave-one-out there, per site), looped particles, fewer than two.

    :param int num_particles: :math:`n`, the coupled draws per step (>= 2).

    **References**

    [1] `ARMS: Antithetic-REINFORCE-Multi-Sample Gradient for Binary
    Variables`, Aleksandar Dimitriev, Mingyuan Zhou (ICML 2021)

    [2] `DisARM: An Antithetic Gradient Estimator for Binary Latent
    Variables`, Zhe Dong, Andriy Mnih, George Tucker (NeurIPS 2020)
    """

    def __init__(self, num_particles=2, **kwargs):
        super().__init__(num_particles=num_particles, sampler=CopulaSampler, surrogate=AntitheticScore(), **kwargs)
