# SPDX-License-Identifier: Apache-2.0
"""
Small helpers about sites and distributions, shared by every module.
"""

import math

import pyro.distributions
import torch
from pyro.poutine.subsample_messenger import _Subsample
from torch.distributions import Bernoulli, Categorical, Independent, OneHotCategorical

__all__ = [
    "BERNOULLI",
    "batch_dims",
    "CATEGORICAL",
    "CONTINUOUS",
    "ONEHOT",
    "OTHER",
    "innermost_distribution",
    "is_sampled",
    "latent_shape",
    "preserved_rng",
    "rng_state",
    "sample_sites",
    "site_kind",
    "set_rng_state",
    "site_logits",
    "site_masks",
    "total",
]

#: site kinds, as the registry names them
BERNOULLI, CATEGORICAL, ONEHOT, CONTINUOUS, OTHER = "bernoulli", "categorical", "onehot", "continuous", "other"


def site_masks(site):
    """The masks of a sample site: its ``poutine.mask`` and those of ``MaskedDistribution`` wrappers of its ``fn``."""
    masks = [] if site["mask"] is None else [site["mask"]]
    fn = site["fn"]
    while hasattr(fn, "base_dist"):
        if isinstance(fn, pyro.distributions.MaskedDistribution):
            masks.append(fn._mask)
        fn = fn.base_dist
    return masks


def innermost_distribution(fn):
    """The distribution under ``Independent``, ``MaskedDistribution``, ``ExpandedDistribution`` wrappers."""
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return fn


def support_size(fn):
    """
    The number of values in the joint support of one element of a discrete
    distribution (``C**K`` for ``K`` latents of ``C`` values each under
    ``.to_event``), or ``None`` when it cannot enumerate its support.
    """
    base = innermost_distribution(fn)
    if not getattr(base, "has_enumerate_support", False):
        return None
    event = tuple(fn.event_shape)
    num_latents = math.prod(event[: len(event) - len(base.event_shape)])
    return base.enumerate_support(expand=False).shape[0] ** num_latents


def sample_sites(trace):
    """Yields ``(name, site)`` for the sample sites of a trace, subsample sites excluded."""
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and not isinstance(site["fn"], _Subsample):
            yield name, site


def is_sampled(msg):
    """Whether a sample message is still to be drawn: unobserved, no value yet, not a subsample site."""
    return not msg["is_observed"] and msg["value"] is None and not isinstance(msg["fn"], _Subsample)


def site_kind(fn):
    """
    ``"bernoulli"``, ``"categorical"``, ``"onehot"`` (under any wrappers, ``.to_event``
    included), ``"continuous"`` (reparameterizable) or ``"other"``.
    """
    if getattr(fn, "has_rsample", False):
        return CONTINUOUS
    base = innermost_distribution(fn)
    if isinstance(base, OneHotCategorical):
        return ONEHOT
    if isinstance(base, Categorical):
        return CATEGORICAL
    if isinstance(base, Bernoulli):
        return BERNOULLI
    return OTHER


def latent_shape(fn):
    """The shape of the latents that a ``.to_event`` site holds (``()`` for a plain site)."""
    base_event = 1 if site_kind(fn) == ONEHOT else 0
    event = tuple(fn.event_shape)
    return event[: len(event) - base_event]


def site_logits(fn):
    """
    The logits of a Bernoulli, Categorical or OneHotCategorical site expanded to
    ``batch_shape + latent_shape`` (``+ (C,)`` for categorical kinds), with their graph.
    """
    kind = site_kind(fn)
    logits = innermost_distribution(fn).logits
    shape = fn.batch_shape + latent_shape(fn)
    if kind != BERNOULLI:
        shape = shape + logits.shape[-1:]
    return logits.expand(shape)


def batch_dims(pair):
    """The number of batch dims used by any site of a trace pair (plates and particles)."""
    dims = 0
    for trace in (pair.model_trace, pair.guide_trace):
        for _, site in sample_sites(trace):
            dims = max(dims, len(site["fn"].batch_shape))
            for frame in site["cond_indep_stack"]:
                if frame.vectorized:
                    dims = max(dims, -frame.dim)
    return dims


def total(terms):
    """The sum of a list of tensors or numbers without a leading ``0 +`` op; ``0.`` when empty."""
    if not terms:
        return 0.0
    result = terms[0]
    for term in terms[1:]:
        result = result + term
    return result


def log1mexp(x):
    """``log(1 - exp(x))`` for ``x <= 0``, stable at both ends."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


_INDEPENDENT_TYPES = (Independent, pyro.distributions.Independent)
_ONE_HOT_TYPES = (OneHotCategorical, pyro.distributions.OneHotCategorical)
_CATEGORICAL_TYPES = (Categorical, pyro.distributions.Categorical)
_BERNOULLI_TYPES = (Bernoulli, pyro.distributions.Bernoulli)


def _cuda_devices():
    return [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []


def rng_state():
    """The state of torch's CPU generator and of the current CUDA device's (when CUDA is in use)."""
    return torch.random.get_rng_state(), [(d, torch.cuda.get_rng_state(d)) for d in _cuda_devices()]


def set_rng_state(state):
    """Restores what :func:`rng_state` returned."""
    cpu, cuda = state
    torch.random.set_rng_state(cpu)
    for device, value in cuda:
        torch.cuda.set_rng_state(value, device)


def preserved_rng():
    """
    A context in which random numbers may be drawn without advancing the
    global generators (torch's CPU generator, and the current CUDA device's
    when CUDA is in use): for dry runs, such as guessing ``max_plate_nesting``,
    that must not change what the next step draws.
    """
    return torch.random.fork_rng(devices=_cuda_devices())
