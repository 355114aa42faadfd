# SPDX-License-Identifier: Apache-2.0
r"""
The cost algebra: for each guide site, the part of ``-ELBO`` it can influence.

The cost of a guide site is its share of :math:`\log q(z) - \log p(x, z)`:
every model and guide log-probability term (scaled by subsampling and masked,
as Pyro computes them) summed over the plates that the site is *not* in and
kept per element of the plates it *is* in. Terms in other elements of the
site's plates are conditionally independent of it and are left out, which is
what makes score-function estimators usable with data plates (plate-level
Rao-Blackwellization [1]). With ``track_dependencies`` only the terms whose
value depends on the site, found by provenance tracking as in
:class:`pyro.infer.TraceGraph_ELBO` [2], are kept.

**References**

[1] `Gradient Estimation Using Stochastic Computation Graphs`,
John Schulman, Nicolas Heess, Theophane Weber, Pieter Abbeel (2015)

[2] `Nonstandard Interpretations of Probabilistic Programs for Efficient Inference`,
David Wingate, Noah Goodman, Andreas Stuhlmüller, Jeffrey Siskind (2011)
"""

import torch
from pyro.ops.provenance import detach_provenance, get_provenance

from .util import sample_sites

__all__ = ["broadcast_cost", "cost_terms", "cost_to_frames", "site_costs", "site_scale", "vectorized_frames"]


def vectorized_frames(site):
    """``frozenset`` of ``(name, dim)`` of the site's vectorized plates."""
    # hashing Pyro's frames themselves (CondIndepStackFrame._key) enters a context manager per call
    return frozenset((f.name, f.dim) for f in site["cond_indep_stack"] if f.vectorized)


def cost_terms(model_trace, guide_trace, track_dependencies=False, detach=True, weights=None):
    """
    The terms of ``log q - log p`` (detached, unless ``detach=False``), added
    up per set of vectorized plates they live in (and, with
    ``track_dependencies``, per provenance): a dict from that key to a tensor.
    See :func:`cost_to_frames`.

    :param weights: with some guide sites enumerated, their
        :class:`~pyro_discrete.expect.EnumerationWeights`: each term is weighted
        by the guide probability of the configurations it depends on.
    """
    groups = {}
    for trace, negate in ((model_trace, True), (guide_trace, False)):
        for _, site in sample_sites(trace):
            log_prob = site["log_prob"]
            if track_dependencies:
                provenance = get_provenance(log_prob)
                log_prob = detach_provenance(log_prob)
            if detach:
                log_prob = log_prob.detach()
            key = vectorized_frames(site)
            if weights is not None:  # kept apart per enumerated dims, to be summed over those a site does not have
                log_prob = weights.weigh(log_prob, detach=detach)
                key = key | weights.frames(log_prob)
            if track_dependencies:
                key = (key, provenance)
            previous = groups.get(key)
            if previous is None:
                groups[key] = -log_prob if negate else log_prob
            else:
                groups[key] = previous - log_prob if negate else previous + log_prob
    return groups


def cost_to_frames(groups, site, track_dependencies=False, widened=frozenset(), enumerated=frozenset()):
    """
    The share of the terms of :func:`cost_terms` that ``site`` can influence:
    every term summed over the plates the site is not in. Returns a tensor, or
    ``None`` when no term depends on the site.

    :param widened: ``(plate name, dim)`` frames of the site over which its
        cost is summed too, because terms in one element of that plate depend
        on the site's value in other elements (found by
        :mod:`~pyro_discrete.structure`).
    :param enumerated: the frames of the enumerated dims the site's own
        log-density varies along (:meth:`~pyro_discrete.expect.EnumerationWeights.frames`):
        its cost is summed over the others.
    """
    name = site["name"]
    target = (vectorized_frames(site) - widened) | enumerated
    cost = None
    for key, value in groups.items():
        if track_dependencies:
            key, provenance = key
            if name not in provenance:
                continue
        for _, dim in key - target:
            if value.dim() >= -dim and value.shape[dim] != 1:
                value = value.sum(dim, keepdim=True)
        cost = value if cost is None else cost + value
    return cost


def broadcast_cost(cost, shape):
    """A cost from :func:`cost_to_frames` (leading size-1 dims dropped) broadcast to ``shape``."""
    while cost.dim() > len(shape) and cost.shape[0] == 1:
        cost = cost.squeeze(0)
    if cost.shape == shape:
        return cost
    if cost.dim() <= len(shape) and all(c in (1, s) for c, s in zip(reversed(cost.shape), reversed(shape))):
        return cost.expand(shape)
    return cost.expand(torch.broadcast_shapes(cost.shape, shape))


def site_shape(site):
    """The shape of a guide site's score function (its batch shape, as Pyro scores it)."""
    score_function = site["score_parts"].score_function
    return score_function.shape if torch.is_tensor(score_function) else site["log_prob"].shape


def site_costs(model_trace, guide_trace, names, track_dependencies=False, groups=None, widened=None, weights=None):
    """
    The cost that each named guide site can influence, per particle and per
    element of the site's plates, detached and broadcast to the shape of the
    site's score function.

    :param list names: names of guide sites.
    :param dict groups: the :func:`cost_terms` of the traces, when already computed.
    :param widened: ``f(name)``, the frames over which a site's cost is summed
        too (see :func:`cost_to_frames`); default none.
    :param weights: with some guide sites enumerated, their
        :class:`~pyro_discrete.expect.EnumerationWeights`: a cost is summed over
        the enumerated dims the site's own log-density does not vary along,
        which makes it the expectation over those sites.
    :returns: dict from name to a detached tensor.
    """
    if not names:
        return {}
    if groups is None:
        groups = cost_terms(model_trace, guide_trace, track_dependencies, weights=weights)
    costs = {}
    for name in names:
        site = guide_trace.nodes[name]
        enumerated = frozenset() if weights is None else weights.frames(site["log_prob"])
        widened_frames = frozenset() if widened is None else widened(name)
        cost = cost_to_frames(groups, site, track_dependencies, widened_frames, enumerated)
        shape = site_shape(site)
        costs[name] = site["log_prob"].new_zeros(shape) if cost is None else broadcast_cost(cost, shape)
    return costs


def site_scale(site):
    """A site's subsampling scale as a float, or ``None`` when it is a tensor or zero."""
    scale = site["scale"]
    if torch.is_tensor(scale):
        return None
    scale = float(scale)
    return scale if scale != 0.0 else None
