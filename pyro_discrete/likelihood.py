# SPDX-License-Identifier: Apache-2.0
r"""
The marginal likelihood :math:`\log p(x)`, as papers on discrete latent
variable models report it (test NLL): an importance-weighted estimate with
the guide as proposal, and the exact value for models whose latents can be
enumerated.

For ``M`` samples :math:`z_m \sim q(z\mid x)`,

.. math::

    \log \hat p(x) = \log \frac1M \sum_{m=1}^M \frac{p(x, z_m)}{q(z_m\mid x)},

per element of the plates that hold every site (one estimate per data point
in a VAE; see :func:`~pyro_discrete.vimco.bound_dims`). It is the
``M``-sample bound, a lower bound in expectation that tends to
:math:`\log p(x)` as ``M`` grows. Its standard error is the delta-method one,
:math:`\sqrt{\widehat{\operatorname{Var}}(w)/M}\,/\,\bar w`, computed with the
weights rescaled by their maximum so that nothing overflows.

**References**

[1] `Importance Weighted Autoencoders`, Yuri Burda, Roger Grosse,
Ruslan Salakhutdinov (ICLR 2016)
"""

import math
from dataclasses import dataclass

import torch
from pyro import poutine
from pyro.ops.provenance import detach_provenance

from .elbo import DiscreteELBO, Step, Surrogate
from .errors import EstimatorError
from .samplers import IIDSampler
from .traces import ENUMERATION_KEYS
from .util import sample_sites
from .vimco import bound_dims, log_weights

__all__ = ["LogLikelihood", "exact_log_likelihood", "log_likelihood"]


@dataclass
class LogLikelihood:
    """
    :ivar per_element: :math:`\\log \\hat p(x)` per element of the bound plates
        (a tensor; a scalar for a model without such plates).
    :ivar se: its standard error, per element.
    :ivar float total: the sum over elements.
    :ivar float total_se: its standard error (elements are independent).
    :ivar int num_samples: ``M``.
    """

    per_element: torch.Tensor
    se: torch.Tensor
    total: float
    total_se: float
    num_samples: int

    @property
    def mean(self):
        """The mean over elements (the per-data-point log-likelihood papers report)."""
        return self.total / max(1, self.per_element.numel())

    @property
    def mean_se(self):
        return self.total_se / max(1, self.per_element.numel())

    def __str__(self):
        return "log p(x) {:.3f} ± {:.3f} per element ({} elements, {} samples)".format(
            self.mean, self.mean_se, self.per_element.numel(), self.num_samples
        )


class _Draws(Surrogate):
    # the particles only: no gradient. Pyro's infer options change how a gradient is estimated, not what an
    # importance-weighted estimate of log p(x) is: nothing to warn about
    honored_infer_keys = ENUMERATION_KEYS + ("baseline",)


class _Sampler(DiscreteELBO):
    # draws batches of samples from the guide
    def __init__(self, num_particles, vectorize, max_plate_nesting):
        super().__init__(
            num_particles=num_particles,
            vectorize_particles=vectorize,
            max_plate_nesting=max_plate_nesting,
            sampler=IIDSampler,
            surrogate=_Draws(),
        )


