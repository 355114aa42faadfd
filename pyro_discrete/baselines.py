# SPDX-License-Identifier: Apache-2.0
"""
Baselines (control variates) for score-function estimators.

A baseline ``b`` turns the score-function term ``∇log q(z) · c(z)`` into
``∇log q(z) · (c(z) - b)``, which has the same expectation as long as ``b``
does not depend on the sample ``z`` it multiplies. Every baseline here is kept
per element of the plates of the site it serves (the cost ``c`` of a site in a
data plate has one entry per data point), so it never mixes data points.

* :class:`LeaveOneOutBaseline` -- for each particle, the mean cost of the
  *other* particles ([1], "batch_average" in Storchastic).
* :class:`MovingAverageBaseline` -- an exponential moving average of past
  costs, one number per site, used *before* it is updated with the current
  step's costs so that it is independent of the current samples.
* :class:`NeuralBaseline` -- an input-dependent baseline [2], a network of
  the guide's distribution parameters (or of any input), learned by minimizing
  the squared centered cost (see :mod:`~pyro_discrete.auxiliary`).
* :class:`NoBaseline`.

A baseline is called with a :class:`~pyro_discrete.elbo.ScoreSite` (the site,
its particles' costs and the dim that holds them).

**References**

[1] `Buy 4 REINFORCE Samples, Get a Baseline for Free!`,
Wouter Kool, Herke van Hoof, Max Welling (ICLR 2019 workshop)

[2] `Neural Variational Inference and Learning in Belief Networks`,
Andriy Mnih, Karol Gregor (ICML 2014)
"""

import torch
from pyro.distributions.util import detach

from .auxiliary import Auxiliary
from .costs import site_scale
from .errors import EstimatorError
from .util import BERNOULLI, CATEGORICAL, ONEHOT, innermost_distribution, site_kind, site_logits

__all__ = [
    "BASELINE_NAMES",
    "Baseline",
    "LeaveOneOutBaseline",
    "MovingAverageBaseline",
    "NeuralBaseline",
    "NoBaseline",
    "TraceGraphBaseline",
    "make_baseline",
]


class Baseline:
    """
    Interface of a baseline. ``__call__`` returns the baseline for a site's
    cost (a detached tensor broadcastable to it, or ``0.``); :meth:`update` is
    called afterwards, once per step that may update state.
    """

    #: whether the baseline needs at least two particles
    needs_particles = False

    #: whether the baseline keeps state between steps
    stateful = False

    #: the :class:`~pyro_discrete.auxiliary.Auxiliary` parameters it learns, if any
    auxiliary = None

    def __call__(self, score_site):
        raise NotImplementedError

    def objective(self, score_site, value):
        """The objective of its auxiliary parameters, given the value it returned (learned baselines only)."""
        raise NotImplementedError

    def centering(self, score_site, value):
        """What the cost is centered by, given the value it returned (learned baselines)."""
        return value

    def update(self, score_site):
        """
        Takes the current step's costs of ``score_site`` into the baseline's
        state, after its value for that step was used, so that the value used at
        a step depends on earlier steps only. Called on steps that may update
        state only; a stateless baseline does nothing.
        """
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


class NoBaseline(Baseline):
    """No baseline: the plain score-function (REINFORCE) estimator."""

    def __call__(self, score_site):
        return 0.0

    def __repr__(self):
        return "NoBaseline()"


class LeaveOneOutBaseline(Baseline):
    r"""
    Leave-one-out baseline over ``S`` particles [1]:

    .. math::

        b_s = \frac{1}{S-1} \sum_{s' \ne s} c_{s'},
        \qquad c_s - b_s = \frac{S}{S-1} (c_s - \bar c),

    computed separately for every element of the site's plates. Unbiased
    because particles are independent.
    """

    needs_particles = True

    def __call__(self, score_site):
        cost, dim = score_site.cost, score_site.particle_dim
        return (cost.sum(dim, keepdim=True) - cost) / (cost.size(dim) - 1)

    def __repr__(self):
        return "LeaveOneOutBaseline()"


class MovingAverageBaseline(Baseline):
    r"""
    Exponential moving average of a site's cost per plate element,
    :math:`b_{t+1} = \text{decay}\cdot b_t + (1-\text{decay})\cdot \bar c_t`,
    one number per site. The baseline of step ``t`` is :math:`b_t`, computed
    from earlier steps only, so the estimator stays unbiased (updating before
    use would correlate the baseline with the current samples). The first step
    uses no baseline.

    The average is kept per element of the site's plates and with the
    subsampling scale divided out, so it stays meaningful when the batch size
    changes between steps or under ``pyro.plate(..., subsample_size=...)``;
    the stored value is multiplied by the current scale when used.
    """

    stateful = True

    def __init__(self, decay=0.9):
        if not 0.0 <= decay < 1.0:
            raise ValueError("moving-average baseline: decay must be in [0, 1), got {}".format(decay))
        self.decay = decay
        self.averages = {}

    def __call__(self, score_site):
        average = self.averages.get(score_site.name)
        if average is None:
            return 0.0
        scale = site_scale(score_site.site)
        return average if scale is None else average * scale

    def update(self, score_site):
        name, cost = score_site.name, score_site.cost
        scale = site_scale(score_site.site)
        value = cost.mean() if scale is None else cost.mean() / scale
        value = value.detach()
        average = self.averages.get(name)
        if average is None:
            self.averages[name] = value
        else:
            self.averages[name] = self.decay * average + (1.0 - self.decay) * value

    def state_dict(self):
        return {"decay": self.decay, "averages": {name: value.clone() for name, value in self.averages.items()}}

    def load_state_dict(self, state):
        self.decay = state["decay"]
        self.averages = {name: torch.as_tensor(value).clone() for name, value in state["averages"].items()}

    def __repr__(self):
        return "MovingAverageBaseline(decay={})".format(self.decay)


