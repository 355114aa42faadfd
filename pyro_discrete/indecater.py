# SPDX-License-Identifier: Apache-2.0
r"""
IndeCateR: the CatLog-derivative trick for independent categorical latents.
"""

import torch
import torch.nn.functional as F

from .costs import broadcast_cost, cost_to_frames
from .elbo import DiscreteELBO, Surrogate
from .errors import EstimatorError
from .samplers import IIDSampler
from .structure import INDEPENDENT, LEFT_DIMS, PER_ELEMENT
from .traces import score_function_sites
from .util import BERNOULLI, CATEGORICAL, CONTINUOUS, ONEHOT, latent_shape, site_kind, site_logits

__all__ = ["CatLogDerivative", "IndeCateRELBO"]


def _probabilities(fn):
    """The site's probabilities, ``batch + latent + (C,)`` (Bernoulli: ``C = 2``, values 0 and 1), with their graph."""
    logits = site_logits(fn)
    if site_kind(fn) == BERNOULLI:
        p = torch.sigmoid(logits)
        return torch.stack([1 - p, p], -1)
    return logits.softmax(-1)


def _indices(fn, value):
    """The sampled category of every latent, ``batch + latent``."""
    kind = site_kind(fn)
    if kind == ONEHOT:
        return value.argmax(-1)
    return value.long()


def _values(fn, index, num_categories, dtype):
    kind = site_kind(fn)
    if kind == ONEHOT:
        return F.one_hot(index, num_categories).to(dtype)
    if kind == BERNOULLI:
        return index.to(dtype)
    return index


class CatLogDerivative(Surrogate):
    """
    The IndeCateR surrogate: for every latent ``k`` of every discrete guide site
    and every category ``c``, the cost at the sample with latent ``k`` set to
    ``c`` (the other latents, and sites, held at the sample; one batched replay
    per trace), applied as :math:`\\sum_{k,c} q_k(c)\\,\\overline{f(x^{(k\\leftarrow c)})}`.
    """

    assumes = frozenset([INDEPENDENT, LEFT_DIMS, PER_ELEMENT])

    site_kinds = frozenset([BERNOULLI, CATEGORICAL, ONEHOT, CONTINUOUS])

    def bind(self, elbo):
        if elbo.track_dependencies:
            raise EstimatorError(elbo, "track_dependencies is not supported; costs are Rao-Blackwellized")

    def __call__(self, particles, step):
        _, surrogate_elbo = particles.pathwise_terms()
        surrogate = -surrogate_elbo
        for pair in particles:
            sites = score_function_sites(pair.guide_trace)
            if not sites:
                continue
            layouts, alternatives = {}, {}
            for name, site in sites:
                fn = site["fn"]
                probs = _probabilities(fn)
                C = probs.shape[-1]
                batch = fn.batch_shape
                K = probs[..., 0].numel() // max(1, batch.numel())
                current = _indices(fn, site["value"]).reshape(batch + (K,))  # batch + (K,)
                # the C - 1 other categories of every latent: (K, C - 1) + batch
                j = torch.arange(C - 1, device=current.device).reshape((1, C - 1) + (1,) * len(batch))
                now = current.movedim(-1, 0).unsqueeze(1)  # (K, 1) + batch
                other = j + (j >= now).long()
                eye = torch.eye(K, dtype=torch.bool, device=current.device)
                rows = torch.where(
                    eye.reshape((K, 1) + (1,) * len(batch) + (K,)),
                    other.unsqueeze(-1),
                    current.reshape((1, 1) + batch + (K,)),
                )  # (K, C - 1) + batch + (K,): latent k set to the other categories
                rows = rows.reshape((K * (C - 1),) + batch + latent_shape(fn))
                alternatives[name] = _values(fn, rows, C, probs.dtype)
                layouts[name] = (probs, current, other, K, C)
            replayed = step.replay(pair, alternatives)
            groups = pair.cost_terms()
            for name, site in sites:
                probs, current, other, K, C = layouts[name]
                batch = site["fn"].batch_shape
                f_sample = broadcast_cost(cost_to_frames(groups, site, widened=step.widened(name)), batch)  # batch
                costs = replayed[name].reshape((K, C - 1) + batch)
                table = f_sample.unsqueeze(0).unsqueeze(0).expand((K, C) + batch).clone()
                table.scatter_(1, other, costs)  # (K, C) + batch: the cost of every category of every latent
                p = probs.reshape(batch + (K, C)).movedim(-2, 0).movedim(-1, 1)  # (K, C) + batch
                surrogate = surrogate + (p * table.detach()).sum()
        return surrogate / particles.num_particles


class IndeCateRELBO(DiscreteELBO):
    r"""
    IndeCateR [1], the CatLog-derivative trick for independent latents: for a
    guide site of ``K`` independent categorical latents (``.to_event``, or
    several sites), each latent is Rao-Blackwellized by evaluating the cost at
    every one of its ``C`` categories with the other latents held at the
    sample:

    .. math::

        \hat g = \sum_{k=1}^{K}\sum_{c=1}^{C} \nabla_\theta q_k(c)\;
                 \frac1S\sum_{s=1}^S f\big(x^{(s)}_{k\leftarrow c}\big),

    where :math:`f` is the cost the site influences (its plate elements
    only). Unbiased for factorized guides: the sum over :math:`c` is exact
    and the other latents are a sample of their (independent) distribution.
    No baseline is needed, since :math:`\sum_c \nabla q_k(c) = 0`. Bernoulli
    sites are the case :math:`C = 2`:
    :math:`\hat g_{\ell_k} = \sigma'(\ell_k)\,(f(x_{k\leftarrow 1}) - f(x_{k\leftarrow 0}))`.

    A step evaluates the model at the ``S`` samples and, in one batched replay
    without gradients, at :math:`S\sum_{\text{sites}} K(C-1)` alternatives (the
    category a latent already has is the sample itself): 200 latents of 2
    categories cost 201 evaluations per sample. :meth:`loss` needs none of
    them. The model must broadcast over a batch dim left of its plates; a
    guide site that depends on a discrete site is an error (see
    :mod:`~pyro_discrete.replay`).

    :param int num_particles: ``S``, independent samples (vectorized).

    **References**

    [1] `Differentiable Sampling of Categorical Distributions Using the
    CatLog-Derivative Trick`, Lennert De Smet, Emanuele Sansone, Pedro
    Zuidberg Dos Martires (NeurIPS 2023)
    """

    def __init__(self, num_particles=1, **kwargs):
        super().__init__(num_particles=num_particles, sampler=IIDSampler, surrogate=CatLogDerivative(), **kwargs)
