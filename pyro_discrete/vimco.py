# SPDX-License-Identifier: Apache-2.0
r"""
VIMCO: the multi-sample (importance-weighted) bound for guides with discrete
sites.
"""

import math

import torch
from pyro.distributions.util import is_identically_zero, scale_and_mask

from .elbo import DiscreteELBO, Surrogate
from .errors import EstimatorError
from .samplers import IIDSampler
from .util import sample_sites

__all__ = ["MultiSampleBound", "VIMCOELBO", "bound_dims", "log_weights"]

PARTICLE_PLATE = "num_particles_vectorized"


def _frames(site):
    return {(f.name, f.dim) for f in site["cond_indep_stack"] if f.vectorized and f.name != PARTICLE_PLATE}


def bound_dims(traces):
    """
    The batch dims of the plates that hold every sample site of the traces:
    their elements are independent, and each gets a bound of its own (a VAE's
    data plate). Empty when a site is outside every plate (a global latent):
    then the bound is over the whole model.
    """
    common = None
    for trace in traces:
        for _, site in sample_sites(trace):
            frames = _frames(site)
            common = frames if common is None else common & frames
    return sorted(dim for _, dim in common or ())


def _check_subsampling(elbo, traces, dims):
    # a subsampled plate inside one bound (a plate not holding every site): the bound of a subsample, scaled up,
    # estimates no bound of the whole data (log mean_k w_k is not linear in the plate's terms)
    for trace in traces:
        for name, site in sample_sites(trace):
            for f in site["cond_indep_stack"]:
                subsampled = f.full_size not in (None, f.size)
                if f.vectorized and f.name != PARTICLE_PLATE and subsampled and f.dim not in dims:
                    raise EstimatorError(
                        elbo,
                        "site '{}' is in plate '{}', subsampled ({} of {}), but not every site is in that plate, "
                        "so the plate's elements share one multi-sample bound; the bound of a subsample, scaled "
                        "up, estimates no bound of the whole data. Subsample only a plate that holds every site "
                        "(the data plate of a VAE), or optimize the ELBO.".format(name, f.name, f.size, f.full_size),
                        sites=(name,),
                        requirement="subsampled_plate_holds_every_site",
                        suggest=True,
                    )


def _scale(elbo, traces):
    # the one subsampling scale shared by every site (a multi-sample bound cannot mix scales); a tensor scale
    # (per element) is allowed when it is the same for every site
    scale, first = None, None
    for trace in traces:
        for name, site in sample_sites(trace):
            s = site["scale"]
            if not torch.is_tensor(s):
                s = torch.tensor(float(s))
            if scale is None:
                scale, first = s, name
                continue
            same = scale.shape == s.shape and torch.equal(scale, s)
            if not same and not (scale.numel() == 1 and s.numel() == 1 and scale.item() == s.item()):
                raise EstimatorError(
                    elbo,
                    "sites '{}' and '{}' have different scales (poutine.scale or subsampling of "
                    "different plates); the multi-sample bound log mean_k w_k cannot weight the terms "
                    "of one sample differently. Use one scale for every site, or optimize the ELBO.".format(
                        first, name
                    ),
                    sites=(first, name),
                    requirement="one_scale",
                    suggest=True,
                )
    if scale is None or scale.numel() == 1:
        return 1.0 if scale is None else scale.item()
    return scale


def log_weights(pair, dims, which="log_prob"):
    """
    :math:`\\log w_k = \\log p(x, z_k) - \\log q(z_k)` of every particle and
    element of the bound plates, unscaled, with its graph: a tensor whose
    first dim holds the particles, then one dim per plate up to the outermost
    of ``dims`` (the bound plates; every other dim is summed). With
    ``which="score"``: instead, the sum of the guide's score functions
    (:math:`\\log q` of the sites without a pathwise gradient), or ``None``.
    """
    keep = set(dims)
    if pair.particle_dim is not None:
        keep.add(pair.particle_dim)
    ndim = max([-d for d in keep] + [0])
    total = None
    for trace, sign in ((pair.model_trace, 1.0), (pair.guide_trace, -1.0)):
        for _, site in sample_sites(trace):
            if which == "score":
                if sign > 0 or is_identically_zero(site["score_parts"].score_function):
                    continue
                term, term_sign = site["score_parts"].score_function, 1.0
            else:
                term, term_sign = scale_and_mask(site["unscaled_log_prob"], 1.0, site["mask"]), sign
            summed = [d for d in range(-term.dim(), 0) if d not in keep]
            if summed:
                term = term.sum(summed, keepdim=True)
            if term.dim() < ndim:
                term = term.reshape((1,) * (ndim - term.dim()) + term.shape)
            term = term_sign * term
            total = term if total is None else total + term
    if total is None:
        return None
    if pair.particle_dim is None:  # one particle: a leading dim for it
        total = total.unsqueeze(0)
    return total.expand((pair.num_particles,) + total.shape[1:]) if total.shape[0] == 1 else total


def _scaled(bound, scale):
    # a bound per element, times the sites' common scale (a number, or a tensor over the bound plates)
    if not torch.is_tensor(scale):
        return bound if scale == 1.0 else scale * bound
    return bound * scale.reshape(scale.shape[max(0, scale.dim() - bound.dim()) :])


