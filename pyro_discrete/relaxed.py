# SPDX-License-Identifier: Apache-2.0
"""
The Concrete (Gumbel-softmax) relaxation of discrete sites.
"""

import math

import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution
from pyro.poutine.messenger import Messenger
from torch.distributions import Independent, constraints
from torch.distributions.relaxed_categorical import ExpRelaxedCategorical

from .elbo import DiscreteELBO, Surrogate
from .errors import EstimatorError
from .samplers import IIDSampler, Sampler
from .straight_through import StraightThroughSampler
from .structure import UNMASKED
from .util import BERNOULLI, CATEGORICAL, CONTINUOUS, ONEHOT, innermost_distribution, latent_shape, site_kind

__all__ = ["Pathwise", "RelaxedConcreteELBO", "RelaxedSampler", "exponential_decay"]


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
    A relaxed site as Pyro sees it: its value is the relaxed sample in the
    simplex (or (0, 1)), or a hard one with straight-through gradients; its
    density is that of the sample in log / logit space (``latent``, given at
    construction), so that it never underflows.
    """

    arg_constraints = {}
    support = constraints.real
    has_rsample = True

    def __init__(self, latent_dist, latent, value, batch_shape, event_shape):
        self.latent_dist, self.latent, self.value = latent_dist, latent, value
        super().__init__(batch_shape, event_shape, validate_args=False)

    def rsample(self, sample_shape=torch.Size()):
        return self.value

    def log_prob(self, value):
        return self.latent_dist.log_prob(self.latent)


def _latent_distribution(fn, temperature):
    # the Concrete relaxation of a Bernoulli / OneHotCategorical site, in log / logit space
    kind = site_kind(fn)
    base = innermost_distribution(fn)
    shape = fn.batch_shape + latent_shape(fn)
    if kind == ONEHOT:
        logits = base.logits.expand(shape + base.logits.shape[-1:])
        t = torch.tensor(temperature, dtype=logits.dtype, device=logits.device)
        latent = ExpRelaxedCategorical(t, logits=logits)
    else:
        latent = _LogitRelaxedBernoulli(temperature, base.logits.expand(shape))
    if latent_shape(fn):
        latent = Independent(latent, len(latent_shape(fn)))
    return latent


class RelaxedSampler(Sampler):
    """
    Replaces every Bernoulli and OneHotCategorical guide site (``.to_event``
    included) by its Concrete relaxation at the guide temperature, drawn in
    log / logit space, and keeps the log-space samples in :attr:`latents`;
    the model's sites of the same names are relaxed at the prior temperature
    and scored at the same log-space samples (:meth:`model_handler`).
    """

    def __init__(self, elbo):
        super().__init__(elbo)
        self.temperature = elbo.current_temperature()
        self.prior_temperature = elbo.current_prior_temperature()
        self.straight_through = elbo.straight_through
        #: guide site name -> the log-space sample of its relaxation, filled as the guide runs (logits of the
        #: site's value shape for a Bernoulli site, log-probabilities ``(..., C)`` for a OneHotCategorical one),
        #: with its gradient to the guide's parameters; the model's site of the same name is scored at it
        self.latents = {}

    def draw(self, msg):
        fn = msg["fn"]
        if site_kind(fn) not in (BERNOULLI, ONEHOT):
            return
        latent_dist = _latent_distribution(fn, self.temperature)
        latent = latent_dist.rsample()
        soft = latent.exp() if site_kind(fn) == ONEHOT else torch.sigmoid(latent)
        if self.straight_through:
            if site_kind(fn) == ONEHOT:
                hard = F.one_hot(latent.argmax(-1), latent.shape[-1]).to(soft.dtype)
            else:
                hard = (latent > 0).to(soft.dtype)
            value = hard + (soft - soft.detach())
        else:
            value = soft
        msg["fn"] = _RelaxedSite(latent_dist, latent, value, fn.batch_shape, fn.event_shape)
        msg["value"] = value
        self.latents[msg["name"]] = latent

    def model_handler(self):
        return _RelaxModel(self)


class _RelaxModel(Messenger):
    # scores the model's relaxed sites at the guide's log-space samples
    def __init__(self, sampler):
        super().__init__()
        self.sampler = sampler

    def _pyro_sample(self, msg):
        latent = self.sampler.latents.get(msg["name"])
        if latent is None or msg["is_observed"]:
            return
        fn = msg["fn"]
        latent_dist = _latent_distribution(fn, self.sampler.prior_temperature)
        msg["fn"] = _RelaxedSite(latent_dist, latent, msg["value"], fn.batch_shape, fn.event_shape)


class Pathwise(Surrogate):
    """
    The surrogate of a fully reparameterized guide: ``-surrogate ELBO``
    (every model term and each guide site's ``entropy_term``), averaged over
    particles.
    """

    assumes = frozenset([UNMASKED])

    site_kinds = frozenset([BERNOULLI, ONEHOT, CONTINUOUS])

    def check_site(self, elbo, name, site):
        if site_kind(site["fn"]) == CATEGORICAL:
            raise EstimatorError(
                elbo,
                "guide site '{}' is a Categorical (integer index) site, which has no continuous "
                "relaxation. Declare it as OneHotCategorical (one-hot values; the model then "
                "receives one-hot vectors).".format(name),
                sites=(name,),
                requirement="site_kind",
                suggest=True,
            )
        super().check_site(elbo, name, site)

    def __call__(self, particles, step):
        _, surrogate_elbo = particles.pathwise_terms()
        return -surrogate_elbo / particles.num_particles


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
    :param straight_through: ``True``: hand the model the hard values (of the
        relaxed sample), gradients through the relaxation [2];
        ``"reinmax"``: ReinMax [3]; ``"gumbel_rao"``: Gumbel-Rao [4] with
        ``num_rao_samples`` conditional draws; ``"gapped"``: the gapped
        straight-through estimator [5] with gap ``gap``. The last three hand the model the
        exact discrete sample and score it with the discrete log-densities
        (so the value of every loss method is the discrete ``-ELBO``), see
        :mod:`~pyro_discrete.straight_through`; ReinMax is meant for
        ``temperature >= 1``.
    :param int num_rao_samples: ``K`` of Gumbel-Rao.
    :param float gap: :math:`\kappa` of GST, the margin by which the sampled
        category's perturbed logit exceeds the others (its authors' default, 1).

    **References**

    [1] `The Concrete Distribution: A Continuous Relaxation of Discrete Random
    Variables`, Chris J. Maddison, Andriy Mnih, Yee Whye Teh (ICLR 2017)

    [2] `Categorical Reparameterization with Gumbel-Softmax`, Eric Jang,
    Shixiang Gu, Ben Poole (ICLR 2017)

    [3] `Bridging Discrete and Backpropagation: Straight-Through and Beyond`,
    Liyuan Liu, Chengyu Dong, Xiaodong Liu, Bin Yu, Jianfeng Gao (NeurIPS 2023)

    [4] `Rao-Blackwellizing the Straight-Through Gumbel-Softmax Gradient
    Estimator`, Max B. Paulus, Chris J. Maddison, Andreas Krause (ICLR 2021)

    [5] `Training Discrete Deep Generative Models via Gapped Straight-Through
    Estimator`, Ting-Han Fan, Ta-Chung Chi, Alexander I. Rudnicky, Peter J.
    Ramadge (ICML 2022)
    """

    def __init__(
        self,
        num_particles=1,
        temperature=2.0 / 3.0,
        prior_temperature=None,
        straight_through=False,
        num_rao_samples=10,
        gap=1.0,
        **kwargs,
    ):
        if straight_through not in (False, True, "reinmax", "gumbel_rao", "gapped"):
            raise EstimatorError(
                self,
                "straight_through must be False, True, 'reinmax', 'gumbel_rao' or 'gapped', got {!r}".format(
                    straight_through
                ),
            )
        if not gap >= 0:
            raise EstimatorError(self, "gap must be a non-negative number, got {!r}".format(gap))
        if not isinstance(num_rao_samples, int) or num_rao_samples < 1:
            raise EstimatorError(self, "num_rao_samples must be a positive integer")
        self.temperature = temperature
        self.prior_temperature = prior_temperature
        self.straight_through = straight_through
        self.num_rao_samples = num_rao_samples
        self.gap = float(gap)
        if straight_through in ("reinmax", "gumbel_rao", "gapped"):
            # the exact sample, scored by its discrete log-density: loss() is drawn the same way
            sampler, loss_sampler = StraightThroughSampler, StraightThroughSampler
        else:
            sampler, loss_sampler = RelaxedSampler, IIDSampler
        super().__init__(
            num_particles=num_particles,
            sampler=sampler,
            loss_sampler=loss_sampler,
            surrogate=Pathwise(),
            **kwargs,
        )
        for value in (self.current_temperature(), self.current_prior_temperature()):
            if not value > 0:
                raise EstimatorError(self, "temperatures must be positive, got {}".format(value))

    def method(self):
        return "{}(straight_through={!r})".format(super().method(), self.straight_through)

    def current_temperature(self):
        """:math:`\\lambda_1` at the current step (:attr:`num_steps`)."""
        t = self.temperature
        return float(t(self.num_steps) if callable(t) else t)

    def current_prior_temperature(self):
        """:math:`\\lambda_2` at the current step."""
        t = self.prior_temperature
        if t is None:
            return self.current_temperature()
        return float(t(self.num_steps) if callable(t) else t)

    def _jit_unsupported(self):
        if callable(self.temperature) or callable(self.prior_temperature):
            return "a temperature schedule changes between steps; use a fixed temperature."
        return super()._jit_unsupported()

    @property
    def step_count(self):
        """Gradient steps taken (what a temperature schedule reads); the same as :attr:`num_steps`."""
        return self.num_steps
