# SPDX-License-Identifier: Apache-2.0
"""
The score-function (REINFORCE) estimator with baselines.
"""

import torch

from .baselines import TraceGraphBaseline, make_baseline
from .elbo import DiscreteELBO, Surrogate
from .errors import EstimatorError
from .samplers import IIDSampler

__all__ = ["ScoreFunction", "TraceScoreELBO"]


class ScoreFunction(Surrogate):
    r"""
    The score-function surrogate: pathwise terms for the model and the
    reparameterizable guide sites, and for every other guide site
    :math:`\log q(z_s)\,(c_s - b_s)`, averaged over particles.

    :param baseline: see :class:`TraceScoreELBO`.
    :param float decay: decay of moving-average baselines.
    """

    honored_infer_keys = ("baseline",)

    def __init__(self, baseline="auto", decay=0.9):
        self.spec, self.decay = baseline, decay
        self.baseline = None
        self.site_baselines = {}
        self.tracegraph = TraceGraphBaseline()

    def bind(self, elbo):
        self.owner = type(elbo).__name__
        self.num_particles = elbo.num_particles
        self.baseline = make_baseline(self.spec, self.decay, elbo.num_particles, owner=self.owner)
        self._check(self.baseline, "baseline={!r}".format(self.spec))

    def _check(self, baseline, what):
        if baseline.needs_particles and self.num_particles < 2:
            raise EstimatorError(
                self.owner,
                "{} (leave-one-out) needs num_particles >= 2, got num_particles={}. "
                "Use num_particles=2 or more, or baseline='moving_average' or "
                "baseline=None for a single particle.".format(what, self.num_particles),
            )

    def baseline_for(self, name, site):
        """The site's baseline: its ``infer={"score_baseline": ...}`` choice, or the estimator's."""
        spec = site["infer"].get("score_baseline")
        if spec is None:
            return self.baseline
        baseline = self.site_baselines.get(name)
        if baseline is None:
            baseline = make_baseline(spec, self.decay, self.num_particles, owner=self.owner)
            self._check(baseline, "site '{}' asks for infer={{'score_baseline': {!r}}}, which".format(name, spec))
            self.site_baselines[name] = baseline
        return baseline

    def jit_unsupported(self):
        if self.baseline.stateful or any(b.stateful for b in self.site_baselines.values()) or self.tracegraph.averages:
            return "a baseline keeps state between steps; use baseline='loo' or None."
        return None

    def __call__(self, particles, step):
        _, surrogate_elbo = particles.pathwise_terms()
        surrogate, after = self.site_terms(particles, step, None, -surrogate_elbo)
        return after(surrogate / particles.num_particles)

    def site_terms(self, particles, step, names, surrogate):
        """
        ``surrogate`` plus the score terms of the sites ``names`` (all: ``None``),
        summed over particles, and ``after(total)``, which adds the baselines'
        own objectives to the total divided by the particle count (see
        :mod:`~pyro_discrete.per_site`).
        """
        objectives = {}
        baseline_losses = []
        for score_site in particles.score_sites():
            if names is not None and score_site.name not in names:
                continue
            if score_site.site["infer"].get("baseline") is not None:  # TraceGraph_ELBO's per-site options
                term, loss = self._tracegraph_term(particles, score_site, step)
                surrogate = surrogate + term
                if loss is not None:
                    baseline_losses.append(loss)
                continue
            baseline = self.baseline_for(score_site.name, score_site.site)
            if step.elbo.jit_compile and baseline.stateful:
                raise EstimatorError(
                    self.owner,
                    "site '{}' uses the baseline {!r}, which keeps state between steps and cannot be "
                    "compiled (jit_compile=True); use 'loo' or None for that site, or "
                    "jit_compile=False.".format(score_site.name, baseline),
                    sites=(score_site.name,),
                    requirement="stateless_for_jit",
                )
            value = baseline(score_site)
            if baseline.auxiliary is not None:
                objective = baseline.objective(score_site, value)
                previous = objectives.get(baseline.auxiliary)
                objectives[baseline.auxiliary] = objective if previous is None else previous + objective
                value = baseline.centering(score_site, value).detach()
            centered = score_site.cost - value
            surrogate = surrogate + (score_site.score * centered).sum()
            if step.update:
                baseline.update(score_site)

        def after(total):
            for auxiliary, objective in objectives.items():
                total = total + auxiliary.term(objective / particles.num_particles)
            for loss in baseline_losses:  # as TraceGraph_ELBO: the squared errors, averaged over particles
                total = total + loss / particles.num_particles
            return total

        return surrogate, after

    def _tracegraph_term(self, particles, score_site, step):
        """
        ``(score term, squared error or None)`` of a site with TraceGraph_ELBO's
        baseline options, summed over particles: each trace's own options (a
        ``baseline_value`` is computed per trace), as TraceGraph_ELBO does.
        """
        name = score_site.name
        if len(particles.pairs) == 1:
            parts = [(score_site.site, score_site.score, score_site.cost)]
        else:  # looped particles: stacked along the first dim
            parts = [
                (pair.guide_trace.nodes[name], score_site.score[i], score_site.cost[i])
                for i, pair in enumerate(particles.pairs)
            ]
        term, loss = 0.0, None
        for site, score, cost in parts:
            options = site["infer"]["baseline"]
            self.tracegraph.check(self.owner, name, options)
            # looped particles share the site's average and update it one after another, as TraceGraph_ELBO's
            value, objective = self.tracegraph(self.owner, name, cost, options)
            centered = cost - (value.detach() if torch.is_tensor(value) else value)
            term = term + (score * centered).sum()
            if objective is not None:
                loss = objective if loss is None else loss + objective
            if step.update:
                self.tracegraph.update(name, cost, options)
        return term, loss

    def configuration(self):
        return "{}(baseline={!r})".format(type(self).__name__, self.baseline)

    def method(self):
        return "{}({})".format(type(self).__name__, type(self.baseline).__name__)

    def auxiliary_modules(self):
        baselines = [self.baseline] + list(self.site_baselines.values())
        return {b.auxiliary.name: b.auxiliary.module for b in baselines if b.auxiliary is not None}

    def state_dict(self):
        state = {"baseline": self.baseline.state_dict(), "tracegraph": self.tracegraph.state_dict()}
        state["site_baselines"] = {name: (b.state_dict(), _spec(b)) for name, b in self.site_baselines.items()}
        return state

    def load_state_dict(self, state):
        self.baseline.load_state_dict(state["baseline"])
        self.tracegraph.load_state_dict(state.get("tracegraph", {}))
        for name, (baseline_state, spec) in state.get("site_baselines", {}).items():
            baseline = make_baseline(spec, self.decay, self.num_particles, owner=self.owner)
            baseline.load_state_dict(baseline_state)
            self.site_baselines[name] = baseline


