# SPDX-License-Identifier: Apache-2.0
"""
Running a guide and the model against it: traces, log-probabilities, checks.

:func:`get_importance_traces` is :func:`pyro.infer.enum.get_importance_trace`
with one change, a fused log-density for observed ``Independent(Bernoulli)``
sites (:func:`fused_log_prob`). A :class:`~pyro_discrete.DiscreteELBO` runs it
under its :class:`~pyro_discrete.samplers.Sampler` and checks, with the
functions here, what the estimators need: every latent model site has a guide
site (:func:`check_model_guide`), and every ``infer`` option that Pyro defines
is honored or warned about (:func:`check_infer_keys`).
"""

import warnings

import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.distributions.util import is_identically_zero, scale_and_mask
from pyro.infer.enum import get_importance_trace
from pyro.infer.util import is_validation_enabled
from pyro.ops.provenance import get_provenance
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites
from pyro.util import check_model_guide_match, check_site_shape, warn_if_inf, warn_if_nan
from torch.distributions import Independent
from torch.distributions.utils import _sum_rightmost

from .errors import EstimatorError, estimator_error
from .util import _BERNOULLI_TYPES, sample_sites

__all__ = [
    "ENUMERATION_KEYS",
    "IgnoredInferOption",
    "StructureChecks",
    "check_dims_follow_provenance",
    "check_infer_keys",
    "check_model_guide",
    "fused_log_prob",
    "get_importance_traces",
    "score_function_sites",
]

#: ``infer`` keys of Pyro's enumeration (read by :class:`~pyro.infer.TraceEnum_ELBO`)
ENUMERATION_KEYS = ("enumerate", "num_samples", "expand", "tmc")


def fused_log_prob(fn, value):
    """
    ``fn.log_prob(value)`` for an ``Independent(Bernoulli)`` distribution (a
    Bernoulli likelihood declared with ``.to_event``), computed as
    ``-sum(binary_cross_entropy_with_logits)``: the same numbers as
    :meth:`torch.distributions.Bernoulli.log_prob` followed by the event sum,
    but negated *after* the sum. Torch negates the full-size tensor first,
    which in a VAE's likelihood is a ``(particles, batch, pixels)`` temporary
    written twice per step (forward and backward). Returns ``None`` for every
    other distribution.
    """
    if not isinstance(fn, Independent) or type(fn.base_dist) not in _BERNOULLI_TYPES or not torch.is_tensor(value):
        return None
    base = fn.base_dist
    if base._validate_args:
        base._validate_sample(value)
    logits, value = torch.broadcast_tensors(base.logits, value)
    nll = F.binary_cross_entropy_with_logits(logits, value, reduction="none")
    return -_sum_rightmost(nll, fn.reinterpreted_batch_ndims)


def _compute_observed_log_probs(model_trace):
    # fill in log_prob for the observed sites that have a fused form; Pyro's
    # compute_log_prob (memoized) computes the others as usual
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or not site["is_observed"] or site["args"] or site["kwargs"]:
            continue
        log_p = fused_log_prob(site["fn"], site["value"])
        if log_p is None:
            continue
        site["unscaled_log_prob"] = log_p
        log_p = scale_and_mask(log_p, site["scale"], site["mask"])
        site["log_prob"] = log_p
        site["log_prob_sum"] = log_p.sum()
        if is_validation_enabled():
            warn_if_nan(site["log_prob_sum"], "log_prob_sum at site '{}'".format(name))
            warn_if_inf(site["log_prob_sum"], "log_prob_sum at site '{}'".format(name), allow_neginf=True)


def get_importance_traces(max_plate_nesting, model, guide, args, kwargs, guide_trace=None, with_raw=False):
    """
    Runs the guide (or takes ``guide_trace``, unpruned), then the model replayed
    against it, and computes every site's log-probability, as
    :func:`pyro.infer.enum.get_importance_trace` does. With ``with_raw`` it
    also returns the guide's trace before subsample sites are pruned (what a
    replay of the guide needs; ``None`` for a ``GuideMessenger``).
    """
    if guide_trace is None:
        if isinstance(poutine.unwrap(guide), Messenger):  # a GuideMessenger (AutoGuideMessenger)
            traces = get_importance_trace("flat", max_plate_nesting, model, guide, args, kwargs)
            return traces + (None,) if with_raw else traces
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    raw_guide_trace = guide_trace
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    if is_validation_enabled():
        check_model_guide_match(model_trace, guide_trace, max_plate_nesting)
    guide_trace = prune_subsample_sites(guide_trace)
    model_trace = prune_subsample_sites(model_trace)
    _compute_observed_log_probs(model_trace)
    model_trace.compute_log_prob()
    guide_trace.compute_score_parts()
    if is_validation_enabled():
        for trace in (model_trace, guide_trace):
            for site in trace.nodes.values():
                if site["type"] == "sample":
                    check_site_shape(site, max_plate_nesting)
    if with_raw:
        return model_trace, guide_trace, raw_guide_trace
    return model_trace, guide_trace