class NeuralBaseline(Baseline):
    r"""
    An input-dependent baseline [2]: :math:`b = h_\psi(u)` per element of the
    site's plates (and per particle), where :math:`u` is an input that does
    not depend on the sample -- by default the site's distribution parameters
    (its logits, or probabilities, detached and flattened over the event), a
    function of the data through the guide -- and :math:`h_\psi` a network
    that maps the input's last dim to one number. :math:`\psi` is learned by
    minimizing :math:`\sum (c - b)^2` over plate elements and particles,
    through :class:`~pyro.infer.SVI` or a torch optimizer alike (see
    :mod:`~pyro_discrete.auxiliary`); the estimator stays unbiased while it
    learns, since :math:`b` never depends on the sample it multiplies.

    :param torch.nn.Module module: :math:`h_\psi`, from ``(..., d)`` to ``(..., 1)``.
    :param input: ``None`` (the logits of a Bernoulli or categorical site,
        flattened over its latents), or a callable of the guide site returning
        a tensor shaped ``site batch shape + (d,)``.
    :param str name: the prefix of its parameters in Pyro's param store.
    :param bool loo: combine with leave-one-out (two or more particles):
        :math:`b_s = h_s + \frac1{S-1}\sum_{s'\ne s}(c_{s'} - h_{s'})`, still
        independent of sample :math:`s`. It helps where :math:`h` differs
        between particles (an input that depends on a continuous site sampled
        per particle); with the same :math:`h` for every particle it is
        leave-one-out itself.
    """

    stateful = True

    def __init__(self, module, input=None, name="neural_baseline", loo=False):
        self.input = input
        self.loo = loo
        self.needs_particles = loo
        self.auxiliary = Auxiliary(name, module)

    def _input(self, site):
        if self.input is not None:
            return self.input(site)
        fn = site["fn"]
        if site_kind(fn) not in (BERNOULLI, CATEGORICAL, ONEHOT):
            raise ValueError(
                "NeuralBaseline: guide site '{}' ({}) has no logits to use as the baseline's input; pass "
                "input=callable(site)".format(site["name"], type(innermost_distribution(fn)).__name__)
            )
        return site_logits(fn).detach().reshape(fn.batch_shape + (-1,))

    def __call__(self, score_site):
        module = self.auxiliary.register()
        value = module(self._input(score_site.site)).squeeze(-1)
        if score_site.particle_dim is not None and value.dim() < score_site.cost.dim():
            value = value.unsqueeze(score_site.particle_dim)  # looped particles: one value for all
        return value

    def centering(self, score_site, value):
        """What the cost is centered by: the network's value, or its combination with leave-one-out."""
        if not self.loo:
            return value
        dim = score_site.particle_dim
        residual = (score_site.cost - value).detach()
        residual = residual.expand(torch.broadcast_shapes(residual.shape, score_site.cost.shape))
        return value + (residual.sum(dim, keepdim=True) - residual) / (residual.size(dim) - 1)

    def objective(self, score_site, value):
        return (score_site.cost - value).pow(2).sum()

    def state_dict(self):
        return {}

    def __repr__(self):
        return "NeuralBaseline({})".format(self.auxiliary.name)


