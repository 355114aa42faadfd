# SPDX-License-Identifier: Apache-2.0
"""
The score-function (REINFORCE) estimator with baselines.
"""

from .baselines import Baseline, make_baseline
from .core import DiscreteELBO, estimator_error

__all__ = ["TraceScoreELBO"]


class TraceScoreELBO(DiscreteELBO):
    r"""
    The score-function estimator [1, 2] of the ELBO gradient with a baseline,
    for every guide site that cannot be reparameterized (Bernoulli,
    Categorical, OneHotCategorical, ``.to_event`` versions of them, and any
    other distribution without ``rsample``); reparameterizable guide sites and
    model parameters get pathwise gradients.

    For a guide site :math:`z` with parameters :math:`\phi`, particles
    :math:`s = 1..S` and cost :math:`c_s = \log q(z_s) - \log p(x, z_s)`
    restricted to the plate elements :math:`z` can influence (see
    :func:`~pyro_discrete.core.site_costs`), the surrogate is

    .. math::

        \frac{1}{S}\sum_s \log q_\phi(z_s)\,\big(c_s - b_s\big)

    whose gradient is an unbiased estimate of :math:`\nabla_\phi(-\text{ELBO})`
    for any baseline :math:`b_s` independent of :math:`z_s`. With
    ``baseline=None`` this is exactly :class:`pyro.infer.Trace_ELBO`'s
    estimator.

    Example::

        svi = pyro.infer.SVI(model, guide, optim,
                             loss=TraceScoreELBO(num_particles=10, baseline="loo"))

    :param int num_particles: particles per step (vectorized by default).
    :param baseline: ``"loo"`` (alias ``"batch_average"``): leave-one-out mean
        of the other particles' costs, per plate element, needs
        ``num_particles >= 2`` [3]; ``"moving_average"``: an exponential moving
        average per site (``decay``), used before it is updated; ``None`` or
        ``"none"``; or a :class:`~pyro_discrete.baselines.Baseline`. A site can
        choose its own with ``infer={"score_baseline": "moving_average"}``.
    :param float decay: decay of the moving-average baseline.
    :param kwargs: passed to :class:`~pyro_discrete.core.DiscreteELBO` and
        :class:`pyro.infer.ELBO` (``max_plate_nesting``,
        ``vectorize_particles``, ``track_dependencies``, ...).

    **References**

    [1] `Simple Statistical Gradient-Following Algorithms for Connectionist
        Reinforcement Learning`, Ronald J. Williams (1992)

    [2] `Black Box Variational Inference`, Rajesh Ranganath, Sean Gerrish,
        David M. Blei (AISTATS 2014)

    [3] `Buy 4 REINFORCE Samples, Get a Baseline for Free!`, Wouter Kool,
        Herke van Hoof, Max Welling (ICLR 2019 workshop)
    """

    def __init__(self, num_particles=1, baseline="loo", decay=0.9, **kwargs):
        super().__init__(num_particles=num_particles, **kwargs)
        self.decay = decay
        self.baseline = make_baseline(baseline, decay, owner=type(self).__name__)
        self._check_baseline(self.baseline, "baseline={!r}".format(baseline))
        self._site_baselines = {}

    def _check_baseline(self, baseline, what):
        if baseline.needs_particles and self.num_particles < 2:
            raise ValueError(
                estimator_error(
                    self,
                    "{} (leave-one-out) needs num_particles >= 2, got num_particles={}. "
                    "Use num_particles=2 or more, or baseline='moving_average' or "
                    "baseline=None for a single particle.".format(what, self.num_particles),
                )
            )
        if baseline.needs_particles and not self.vectorize_particles:
            raise ValueError(
                estimator_error(
                    self,
                    "{} (leave-one-out) needs vectorize_particles=True, since every "
                    "particle's cost must be known at once.".format(what),
                )
            )

    def _jit_unsupported(self):
        if _is_stateful(self.baseline):
            return "the baseline {!r} keeps state between steps; use baseline='loo' or None.".format(self.baseline)
        return None

    def _baseline_for(self, name, site):
        spec = site["infer"].get("score_baseline")
        if spec is None:
            return self.baseline
        baseline = self._site_baselines.get(name)
        if baseline is None:
            baseline = make_baseline(spec, self.decay, owner=type(self).__name__)
            self._check_baseline(
                baseline, "site '{}' asks for infer={{'score_baseline': {!r}}}, which".format(name, spec)
            )
            if self.jit_compile and _is_stateful(baseline):
                raise ValueError(
                    estimator_error(
                        self,
                        "site '{}' asks for infer={{'score_baseline': {!r}}}, which keeps state between "
                        "steps and cannot be compiled (jit_compile=True); use 'loo' or None for that "
                        "site, or jit_compile=False.".format(name, spec),
                    )
                )
            self._site_baselines[name] = baseline
        return baseline

    def _particle_loss_and_surrogate(self, model_trace, guide_trace, update):
        elbo, surrogate_elbo = self._pathwise_terms(model_trace, guide_trace)
        surrogate_loss = -surrogate_elbo
        particle_dim = self._particle_dim()
        for name, site, cost in self._score_sites_and_costs(model_trace, guide_trace):
            baseline = self._baseline_for(name, site)
            centered = cost - baseline(name, site, cost, particle_dim)
            surrogate_loss = surrogate_loss + (site["score_parts"].score_function * centered).sum()
            if update:
                baseline.update(name, site, cost)
        return -elbo, surrogate_loss


def _is_stateful(baseline):
    # a baseline that learns from past steps (overrides Baseline.update)
    return type(baseline).update is not Baseline.update