def score_function_sites(guide_trace):
    """
    The guide sites that need a score-function (or other non-pathwise) gradient:
    those whose ``score_parts.score_function`` is not identically zero, i.e.
    whose distribution has no ``rsample`` (or that a sampler drew detached).
    """
    return [
        (name, site)
        for name, site in sample_sites(guide_trace)
        if not site["is_observed"] and not is_identically_zero(site["score_parts"].score_function)
    ]


def check_model_guide(elbo, model_trace, guide_trace):
    """
    Every unobserved model sample site must have a guide site of the same name
    (this package does not enumerate model-only sites, unlike
    :class:`~pyro.infer.TraceEnum_ELBO`). Raises :class:`ValueError` naming the
    first site that has none.
    """
    for name, site in sample_sites(model_trace):
        if site["is_observed"] or name in guide_trace.nodes:
            continue
        raise EstimatorError(
            elbo,
            "model sample site '{}' is latent (not observed) but the guide has no "
            "site of that name, so it would be drawn from the prior with no gradient "
            "estimator. Add pyro.sample('{}', ...) to the guide, observe it with "
            "obs=..., or marginalize it with pyro.infer.TraceEnum_ELBO.".format(name, name),
            sites=(name,),
            requirement="guide_site_for_every_latent",
        )


def check_dims_follow_provenance(elbo, traces, site_dims, what):
    """
    On traces that carry provenance: every site whose log-density depends on
    one of ``site_dims``'s guide sites must vary along that site's dim, where
    the estimator laid out its values. A model that reshapes or reduces over
    that dim computes something else without any error (the values of the
    site end up along a plate dim, say); this turns it into one.

    :param dict site_dims: guide site name -> ``(dim, size)``; ``size`` 1 checks
        that the dim is there.
    :param str what: how the estimator lays the values out, for the message.
    """
    for trace in traces:
        for name, site in sample_sites(trace):
            if name in site_dims:
                continue
            log_prob = site["log_prob"]
            for parent in sorted(get_provenance(log_prob) & set(site_dims)):
                dim, size = site_dims[parent]
                if log_prob.dim() >= -dim and (size == 1 or log_prob.shape[dim] == size):
                    continue
                raise EstimatorError(
                    elbo,
                    "site '{}' depends on guide site '{}', but its log-density (shape {}) does not vary "
                    "along batch dim {}, where this estimator lays out {} the values of '{}': the model "
                    "reshapes or reduces over that dim, and would compute something else without an error. "
                    "Make it broadcast over batch dims left of its plates (e.g. Vindex(x)[..., z] instead of "
                    "x[z]).".format(name, parent, tuple(log_prob.shape), dim, what, parent),
                    sites=(parent, name),
                    requirement="left_dims_not_mixed",
                    suggest=lambda e: e.cost == "particles",
                )


class StructureChecks:
    """
    The model/guide pairs whose structure an estimator has checked (on the
    first step of each, by provenance; see :func:`check_dims_follow_provenance`).
    Pairs that cannot be hashed are checked at every step.
    """

    def __init__(self):
        self.pairs = set()

    def done(self, step):
        try:
            return (step.model, step.guide) in self.pairs
        except TypeError:
            return False

    def add(self, step):
        try:
            self.pairs.add((step.model, step.guide))
        except TypeError:
            pass


class IgnoredInferOption(UserWarning):
    """A guide site's ``infer`` option that Pyro defines and this estimator does not honor."""


def check_infer_keys(elbo, guide_trace, honored=()):
    """
    Warns, once per ELBO instance and site, about an ``infer`` option that
    Pyro defines for a guide site and that ``elbo`` does not honor: the
    enumeration options of :class:`~pyro.infer.TraceEnum_ELBO`
    (``enumerate``, ``num_samples``, ``expand``, ``tmc``) and the
    ``baseline`` options of :class:`~pyro.infer.TraceGraph_ELBO`.
    ``is_auxiliary`` is honored by every estimator (the site is scored in the
    guide only), as Pyro's ELBOs do.

    :param honored: the keys that ``elbo`` honors.
    """
    warned = elbo._warned_infer_keys
    for name, site in sample_sites(guide_trace):
        infer = site["infer"]
        if not infer or site["is_observed"]:
            continue
        for key in ENUMERATION_KEYS + ("baseline",):
            if key in honored or infer.get(key) in (None, False) or (name, key) in warned:
                continue
            warned.add((name, key))
            if key == "baseline":
                options = infer[key]
                shown = "{{{}}}".format(", ".join("'{}': ...".format(k) for k in options)) if options else "{}"
                trained = [k for k in ("nn_baseline", "baseline_value") if isinstance(options, dict) and k in options]
                advice = "it is read by TraceScoreELBO and Pyro's TraceGraph_ELBO{}".format(
                    "; the network behind its {} is not used and not trained".format(trained[0]) if trained else ""
                )
            else:
                shown = repr(infer[key])
                advice = "the site is sampled; to sum over its values use ExpectELBO or Pyro's TraceEnum_ELBO"
            warnings.warn(
                estimator_error(
                    elbo,
                    "guide site '{}' has infer={{'{}': {}}}, which this estimator ignores: {}.".format(
                        name, key, shown, advice
                    ),
                ),
                IgnoredInferOption,
                stacklevel=4,
            )