def _spec(baseline):
    from .baselines import LeaveOneOutBaseline, MovingAverageBaseline

    if isinstance(baseline, MovingAverageBaseline):
        return "moving_average"
    if isinstance(baseline, LeaveOneOutBaseline):
        return "loo"
    return None


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
    :func:`~pyro_discrete.costs.site_costs`), the surrogate is

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
    :param baseline: ``"auto"`` (default): leave-one-out with two or more
        particles, a moving average with one; ``"loo"`` (alias
        ``"batch_average"``): the mean of the other particles' costs, per
        plate element, needs ``num_particles >= 2`` [3]; ``"moving_average"``:
        an exponential moving average per site (``decay``), used before it is
        updated; ``None`` or ``"none"``; or a
        :class:`~pyro_discrete.baselines.Baseline`. A site can choose its own
        with ``infer={"score_baseline": "moving_average"}``.
    :param float decay: decay of the moving-average baseline.
    :param kwargs: passed to :class:`~pyro_discrete.elbo.DiscreteELBO` and
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

    def __init__(self, num_particles=1, baseline="auto", decay=0.9, **kwargs):
        super().__init__(
            num_particles=num_particles, sampler=IIDSampler, surrogate=ScoreFunction(baseline, decay), **kwargs
        )

    @property
    def baseline(self):
        """The estimator's :class:`~pyro_discrete.baselines.Baseline`."""
        return self.surrogate.baseline