class MultiSampleBound(Surrogate):
    r"""
    The value and VIMCO surrogate of the ``K``-sample bound (see
    :class:`VIMCOELBO`); works on vectorized and looped particles alike.
    """

    def bind(self, elbo):
        if elbo.num_particles < 2:
            raise EstimatorError(
                elbo,
                "the multi-sample bound and its leave-one-out baselines need num_particles >= 2, got "
                "num_particles={}. With one particle it is the ELBO: use TraceScoreELBO.".format(elbo.num_particles),
            )

    def _weights(self, particles, which):
        """``(log_w (K, elements...), scale)``; ``log_w`` is ``None`` without any term."""
        pairs = particles.pairs
        dims = bound_dims([t for pair in pairs for t in (pair.model_trace, pair.guide_trace)])
        traces = [pairs[0].model_trace, pairs[0].guide_trace]
        _check_subsampling(particles.step.elbo, traces, dims)
        scale = _scale(particles.step.elbo, traces)
        parts = [log_weights(pair, dims, which) for pair in pairs]
        if any(p is None for p in parts):
            return None, scale
        if len(parts) == 1:
            return parts[0], scale
        shape = torch.broadcast_shapes(*[p.shape[1:] for p in parts])
        return torch.cat([p.expand(p.shape[:1] + shape) for p in parts], 0), scale

    def loss(self, particles):
        log_w, scale = self._weights(particles, "log_prob")
        if log_w is None:
            return 0.0
        bound = log_w.logsumexp(0) - math.log(log_w.shape[0])
        return -_scaled(bound, scale).sum()

    def loss_and_surrogate(self, particles, step):
        log_w, scale = self._weights(particles, "log_prob")
        if log_w is None:
            return 0.0, 0.0
        K = log_w.shape[0]
        value = log_w.detach()
        bound = value.logsumexp(0) - math.log(K)  # (elements...)
        normalized = (value - value.logsumexp(0)).exp()  # (K, elements...)
        # leave-one-out: sample k replaced by the geometric mean of the others
        others = (value.sum(0, keepdim=True) - value) / (K - 1)
        eye = torch.eye(K, dtype=torch.bool, device=value.device).reshape((K, K) + (1,) * (value.dim() - 1))
        replaced = torch.where(eye, others.unsqueeze(0), value.unsqueeze(0))  # [k, j]: j = k replaced
        loo = replaced.logsumexp(1) - math.log(K)  # (K, elements...)
        signal = (bound.unsqueeze(0) - loo).detach()
        score = self._weights(particles, "score")[0]  # log q of the sites without a pathwise gradient
        surrogate = (normalized * log_w).sum(0)
        if score is not None:
            surrogate = surrogate + (signal * score).sum(0)
        return -_scaled(bound, scale).sum(), -_scaled(surrogate, scale).sum()

    def __call__(self, particles, step):
        return self.loss_and_surrogate(particles, step)[1]


class VIMCOELBO(DiscreteELBO):
    r"""
    VIMCO [1]: the ``K``-sample importance-weighted bound

    .. math::

        \mathcal{L}_K = E\Big[\log \frac1K \sum_{k=1}^K w_k\Big],
        \qquad w_k = \frac{p(x, z_k)}{q(z_k \mid x)},

    with a gradient estimator for guides with discrete sites: every sample's
    score function gets the learning signal
    :math:`\hat{\mathcal L} - \hat{\mathcal L}_{-k}`, where
    :math:`\hat{\mathcal L}_{-k}` replaces :math:`w_k` by the geometric mean of
    the other weights (a per-sample leave-one-out baseline), and the
    normalized weights :math:`\tilde w_k` weight the pathwise part:

    .. math::

        \hat g = \sum_k \big(\hat{\mathcal L} - \hat{\mathcal L}_{-k}\big)\nabla\log q(z_k)
               + \sum_k \tilde w_k\, \nabla \log w_k,

    (reparameterizable sites contribute to :math:`\nabla\log w_k` pathwise).
    It is unbiased for :math:`\nabla\mathcal L_K`. With plates, the bound is
    kept per element of the outermost plate that holds every site (one bound
    per data point in a VAE), as Pyro's :class:`~pyro.infer.RenyiELBO` does;
    with a site outside every plate (a global latent) it is one bound for the
    whole model. Subsampling scales multiply the bounds (not the weights);
    sites with different scales are an error.

    :meth:`loss` and the value of the gradient methods are the negated bound
    :math:`-\hat{\mathcal L}_K`, which is lower than ``-ELBO`` in expectation
    (:math:`\mathcal L_K \ge \mathcal L_1 =` ELBO) and decreases toward
    ``-log p(x)`` as ``K`` grows. Particles may be vectorized (default) or
    looped.

    :param int num_particles: ``K >= 2``.

    **References**

    [1] `Variational Inference for Monte Carlo Objectives`, Andriy Mnih,
    Danilo J. Rezende (ICML 2016)

    [2] `Importance Weighted Autoencoders`, Yuri Burda, Roger Grosse,
    Ruslan Salakhutdinov (ICLR 2016)
    """

    def __init__(self, num_particles=4, **kwargs):
        super().__init__(num_particles=num_particles, sampler=IIDSampler, surrogate=MultiSampleBound(), **kwargs)
