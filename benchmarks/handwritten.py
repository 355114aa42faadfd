# SPDX-License-Identifier: Apache-2.0
"""
Hand-written PyTorch training steps of each estimator on the tutorial VAE
(:class:`bench_common.DiscreteVAE`): the references the Pyro estimators are timed
against. Each does the arithmetic its estimator does -- the same samples per
step, the same network evaluations, the same loss (-ELBO summed over the batch,
averaged over samples) -- with no effect handlers and one ``torch.optim.Adam``.

Categorical samples are drawn with the package's ``sample_categorical`` (the
inverse CDF that the estimators use, faster than ``torch.multinomial``), and
ARSM's pseudo-actions and logit gradient use ``_pseudo_actions`` and
``_logit_gradient``: all plain PyTorch functions, so the comparison measures
what running through Pyro costs, not two implementations of the math.
"""

import itertools
import math

import torch
import torch.nn.functional as F
from torch.distributions import Dirichlet
from torch.distributions.relaxed_categorical import ExpRelaxedCategorical

from pyro_discrete.arsm import _logit_gradient, _pseudo_actions
from pyro_discrete.samplers import sample_categorical


def _log_lik(vae, z, x):
    """log p(x | z) per sample and data point (Bernoulli pixels)."""
    logits = vae.decode(z)
    shape = torch.broadcast_shapes(logits.shape, x.shape)
    return -F.binary_cross_entropy_with_logits(logits.expand(shape), x.expand(shape), reduction="none").sum(-1)


def _log_prior(vae):
    return -vae.latents * math.log(vae.categories)


def _sample_onehot(logits, num_samples):
    with torch.no_grad():
        categorical = torch.distributions.Categorical(logits=logits)
        idx = sample_categorical(categorical.expand((num_samples,) + categorical.batch_shape))
        return F.one_hot(idx, logits.shape[-1]).to(logits.dtype)


def score_loss(vae, x, num_samples, baseline="loo"):
    """Score function; ``baseline`` "loo" (leave-one-out) or None (Pyro's Trace_ELBO)."""
    logits = vae.encode(x)
    log_probs = logits.log_softmax(-1)
    z = _sample_onehot(logits, num_samples)  # (S, B, K, C)
    log_q = (z * log_probs).sum((-1, -2))
    log_lik = _log_lik(vae, z, x)
    cost = (log_q - log_lik - _log_prior(vae)).detach()
    if baseline == "loo":
        cost = cost - (cost.sum(0, keepdim=True) - cost) / (num_samples - 1)
    return ((log_q * cost).sum() - log_lik.sum()) / num_samples


def vargrad_loss(vae, x, num_samples):
    """Half the variance over samples of log q - log p (detached samples), plus the decoder's -log p."""
    logits = vae.encode(x)
    z = _sample_onehot(logits, num_samples)
    log_q = (z * logits.log_softmax(-1)).sum((-1, -2))
    log_lik = _log_lik(vae, z, x)
    d = log_q - (log_lik + _log_prior(vae)).detach()
    variance = 0.5 * (d - d.mean(0)).pow(2).sum(0) / (num_samples - 1)
    return variance.sum() - log_lik.sum() / num_samples


def arsm_loss(vae, x, num_samples=1):
    """ARSM (one sample): C(C-1)/2 swap rows evaluated without gradient, shared by the K latents."""
    logits = vae.encode(x)  # (B, K, C)
    log_probs = logits.log_softmax(-1)
    with torch.no_grad():
        noise = Dirichlet(torch.ones_like(logits)).sample()  # (B, K, C)
        index = (noise.log() - logits).argmin(-1)
        z = F.one_hot(index, vae.categories).to(logits.dtype)
        rows = _pseudo_actions("onehot", noise, logits)  # (E, B, K, C)
        f_rows = (rows * log_probs).sum((-1, -2)) - _log_lik(vae, rows, x) - _log_prior(vae)
    log_lik = _log_lik(vae, z, x)
    f_true = ((z * log_probs).sum((-1, -2)) - log_lik - _log_prior(vae)).detach()
    grad = _logit_gradient("onehot", noise, logits, z, f_true, f_rows, "disarm")
    return (grad.detach() * logits).sum() - log_lik.sum()


def concrete_loss(vae, x, num_samples, temperature=0.5, prior_temperature=None):
    """Concrete relaxation in log space (ExpConcrete): relaxed -ELBO."""
    logits = vae.encode(x)
    q = ExpRelaxedCategorical(logits.new_tensor(temperature), logits=logits)
    prior_t = temperature if prior_temperature is None else prior_temperature
    p = ExpRelaxedCategorical(logits.new_tensor(prior_t), logits=torch.zeros_like(logits))
    y = q.rsample((num_samples,))  # (S, B, K, C)
    elbo = _log_lik(vae, y.exp(), x) + (p.log_prob(y) - q.log_prob(y)).sum(-1)
    return -elbo.sum() / num_samples


def expect_loss(vae, x, num_samples=1):
    """Exact expectation over the C**K joint configurations."""
    logits = vae.encode(x)
    log_probs = logits.log_softmax(-1)  # (B, K, C)
    K, C = vae.latents, vae.categories
    codes = torch.tensor(list(itertools.product(range(C), repeat=K)), device=x.device)  # (N, K)
    z = F.one_hot(codes, C).to(logits.dtype).unsqueeze(1)  # (N, 1, K, C)
    log_q = (z * log_probs).sum((-1, -2))  # (N, B)
    elbo = (log_q.exp() * (_log_lik(vae, z, x) + _log_prior(vae) - log_q)).sum()
    return -elbo


LOSSES = {
    "loo": lambda vae, x, s: score_loss(vae, x, s, "loo"),
    "score": lambda vae, x, s: score_loss(vae, x, s, None),
    "vargrad": vargrad_loss,
    "arsm": arsm_loss,
    "concrete": concrete_loss,
    "expect": expect_loss,
}


def make_step(name, vae, lr=1e-3):
    """A zero-argument-but-batch step function: Adam on the hand-written loss."""
    optimizer = torch.optim.Adam(vae.parameters(), lr=lr)
    loss_fn = LOSSES[name]

    def step(x, num_samples):
        optimizer.zero_grad()
        loss = loss_fn(vae, x, num_samples)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step