def log_likelihood(
    model,
    guide,
    *args,
    num_samples=5000,
    batch_size=500,
    vectorize=True,
    max_plate_nesting=float("inf"),
    progress=False,
    **kwargs,
):
    """
    The importance-weighted estimate of :math:`\\log p(x)`, per element of the
    plates that hold every site, with its standard error (see the module's
    docstring). Draws ``num_samples`` samples from the guide, ``batch_size``
    at a time in a vectorized particle plate (``vectorize=False`` draws them
    one at a time, for models that do not broadcast over it). No parameter
    changes and no gradient is computed.

    :param bool progress: a progress bar (tqdm, if installed) over the batches.
    :returns: a :class:`LogLikelihood`.
    """
    if num_samples < 2:
        raise ValueError("log_likelihood: num_samples must be at least 2, got {}".format(num_samples))
    batch_size = max(1, min(batch_size, num_samples))
    batches = math.ceil(num_samples / batch_size)
    bar = _progress(batches, progress)
    m = s1 = s2 = None
    drawn = 0
    with torch.no_grad():
        for i in range(batches):
            size = min(batch_size, num_samples - drawn)
            sampler = _Sampler(size, vectorize and size > 1, max_plate_nesting)
            particles = sampler._draw(Step(sampler, model, guide, args, kwargs, False), for_gradient=False)
            dims = bound_dims([t for pair in particles for t in (pair.model_trace, pair.guide_trace)])
            parts = [log_weights(pair, dims) for pair in particles]
            if any(p is None for p in parts):
                raise ValueError("log_likelihood: the model and guide have no sample site")
            shape = torch.broadcast_shapes(*[p.shape[1:] for p in parts])
            log_w = torch.cat([p.expand(p.shape[:1] + shape) for p in parts]).double()
            batch_max = log_w.max(0).values
            if m is None:
                m, s1, s2 = batch_max, torch.zeros_like(batch_max), torch.zeros_like(batch_max)
            new_m = torch.maximum(m, batch_max)
            s1 = s1 * (m - new_m).exp() + (log_w - new_m).exp().sum(0)
            s2 = s2 * (2 * (m - new_m)).exp() + (2 * (log_w - new_m)).exp().sum(0)
            m = new_m
            drawn += size
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    mean_w = s1 / drawn
    var_w = (s2 / drawn - mean_w**2).clamp(min=0) * drawn / (drawn - 1)
    per_element = m + mean_w.log()
    se = (var_w / drawn).sqrt() / mean_w
    return LogLikelihood(
        per_element=per_element,
        se=se,
        total=per_element.sum().item(),
        total_se=se.pow(2).sum().sqrt().item(),
        num_samples=drawn,
    )


def _progress(total, progress):
    if not progress:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # progress is optional
        return None
    return tqdm(total=total, desc="log p(x)", leave=False)


def exact_log_likelihood(model, *args, budget=10000, **kwargs):
    """
    :math:`\\log p(x)`, exactly: the model's latent discrete sites summed over
    their (joint) supports, as :class:`~pyro_discrete.ExpectELBO` enumerates
    them, per element of the plates that hold every site. For models whose
    latents are all discrete and whose joint support (per plate element) is
    at most ``budget``.
    """
    from .expect import ExpectELBO

    elbo = ExpectELBO(budget=budget)
    # the model is its own "guide" here, with its observed sites hidden from that run
    guide = poutine.block(model, hide_fn=lambda msg: msg["is_observed"])
    with torch.no_grad():
        particles = elbo._draw(Step(elbo, model, guide, args, kwargs, False), for_gradient=False)
    (pair,) = particles.pairs
    for name, site in sample_sites(pair.guide_trace):
        if not site["is_observed"] and name not in pair.sampler.dims:
            raise EstimatorError(
                "exact_log_likelihood",
                "latent site '{}' is continuous: only discrete latents can be summed; use log_likelihood "
                "with a guide".format(name),
            )
    total = None
    for _, site in sample_sites(pair.model_trace):
        total = site["log_prob"] if total is None else total + site["log_prob"]
    dims = sorted(pair.sampler.dims.values())
    if dims:
        shape = torch.broadcast_shapes(
            total.shape, *[(pair.sampler.sizes[n],) + (1,) * (-d - 1) for n, d in pair.sampler.dims.items()]
        )
        total = total.expand(shape).logsumexp(dims)
    bound = bound_dims([pair.model_trace])
    plates = [d for d in range(-total.dim(), 0) if d not in bound]
    if plates:
        total = total.sum(plates)
    return detach_provenance(total)  # a plain tensor, whatever the enumeration tracked