class TraceGraphBaseline:
    """
    A guide site's ``infer={"baseline": {...}}`` options of Pyro's
    :class:`~pyro.infer.TraceGraph_ELBO`, honored by the score family as
    TraceGraph_ELBO honors them, so that a guide written for it ports by
    changing the loss alone and gets the same gradient, draw for draw (with
    TraceGraph_ELBO's downstream costs, which the score family uses by default
    for such a guide: see ``track_dependencies`` of
    :class:`~pyro_discrete.elbo.DiscreteELBO`):

    * ``use_decaying_avg_baseline`` / ``baseline_beta``: an average of the
      site's cost kept per element of the cost (its particles and plate
      elements, as TraceGraph_ELBO keeps it), used before it is updated and
      started at zero; it starts again at zero when the cost's shape changes;
    * ``nn_baseline(nn_baseline_input)``: a network's value, its input
      detached;
    * ``baseline_value``: a value computed by the guide, with its graph (AIR
      computes it with its own network).

    They add up. For ``nn_baseline`` and ``baseline_value`` the squared error
    of the baseline, summed over the cost's elements and averaged over
    particles, is added to the surrogate, as TraceGraph_ELBO does: that trains
    the network (register it with :func:`pyro.module` so that the optimizer
    finds it). The baseline must have the cost's shape (the site's plates, and
    the vectorized particles), as in Pyro; anything else is an error. As in
    Pyro, values are in the ELBO's sign (they estimate the site's share of
    :math:`\\log p - \\log q`, the negative of this package's cost). With several
    particles a site's own baseline replaces the estimator's (leave-one-out
    included), as in ``TraceGraph_ELBO(num_particles=S)``. Unknown keys, and
    ``nn_baseline`` with ``baseline_value``, are errors, as in Pyro.
    """

    KEYS = ("use_decaying_avg_baseline", "baseline_beta", "nn_baseline", "nn_baseline_input", "baseline_value")

    def __init__(self):
        #: site name -> the decaying average of its cost (this package's sign), shaped like the cost
        self.averages = {}

    def check(self, owner, name, options):
        unknown = set(options) - set(self.KEYS)
        if unknown:
            raise EstimatorError(
                owner,
                "guide site '{}' has unrecognized baseline options {}; the keys are {}".format(
                    name, sorted(unknown), ", ".join(self.KEYS)
                ),
                sites=(name,),
                requirement="baseline_options",
            )
        if options.get("nn_baseline") is not None and options.get("baseline_value") is not None:
            raise EstimatorError(
                owner,
                "guide site '{}' gives both nn_baseline and baseline_value; use one".format(name),
                sites=(name,),
                requirement="baseline_options",
            )

    def __call__(self, owner, name, cost, options):
        """
        ``(value, objective)`` for the cost ``cost`` of guide site ``name``
        (one trace's: its particles and plate elements): what the cost is
        centered by (with its graph to the network or given value), and the
        squared error that trains them (``None`` without one).
        """
        value, objective = 0.0, None
        if options.get("use_decaying_avg_baseline", False):
            average = self.averages.get(name)
            if average is None or average.shape != cost.shape:
                average = torch.zeros_like(cost)
            value = average
        learned = options.get("nn_baseline")
        if learned is not None:
            learned = learned(detach(options.get("nn_baseline_input")))
        elif options.get("baseline_value") is not None:
            learned = options["baseline_value"]
        if learned is not None:
            value = value - learned  # the ELBO's sign: minus a cost
            objective = (cost.detach() - value).pow(2).sum()
        if (torch.is_tensor(value) and value.shape != cost.shape) or (not torch.is_tensor(value) and cost.dim()):
            raise EstimatorError(
                owner,
                "the baseline of guide site '{}' has shape {}, but the site's cost has shape {} (its plates{}); "
                "as in TraceGraph_ELBO, nn_baseline and baseline_value must give one value per element of "
                "the cost.".format(
                    name,
                    tuple(value.shape) if torch.is_tensor(value) else (),
                    tuple(cost.shape),
                    ", and the vectorized particles" if cost.dim() else "",
                ),
                sites=(name,),
                requirement="baseline_shape",
            )
        return value, objective

    def update(self, name, cost, options):
        """Takes this step's cost into the site's decaying average, after the average was used."""
        if not options.get("use_decaying_avg_baseline", False):
            return
        beta = options.get("baseline_beta", 0.90)
        average = self.averages.get(name)
        if average is None or average.shape != cost.shape:
            average = torch.zeros_like(cost)
        self.averages[name] = ((1.0 - beta) * cost + beta * average).detach()

    def state_dict(self):
        return {name: average.clone() for name, average in self.averages.items()}

    def load_state_dict(self, state):
        self.averages = {name: torch.as_tensor(average).clone() for name, average in state.items()}


#: Names accepted by :func:`make_baseline`.
BASELINE_NAMES = ("auto", "loo", "batch_average", "moving_average", "none", None)


def make_baseline(spec, decay=0.9, num_particles=2, owner="TraceScoreELBO"):
    """
    A :class:`Baseline` from a name: ``"auto"`` (leave-one-out with two or more
    particles, else a moving average), ``"loo"`` (alias ``"batch_average"``),
    ``"moving_average"``, ``"none"`` / ``None``, or a :class:`Baseline`
    instance, returned as is.
    """
    if isinstance(spec, Baseline):
        return spec
    if spec is None or spec == "none":
        return NoBaseline()
    if spec == "auto":
        spec = "loo" if num_particles >= 2 else "moving_average"
    if spec in ("loo", "batch_average"):
        return LeaveOneOutBaseline()
    if spec == "moving_average":
        return MovingAverageBaseline(decay)
    raise ValueError(
        "{}: unknown baseline {!r}; use one of 'auto', 'loo' (alias 'batch_average'), "
        "'moving_average', 'none' or None, or a pyro_discrete.baselines.Baseline "
        "instance".format(owner, spec)
    )
