# SPDX-License-Identifier: Apache-2.0
"""
The Concrete (Gumbel-softmax) relaxation of discrete sites.
"""

import math

import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample
from torch.distributions import Bernoulli, Categorical, Independent, OneHotCategorical, constraints
from torch.distributions.relaxed_categorical import ExpRelaxedCategorical

from .core import DiscreteELBO, estimator_error, innermost_distribution

__all__ = ["RelaxedConcreteELBO", "exponential_decay"]

#: attribute of a relaxed site's value that holds the sample in log / logit space
_LATENT = "_pyro_discrete_relaxed"



class _LogitRelaxedBernoulli(torch.distributions.Distribution):
    """
    The Concrete relaxation of a Bernoulli in logit space [Maddison et al.,
    appendix]: ``l = (alpha + logistic noise) / temperature``, with the
    log-density written with ``softplus`` so that it does not overflow.
    """

    arg_constraints = {}
    support = constraints.real
    has_rsample = True

    def __init__(self, temperature, logits):
        self.temperature, self.logits = temperature, logits
        super().__init__(logits.shape, validate_args=False)

    def rsample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        u = torch.rand(shape, dtype=self.logits.dtype, device=self.logits.device)
        eps = torch.finfo(u.dtype).eps
        u = u.clamp(eps, 1 - eps)
        return (u.log() - (-u).log1p() + self.logits) / self.temperature

    def log_prob(self, value):
        diff = self.logits - value * self.temperature
        return math.log(self.temperature) + diff - 2.0 * F.softplus(diff)


class _RelaxedSite(TorchDistribution):
    """
    A relaxed site as Pyro sees it: the value handed to the program is the
    relaxed sample in the simplex (or (0, 1)), or a hard one with straight-
    through gradients; the density is that of the sample in log / logit space,
    carried on the value (``value._pyro_discrete_relaxed``), so that it never
    underflows.
    """

    arg_constraints = {}
    support = constraints.real
    has_rsample = True

    def __init__(self, latent_dist, kind, batch_shape, event_shape, straight_through):
        self.latent_dist, self.kind, self.straight_through = latent_dist, kind, straight_through
        super().__init__(batch_shape, event_shape, validate_args=False)

    def rsample(self, sample_shape=torch.Size()):
        latent = self.latent_dist.rsample(sample_shape)
        soft = latent.exp() if self.kind == "onehot" else torch.sigmoid(latent)
        if self.straight_through:
            if self.kind == "onehot":
                hard = F.one_hot(latent.argmax(-1), latent.shape[-1]).to(soft.dtype)
            else:
                hard = (latent > 0).to(soft.dtype)
            value = hard + (soft - soft.detach())
        else:
            value = soft
        setattr(value, _LATENT, latent)
        return value

    def log_prob(self, value):
        latent = getattr(value, _LATENT, None)
        if latent is None:
            raise ValueError(
                "a relaxed site's value must come from its relaxed guide sample (it carries the "
                "sample in log space); got a tensor without it"
            )
        return self.latent_dist.log_prob(latent)


def _relaxed(fn, temperature, straight_through, name, elbo, where):
    base = innermost_distribution(fn)
    if isinstance(base, OneHotCategorical):
        kind, base_event = "onehot", 1
    elif isinstance(base, Bernoulli):
        kind, base_event = "bernoulli", 0
    elif isinstance(base, Categorical):
        raise ValueError(
            estimator_error(
                elbo,
                "{} site '{}' is a Categorical (integer index) site, which has no continuous "
                "relaxation. Declare it as OneHotCategorical (one-hot values; the model then "
                "receives one-hot vectors), or use TraceScoreELBO, VarGradELBO or ARSMELBO.".format(where, name),
            )
        )
    else:
        raise NotImplementedError(
            estimator_error(
                elbo,
                "{} site '{}' ({}) cannot be relaxed: only Bernoulli and OneHotCategorical sites "
                "(with .to_event) are. Use TraceScoreELBO or VarGradELBO.".format(where, name, type(base).__name__),
            )
        )
    latent_shape = fn.event_shape[: len(fn.event_shape) - base_event]
    logits = base.logits
    if kind == "onehot":
        logits = logits.expand(fn.batch_shape + latent_shape + logits.shape[-1:])
        latent = ExpRelaxedCategorical(torch.tensor(temperature, dtype=logits.dtype, device=logits.device), logits=logits)
    else:
        logits = logits.expand(fn.batch_shape + latent_shape)
        latent = _LogitRelaxedBernoulli(temperature, logits)
    if latent_shape:
        latent = Independent(latent, len(latent_shape))
    return _RelaxedSite(latent, kind, fn.batch_shape, fn.event_shape, straight_through)


class _RelaxGuide(Messenger):
    def __init__(self, elbo, temperature, straight_through):
        super().__init__()
        self.elbo, self.temperature, self.straight_through = elbo, temperature, straight_through
        self.names = set()

    def _pyro_sample(self, msg):
        if msg["is_observed"] or msg["value"] is not None or isinstance(msg["fn"], _Subsample):
            return
        if getattr(msg["fn"], "has_rsample", False):
            return
        msg["fn"] = _relaxed(msg["fn"], self.temperature, self.straight_through, msg["name"], self.elbo, "guide")
        self.names.add(msg["name"])


