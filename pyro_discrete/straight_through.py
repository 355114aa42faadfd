# SPDX-License-Identifier: Apache-2.0
r"""
Straight-through estimators that hand the model the exact discrete sample:
ReinMax, Gumbel-Rao and the gapped straight-through estimator
(``RelaxedConcreteELBO(straight_through="reinmax" | "gumbel_rao" | "gapped")``).

The site's value is the hard sample :math:`D \sim q` with a surrogate
gradient, :math:`\hat D = D + S - \operatorname{stopgrad}(S)`, and both the
guide and the model score it with the categorical log-density extended
linearly, :math:`\log q(\hat D) = \sum_c \hat D_c \log \pi_c` (Bernoulli:
:math:`\hat b\log\sigma(a) + (1-\hat b)\log\sigma(-a)`). So the value of every
loss method is the ordinary discrete ``-ELBO`` at the sample, and only the
gradient is straight-through (biased; the bias is measured in
``benchmarks/results/relaxation_bias.md``).

* ReinMax [1]: :math:`\pi_0 = \operatorname{softmax}(\theta)`,
  :math:`\pi_1 = \tfrac12(D + \operatorname{softmax}(\theta/\tau))`,
  :math:`S = 2\pi_1' - \tfrac12\pi_0`, where :math:`\pi_1'` has the value of
  :math:`\pi_1` and the softmax Jacobian at :math:`\pi_1`; a second-order
  (Heun) correction of straight-through that needs no Hessian. The sample is
  drawn from the untempered :math:`\pi_0`; :math:`\tau \ge 1` is what its
  authors use.
* Gumbel-Rao [2]: :math:`S = \frac1K\sum_k \operatorname{softmax}((\theta + G_k)/\tau)`
  with :math:`G_k` Gumbel noise drawn conditionally on
  :math:`\arg\max(\theta + G_k) = D` (in log space, held fixed: the
  Rao-Blackwellization of straight-through Gumbel-softmax; ``K = 1`` is that
  estimator).
* Gapped straight-through (GST) [3]: :math:`S = \operatorname{softmax}((\theta + \delta)/\tau)`
  with a deterministic perturbation :math:`\delta` (held fixed) that makes
  the sampled category :math:`d` the largest perturbed logit by at least the
  gap :math:`\kappa`, moving the logits no more than that needs:
  :math:`\delta_d = \max_c\theta_c - \theta_d` and, for :math:`c \ne d`,
  :math:`\delta_c = -\max(0,\ \theta_c - \max_{c'}\theta_{c'} + \kappa)`.
  It stands in for Gumbel-Rao's average over Gumbel noise conditioned on the
  sample, with no noise drawn at all (one softmax per latent).

**References**

[1] `Bridging Discrete and Backpropagation: Straight-Through and Beyond`,
Liyuan Liu, Chengyu Dong, Xiaodong Liu, Bin Yu, Jianfeng Gao (NeurIPS 2023)

[2] `Rao-Blackwellizing the Straight-Through Gumbel-Softmax Gradient
Estimator`, Max B. Paulus, Chris J. Maddison, Andreas Krause (ICLR 2021)

[3] `Training Discrete Deep Generative Models via Gapped Straight-Through
Estimator`, Ting-Han Fan, Ta-Chung Chi, Alexander I. Rudnicky, Peter J.
Ramadge (ICML 2022)
"""

import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution
from pyro.poutine.messenger import Messenger
from torch.distributions import constraints

from .samplers import Sampler, sample_categorical
from .util import BERNOULLI, ONEHOT, latent_shape, site_kind, site_logits

__all__ = ["StraightThroughSampler", "gapped", "gumbel_rao", "reinmax"]


def _categorical_logits(fn):
    """Logits over the last dim (a Bernoulli as two categories, 0 and 1)."""
    logits = site_logits(fn)
    if site_kind(fn) == BERNOULLI:
        logits = torch.stack([torch.zeros_like(logits), logits], -1)
    return logits


def reinmax(logits, hard, temperature):
    """The hard one-hot ``hard`` with ReinMax's gradient with respect to ``logits`` (last dim: categories)."""
    pi0 = logits.softmax(-1)
    pi1 = ((hard + (logits.detach() / temperature).softmax(-1)) / 2).detach()
    # the value of pi1, the softmax Jacobian at pi1
    pi1 = (pi1.clamp(min=torch.finfo(pi1.dtype).tiny).log() - logits).detach().add(logits).softmax(-1)
    surrogate = 2 * pi1 - pi0 / 2
    return hard + (surrogate - surrogate.detach())


