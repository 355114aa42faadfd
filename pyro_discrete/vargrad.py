# SPDX-License-Identifier: Apache-2.0
"""
VarGrad: the log-variance loss.
"""

from .elbo import DiscreteELBO, Surrogate
from .errors import EstimatorError
from .samplers import DetachedSampler, IIDSampler

__all__ = ["LogVariance", "VarGradELBO"]


class LogVariance(Surrogate):
    r"""
    The log-variance surrogate: pathwise terms for the model (and, with
    ``continuous="pathwise"``, the reparameterizable guide sites), plus
    :math:`\tfrac12\widehat{\operatorname{Var}}_s[\ell_{k,i,s}]` per guide
    site :math:`k` and element :math:`i` of its plates.
    """

    def bind(self, elbo):
        if elbo.num_particles < 2:
            raise EstimatorError(
                elbo,
                "the log-variance loss needs num_particles >= 2 (a variance over "
                "particles), got num_particles={}. Use num_particles=2 or more, or "
                "TraceScoreELBO(baseline='moving_average') for a single particle.".format(elbo.num_particles),
            )

    def __call__(self, particles, step):
        _, surrogate_elbo = particles.pathwise_terms()
        surrogate = -surrogate_elbo / particles.num_particles
        for score_site in particles.score_sites():
            log_q = score_site.score
            log_ratio = log_q + (score_site.cost - log_q.detach())
            surrogate = surrogate + 0.5 * log_ratio.var(score_site.particle_dim, correction=1).sum()
        return surrogate


class VarGradELBO(DiscreteELBO):
    r"""
    The log-variance loss of Richter et al. [1]: the guide is trained by
    minimizing the variance, over ``S`` particles drawn from the guide and
    detached as they are drawn, of the log-ratio

    .. math::

        f(z) = \log q_\phi(z) - \log p_\theta(x, z),
        \qquad
        \mathcal{L}_{\text{VarGrad}}(\phi)
        = \tfrac12\,\widehat{\operatorname{Var}}_{s=1..S}\big[f(z_s)\big].

    Its gradient equals, sample for sample, the score-function gradient of
    ``-ELBO`` with the leave-one-out baseline [1, 2]:
    :math:`\frac{1}{S-1}\sum_s (f_s - \bar f)\,\nabla_\phi \log q_\phi(z_s)`,
    so it is unbiased and needs no tuning. Model parameters :math:`\theta` get
    the ordinary (pathwise) ELBO gradient.

    With plates, the variance is taken per guide site and per element of the
    site's plates, over the cost the site can influence (its plate-level
    Rao-Blackwellized share of ``f``, see
    :func:`~pyro_discrete.costs.site_costs`), and summed:

    .. math::

        \sum_{\text{sites } k}\ \sum_{i \in \text{plates}(k)}
        \tfrac12\,\widehat{\operatorname{Var}}_s\big[\ell_{k,i,s}\big],
        \qquad
        \ell_{k,i,s} = \log q(z_{k,i,s}) + \operatorname{stopgrad}\big(c_{k,i,s} - \log q(z_{k,i,s})\big),

    whose value is the site's cost :math:`c` (subsampling scale included) and
    whose gradient is that of the unscaled :math:`\log q`: a scaled term is
    never squared.

    Continuous guide sites: with ``continuous="pathwise"`` (default)
    reparameterizable sites keep their pathwise (reparameterization) gradient,
    which usually has lower variance, and only the other sites enter the
    variance loss; with ``continuous="log_variance"`` every guide site is drawn
    detached and enters the variance loss, as in [1].

    ``loss`` and the value of ``loss_and_grads`` / ``differentiable_loss`` are
    the usual estimate of ``-ELBO``, comparable with any other ELBO. Particles
    may be vectorized (default) or looped (``vectorize_particles=False``).

    :param int num_particles: ``S >= 2`` particles.
    :param str continuous: ``"pathwise"`` or ``"log_variance"``.

    **References**

    [1] `VarGrad: A Low-Variance Gradient Estimator for Variational Inference`,
    Lorenz Richter, Ayman Boustati, Nikolas Nüsken, Francisco J. R. Ruiz,
    Ömer Deniz Akyildiz (NeurIPS 2020)

    [2] `Buy 4 REINFORCE Samples, Get a Baseline for Free!`, Wouter Kool,
    Herke van Hoof, Max Welling (ICLR 2019 workshop)
    """

    def __init__(self, num_particles=8, continuous="pathwise", **kwargs):
        if continuous not in ("pathwise", "log_variance"):
            raise EstimatorError(self, "continuous must be 'pathwise' or 'log_variance', got {!r}".format(continuous))
        self.continuous = continuous
        sampler = DetachedSampler if continuous == "log_variance" else IIDSampler
        super().__init__(num_particles=num_particles, sampler=sampler, surrogate=LogVariance(), **kwargs)