class _RelaxModel(Messenger):
    def __init__(self, elbo, temperature, names):
        super().__init__()
        self.elbo, self.temperature, self.names = elbo, temperature, names

    def _pyro_sample(self, msg):
        if msg["name"] in self.names and not msg["is_observed"]:
            msg["fn"] = _relaxed(msg["fn"], self.temperature, False, msg["name"], self.elbo, "model")


def exponential_decay(initial=1.0, rate=1e-4, minimum=0.5):
    """
    The schedule of Jang et al. (2017): ``max(minimum, initial * exp(-rate * step))``,
    as a callable of the step count for ``RelaxedConcreteELBO(temperature=...)``.
    """

    def schedule(step):
        return max(minimum, initial * math.exp(-rate * step))

    return schedule


class RelaxedConcreteELBO(DiscreteELBO):
    r"""
    The Concrete / Gumbel-softmax relaxation [1, 2]: every Bernoulli and
    OneHotCategorical guide site (``.to_event`` included) is replaced by its
    Concrete relaxation at temperature :math:`\lambda_1`, and the model's site
    of the same name by the relaxation of its prior at :math:`\lambda_2`
    (``prior_temperature``, default :math:`\lambda_1`). Gradients are pathwise
    (reparameterized); the estimator is **biased**: it is the exact gradient of
    the relaxed objective, not of the discrete ELBO, and the bias grows with the
    temperature (``tests/test_relaxed.py`` measures it against the exact
    gradient).

    Densities are computed in log space: a categorical sample is drawn as
    :math:`x = \log y` (ExpConcrete) and a binary one as its logit, and
    :math:`\log q(y) - \log p(y) = \log q_X(x) - \log p_X(x)`, so nothing
    underflows at low temperature (Pyro's ``RelaxedOneHotCategorical`` does,
    pyro#3304). The model receives :math:`y = e^{x}` (or
    :math:`\sigma(x)`); with ``straight_through=True`` it receives the hard
    one-hot / 0-1 value, and gradients flow through the relaxed sample [2].

    ``temperature`` is a number or a callable of the step count (e.g.
    :func:`exponential_decay`), advanced once per gradient step
    (``loss_and_grads`` or ``differentiable_loss``).

    Values: :meth:`loss` is the usual estimate of the **discrete** ``-ELBO``
    (hard samples from the original guide, original distributions), so it
    compares with every other ELBO; :meth:`loss_and_grads` and
    :meth:`differentiable_loss` return the **relaxed** ``-ELBO`` that is being
    optimized.

    :param float temperature: :math:`\lambda_1` of the guide's relaxation, or a
        schedule.
    :param float prior_temperature: :math:`\lambda_2` of the model's (defaults
        to the guide's), a number or a schedule.
    :param bool straight_through: hand the model hard values.

    **References**

    [1] `The Concrete Distribution: A Continuous Relaxation of Discrete Random
        Variables`, Chris J. Maddison, Andriy Mnih, Yee Whye Teh (ICLR 2017)

    [2] `Categorical Reparameterization with Gumbel-Softmax`, Eric Jang,
        Shixiang Gu, Ben Poole (ICLR 2017)
    """

    def __init__(self, num_particles=1, temperature=2.0 / 3.0, prior_temperature=None, straight_through=False, **kwargs):
        super().__init__(num_particles=num_particles, **kwargs)
        self.temperature = temperature
        self.prior_temperature = prior_temperature
        self.straight_through = straight_through
        self.step_count = 0
        self._relax = True
        for value in (self.current_temperature(), self.current_prior_temperature()):
            if not value > 0:
                raise ValueError(estimator_error(self, "temperatures must be positive, got {}".format(value)))

    def current_temperature(self):
        """:math:`\\lambda_1` at the current step."""
        t = self.temperature
        return float(t(self.step_count) if callable(t) else t)

    def current_prior_temperature(self):
        """:math:`\\lambda_2` at the current step."""
        t = self.prior_temperature
        if t is None:
            return self.current_temperature()
        return float(t(self.step_count) if callable(t) else t)

    def _get_trace(self, model, guide, args, kwargs):
        if not self._relax:
            return super()._get_trace(model, guide, args, kwargs)
        relax = _RelaxGuide(self, self.current_temperature(), self.straight_through)
        guide = relax(guide)
        model = _RelaxModel(self, self.current_prior_temperature(), relax.names)(model)
        return super()._get_trace(model, guide, args, kwargs)

    def _particle_loss_and_surrogate(self, model_trace, guide_trace, update):
        elbo, surrogate_elbo = self._pathwise_terms(model_trace, guide_trace)
        return -elbo, -surrogate_elbo

    def _jit_unsupported(self):
        if callable(self.temperature) or callable(self.prior_temperature):
            return "a temperature schedule changes between steps; use a fixed temperature."
        return None

    def _after_step(self):
        self.step_count += 1

    def loss(self, model, guide, *args, **kwargs):
        """The usual estimate of the discrete ``-ELBO`` (no relaxation)."""
        self._relax = False
        try:
            return super().loss(model, guide, *args, **kwargs)
        finally:
            self._relax = True