def conditional_gumbels(logits, index, num_samples):
    """
    ``num_samples`` draws of the perturbed logits :math:`\\theta + G` given
    that their argmax is ``index`` (``logits.shape[:-1]``), in log space:
    ``(num_samples,) + logits.shape``. The maximum is Gumbel with location
    :math:`\\log Z`; every other coordinate a Gumbel truncated below it.
    """
    shape = (num_samples,) + logits.shape
    tiny = torch.finfo(logits.dtype).tiny
    log_e = torch.log(-torch.log(torch.rand(shape, dtype=logits.dtype, device=logits.device).clamp(min=tiny)))
    log_z = logits.logsumexp(-1, keepdim=True)
    idx = index.unsqueeze(-1).expand(shape[:-1] + (1,))
    log_e_top = log_e.gather(-1, idx)
    others = -torch.logaddexp(log_e - logits, log_e_top - log_z)
    return others.scatter(-1, idx, log_z - log_e_top)


def gumbel_rao(logits, hard, index, temperature, num_samples):
    """The hard one-hot ``hard`` with the Gumbel-Rao gradient (``num_samples`` conditional draws, held fixed)."""
    with torch.no_grad():
        noise = conditional_gumbels(logits.detach(), index, num_samples) - logits.detach()
    surrogate = ((logits + noise) / temperature).softmax(-1).mean(0)
    return hard + (surrogate - surrogate.detach())


def gapped(logits, hard, temperature, gap):
    """The hard one-hot ``hard`` with the gapped straight-through gradient (gap ``gap``)."""
    with torch.no_grad():
        theta = logits.detach()
        top = theta.max(-1, keepdim=True).values
        chosen = hard.bool()
        move = torch.where(chosen, top - theta, -(theta - top + gap).clamp(min=0))
    surrogate = ((logits + move) / temperature).softmax(-1)
    return hard + (surrogate - surrogate.detach())


class _LinearSite(TorchDistribution):
    """
    A Bernoulli or OneHotCategorical site (``.to_event`` included) scored by the
    linear extension of its log-density, so that a hard value carrying a
    surrogate gradient gets the discrete log-density and a gradient.
    """

    arg_constraints = {}
    support = constraints.real
    has_rsample = True

    def __init__(self, fn, value=None):
        self.fn, self.value = fn, value
        super().__init__(fn.batch_shape, fn.event_shape, validate_args=False)

    def rsample(self, sample_shape=torch.Size()):
        return self.value

    def log_prob(self, value):
        fn = self.fn
        logits = site_logits(fn)
        if site_kind(fn) == BERNOULLI:
            log_p = value * F.logsigmoid(logits) + (1 - value) * F.logsigmoid(-logits)
        else:
            log_p = (value * logits.log_softmax(-1)).sum(-1)
        dims = len(latent_shape(fn))
        return log_p.sum(tuple(range(-dims, 0))) if dims else log_p


class StraightThroughSampler(Sampler):
    """
    Draws every Bernoulli and OneHotCategorical guide site exactly and hands it
    on with the gradient of ReinMax, Gumbel-Rao or GST (the ELBO's
    ``straight_through``); the model's sites of the same names are scored by
    the same linear extension (:meth:`model_handler`).
    """

    def __init__(self, elbo):
        super().__init__(elbo)
        self.variant = elbo.straight_through
        self.temperature = elbo.current_temperature()
        self.num_rao_samples = elbo.num_rao_samples
        self.gap = elbo.gap
        self.names = set()

    def draw(self, msg):
        fn = msg["fn"]
        kind = site_kind(fn)
        if kind not in (BERNOULLI, ONEHOT) or msg["args"] or msg["kwargs"]:
            return
        logits = _categorical_logits(fn)
        with torch.no_grad():
            index = sample_categorical(torch.distributions.Categorical(logits=logits.detach()))
        hard = F.one_hot(index, logits.shape[-1]).to(logits.dtype)
        if self.variant == "reinmax":
            value = reinmax(logits, hard, self.temperature)
        elif self.variant == "gapped":
            value = gapped(logits, hard, self.temperature, self.gap)
        else:
            value = gumbel_rao(logits, hard, index, self.temperature, self.num_rao_samples)
        if kind == BERNOULLI:
            value = value[..., 1]
        msg["fn"] = _LinearSite(fn, value)
        msg["value"] = value
        self.names.add(msg["name"])

    def model_handler(self):
        return _LinearModel(self.names)


class _LinearModel(Messenger):
    # scores the model's sites of the sampled names by the linear extension
    def __init__(self, names):
        super().__init__()
        self.names = names

    def _pyro_sample(self, msg):
        if msg["name"] in self.names and not msg["is_observed"]:
            msg["fn"] = _LinearSite(msg["fn"])
