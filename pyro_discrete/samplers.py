# SPDX-License-Identifier: Apache-2.0
"""
Samplers: how the guide's sites are drawn, and what the estimator needs to
know about the draw.

A :class:`Sampler` is a :class:`~pyro.poutine.messenger.Messenger` that an
estimator creates anew for every trace and wraps around the guide (outside the
particle plate, so it sees distributions already broadcast to the particle and
data plates). It draws the unobserved guide sites it handles, and keeps what it
drew that the estimator's surrogate needs -- the noise of an augmentation, the
relaxed sample in log space, the enumeration dims, the weights of a set of
samples drawn without replacement -- as attributes of *itself*, keyed by site
name: nothing travels in Pyro's site dicts or on tensors. The surrogate reads
them from the :class:`~pyro_discrete.elbo.TracePair` that holds the sampler.

This module holds the samplers shared by several estimators; an estimator
family's own sampler lives in the family's module (augmentation in
:mod:`~pyro_discrete.arsm`, relaxation in :mod:`~pyro_discrete.relaxed`,
enumeration in :mod:`~pyro_discrete.expect`, ...).
"""

import torch
import torch.nn.functional as F
from pyro.distributions.score_parts import ScoreParts
from pyro.poutine.messenger import Messenger

from .util import _CATEGORICAL_TYPES, _INDEPENDENT_TYPES, _ONE_HOT_TYPES, is_sampled

__all__ = ["DetachedSampler", "IIDSampler", "Sampler", "sample_categorical"]


class Sampler(Messenger):
    """
    The interface of a sampler. Subclasses override :meth:`draw`, and where
    needed :meth:`model_handler` and :meth:`after_trace`.
    """

    #: the sampler adds batch dims left of the plates while the guide runs, so
    #: ``max_plate_nesting`` must be known before (it is guessed if not given)
    needs_plate_nesting = False

    #: model evaluations per particle (joint configurations per plate element)
    evaluations = 1

    def __init__(self, elbo=None):
        super().__init__()
        self.elbo = elbo

    def _pyro_sample(self, msg):
        if is_sampled(msg):
            self.draw(msg)

    def draw(self, msg):
        """Sets ``msg["value"]`` (and possibly ``msg["fn"]``) of an unobserved guide site, or leaves it to Pyro."""

    def prepare(self, guide, step):
        """Called before the guide runs under this sampler (``guide`` as it will run: in the particles' plate)."""

    def model_handler(self):
        """A messenger to run the model in against this sampler's guide trace, or ``None``."""
        return None

    def after_trace(self, guide_trace):
        """Called once the guide trace's log-probabilities are computed (e.g. to rewrite score parts)."""


class IIDSampler(Sampler):
    """
    Independent samples from the guide. Unobserved ``Categorical`` and
    ``OneHotCategorical`` sites (also under ``.to_event``) are drawn by
    inverting the cumulative distribution function, computed once on the
    *compact* parameters: the dims that plates broadcast (stride 0, e.g. the
    vectorized particles) are not repeated. Torch samples an expanded
    categorical row by row (a softmax over the broadcast logits, then
    ``torch.multinomial`` on every row), which at 10 particles costs several
    times the rest of the guide. The samples have the site's distribution
    exactly; only the use of the random stream differs from ``fn.sample()``.
    Every other site, and sites with ``sample_shape`` arguments, are left to
    Pyro.
    """

    def draw(self, msg):
        if msg["args"] or msg["kwargs"]:
            return
        fn = msg["fn"]
        base = fn.base_dist if type(fn) in _INDEPENDENT_TYPES else fn
        if type(base) in _ONE_HOT_TYPES:
            categorical = base._categorical
            index = sample_categorical(categorical)
            msg["value"] = F.one_hot(index, categorical._num_events).to(categorical._param.dtype)
        elif type(base) in _CATEGORICAL_TYPES:
            msg["value"] = sample_categorical(base)


class DetachedSampler(IIDSampler):
    """
    Also draws every reparameterizable guide site, *without* a gradient path
    (``fn.sample()``, detached as it is drawn, so that later guide sites keep
    no graph through it), and has the estimator treat it like a
    non-reparameterizable site: its ``score_function`` becomes its unscaled
    log-density and its ``entropy_term`` zero. Used by the log-variance loss
    for continuous sites (:class:`~pyro_discrete.VarGradELBO`).
    """

    def __init__(self, elbo=None):
        super().__init__(elbo)
        self.detached = set()

    def draw(self, msg):
        if getattr(msg["fn"], "has_rsample", False):
            msg["value"] = msg["fn"].sample(*msg["args"], **msg["kwargs"]).detach()
            self.detached.add(msg["name"])
        else:
            super().draw(msg)

    def after_trace(self, guide_trace):
        for name in self.detached:
            site = guide_trace.nodes[name]
            site["score_parts"] = ScoreParts(
                log_prob=site["log_prob"], score_function=site["unscaled_log_prob"], entropy_term=0.0
            )


def _compact(tensor, batch_dims):
    # a view of ``tensor`` without the repetitions of its broadcast (stride-0) batch dims
    for dim in range(batch_dims):
        if tensor.stride(dim) == 0 and tensor.size(dim) > 1:
            tensor = tensor.narrow(dim, 0, 1)
    return tensor


def sample_categorical(categorical):
    """
    One draw of the indices of a :class:`torch.distributions.Categorical`
    (of its ``batch_shape``), by inversion of the CDF of the compact
    probabilities. The CDF is normalized by its last entry, which is then
    exactly 1, so a uniform in [0, 1) never selects a category of probability 0.
    """
    batch_dims = len(categorical.batch_shape)
    if "probs" in categorical.__dict__:
        probs = _compact(categorical.probs.detach(), batch_dims)
    else:
        probs = _compact(categorical.logits.detach(), batch_dims).softmax(-1)
    cdf = probs.cumsum(-1)
    cdf = cdf[..., :-1] / cdf[..., -1:]
    u = torch.rand(categorical.batch_shape + (1,), dtype=cdf.dtype, device=cdf.device)
    return (cdf <= u).sum(-1)
