# SPDX-License-Identifier: Apache-2.0
"""
The machinery shared by every estimator in :mod:`pyro_discrete`.

An estimator is split in two parts, as in the stochastic-computation-graph
literature:

* **how samples are drawn and weighted** -- the guide is run inside optional
  handlers (:meth:`DiscreteELBO._guide_handlers`): plain sampling for the
  score-function family, enumeration of the support for
  :class:`~pyro_discrete.ExpectELBO`, relaxation for the Concrete estimator;
* **how the surrogate is built** -- :meth:`DiscreteELBO._particle_loss_and_surrogate`
  turns one (vectorized) pair of traces into the value of ``-ELBO`` and a
  surrogate loss whose gradient is the estimator.

This module runs the traces (particles vectorized in an outermost plate, as
:class:`pyro.infer.Trace_ELBO` does with ``vectorize_particles=True``), checks
that the model and guide match, and computes for every guide sample site the
cost it can influence, kept per particle and per element of the plates the site
lives in (plate-level Rao-Blackwellization, [1]). With
``track_dependencies=True`` the cost of a site is further restricted to the
terms whose value depends on it, found by provenance tracking as in
:class:`pyro.infer.TraceGraph_ELBO` [2].

**References**

[1] `Gradient Estimation Using Stochastic Computation Graphs`,
    John Schulman, Nicolas Heess, Theophane Weber, Pieter Abbeel (2015)

[2] `Nonstandard Interpretations of Probabilistic Programs for Efficient Inference`,
    David Wingate, Noah Goodman, Andreas Stuhlmüller, Jeffrey Siskind (2011)
"""

import weakref

import pyro.distributions
import pyro.ops.jit
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.distributions.score_parts import ScoreParts
from pyro.distributions.util import is_identically_zero, scale_and_mask
from pyro.infer.elbo import ELBO
from pyro.infer.enum import get_importance_trace
from pyro.infer.tracegraph_elbo import TrackNonReparam
from pyro.infer.util import is_validation_enabled, torch_item
from pyro.ops.provenance import detach_provenance, get_provenance
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites
from pyro.util import check_model_guide_match, check_site_shape, warn_if_inf, warn_if_nan
from torch.distributions import Bernoulli, Independent
from torch.distributions.utils import _sum_rightmost
from pyro.poutine.subsample_messenger import _Subsample

__all__ = [
    "CategoricalSampler",
    "DiscreteELBO",
    "check_model_guide",
    "estimator_error",
    "sample_sites",
    "score_function_sites",
    "site_costs",
    "innermost_distribution",
    "sample_categorical",
    "site_scale",
]

def innermost_distribution(fn):
    """The distribution under ``Independent``, ``MaskedDistribution``, ``ExpandedDistribution`` wrappers."""
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return fn


def sample_sites(trace):
    """Yields ``(name, site)`` for the sample sites of a trace, subsample sites excluded."""
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and not isinstance(site["fn"], _Subsample):
            yield name, site


def score_function_sites(guide_trace):
    """
    The guide sites that need a score-function (or other non-pathwise) gradient:
    those whose ``score_parts.score_function`` is not identically zero, i.e.
    whose distribution has no ``rsample``.
    """
    return [
        (name, site)
        for name, site in sample_sites(guide_trace)
        if not site["is_observed"]
        and not is_identically_zero(site["score_parts"].score_function)
    ]


def site_costs(model_trace, guide_trace, names, track_dependencies=False):
    """
    The cost that each named guide site can influence, per particle and per
    element of the site's plates.

    The cost is the site's share of ``-ELBO = log q(z) - log p(x, z)``: every
    model and guide log-probability term (already scaled by subsampling and
    masked, as Pyro computes them) is summed over the plates that the guide site
    is *not* in and kept per element of the plates it *is* in. Terms in other
    elements of the site's plates are conditionally independent of it and are
    left out, which is what makes these estimators usable with data plates.
    With ``track_dependencies`` only the terms whose value depends on the site
    (by provenance, as in :class:`~pyro.infer.TraceGraph_ELBO`) are kept.

    The result is detached and broadcast to the shape of the site's batch
    (the shape of its ``score_function``).

    :param list names: names of guide sites.
    :returns: dict from name to a detached tensor.
    """
    if not names:
        return {}
    groups = cost_terms(model_trace, guide_trace, track_dependencies)
    return {
        name: _broadcast_to_site(cost_to_frames(groups, guide_trace.nodes[name], track_dependencies), guide_trace.nodes[name])
        for name in names
    }


def cost_terms(model_trace, guide_trace, track_dependencies=False):
    """
    The terms of ``log q - log p`` (detached), added up per set of vectorized
    plates they live in (and, with ``track_dependencies``, per provenance):
    a dict from that key to a tensor. See :func:`cost_to_frames`.
    """
    groups = {}
    for trace, negate in ((model_trace, True), (guide_trace, False)):
        for _, site in sample_sites(trace):
            log_prob = site["log_prob"]
            if track_dependencies:
                provenance = get_provenance(log_prob)
                log_prob = detach_provenance(log_prob)
            log_prob = log_prob.detach()
            key = _vectorized_frames(site)
            if track_dependencies:
                key = (key, provenance)
            total = groups.get(key)
            if total is None:
                groups[key] = -log_prob if negate else log_prob
            else:
                groups[key] = total - log_prob if negate else total + log_prob
    return groups


def cost_to_frames(groups, site, track_dependencies=False):
    """
    The share of the terms of :func:`cost_terms` that ``site`` can influence:
    every term summed over the plates the site is not in. Returns a tensor, or
    ``None`` when no term depends on the site.
    """
    name = site["name"]
    target = _vectorized_frames(site)
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


def _vectorized_frames(site):
    # (name, dim) of the site's vectorized plates; hashing the frames themselves
    # (CondIndepStackFrame._key) enters a context manager per call
    return frozenset((f.name, f.dim) for f in site["cond_indep_stack"] if f.vectorized)


def broadcast_cost(cost, shape):
    """A cost from :func:`cost_to_frames` (leading size-1 dims dropped) broadcast to ``shape``."""
    while cost.dim() > len(shape) and cost.shape[0] == 1:
        cost = cost.squeeze(0)
    if cost.shape == shape:
        return cost
    if cost.dim() <= len(shape) and all(c in (1, s) for c, s in zip(reversed(cost.shape), reversed(shape))):
        return cost.expand(shape)
    return cost.expand(torch.broadcast_shapes(cost.shape, shape))


def _broadcast_to_site(cost, site):
    score_function = site["score_parts"].score_function
    shape = score_function.shape if torch.is_tensor(score_function) else site["log_prob"].shape
    if cost is None:
        return site["log_prob"].new_zeros(shape)
    return broadcast_cost(cost, shape)


#: ``infer`` key set by :class:`DetachedSamples` on the sites it draws
SCORE_FUNCTION_KEY = "_pyro_discrete_score_function"


class DetachedSamples(Messenger):
    """
    Draws every reparameterizable guide sample site *without* a gradient path
    (``fn.sample()``, detached as it is drawn, so that later guide sites do not
    keep a graph through it) and marks it so that the estimator treats it like
    a non-reparameterizable site: its ``score_function`` is its unscaled
    log-density and its ``entropy_term`` is zero (see
    :func:`mark_score_function_sites`).
    """

    def _pyro_sample(self, msg):
        if msg["is_observed"] or msg["value"] is not None or isinstance(msg["fn"], _Subsample):
            return
        if getattr(msg["fn"], "has_rsample", False):
            msg["value"] = msg["fn"].sample(*msg["args"], **msg["kwargs"]).detach()
            msg["infer"] = dict(msg["infer"], **{SCORE_FUNCTION_KEY: True})


class CategoricalSampler(Messenger):
    """
    Draws unobserved ``Categorical`` and ``OneHotCategorical`` sites (also
    under ``.to_event``) by inverting the cumulative distribution function,
    computed once on the *compact* parameters: the dims that plates broadcast
    (stride 0, e.g. the vectorized particles) are not repeated.

    The samples have the site's distribution exactly; only the use of the
    random stream differs from ``fn.sample()``. Torch samples an expanded
    categorical row by row (a softmax over the broadcast logits, then
    ``torch.multinomial`` on every row), which at 10 particles costs several
    times the rest of the guide.

    Sites with a value already (observed, replayed, enumerated, drawn by an
    estimator's own sampler), with ``sample_shape`` arguments, or with any
    other distribution are left alone.
    """

    def _pyro_sample(self, msg):
        if msg["is_observed"] or msg["value"] is not None or msg["args"] or msg["kwargs"]:
            return
        fn = msg["fn"]
        base = fn.base_dist if type(fn) in _INDEPENDENT_TYPES else fn
        if type(base) in _ONE_HOT_TYPES:
            categorical = base._categorical
            index = sample_categorical(categorical)
            msg["value"] = F.one_hot(index, categorical._num_events).to(categorical._param.dtype)
        elif type(base) in _CATEGORICAL_TYPES:
            msg["value"] = sample_categorical(base)


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


_INDEPENDENT_TYPES = (Independent, pyro.distributions.Independent)
_ONE_HOT_TYPES = (torch.distributions.OneHotCategorical, pyro.distributions.OneHotCategorical)
_CATEGORICAL_TYPES = (torch.distributions.Categorical, pyro.distributions.Categorical)


def mark_score_function_sites(guide_trace):
    """Rewrites the score parts of the sites drawn by :class:`DetachedSamples`."""
    for _, site in sample_sites(guide_trace):
        if site["infer"].get(SCORE_FUNCTION_KEY):
            site["score_parts"] = ScoreParts(
                log_prob=site["log_prob"], score_function=site["unscaled_log_prob"], entropy_term=0.0
            )


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


_BERNOULLI_TYPES = (Bernoulli, pyro.distributions.Bernoulli)


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


def get_importance_traces(max_plate_nesting, model, guide, args, kwargs, guide_trace=None):
    """
    Runs the guide (or takes ``guide_trace``, unpruned), then the model replayed
    against it, and computes every site's log-probability -- as
    :func:`pyro.infer.enum.get_importance_trace` does, with the fused
    log-probability of :func:`fused_log_prob` for observed
    ``Independent(Bernoulli)`` sites.
    """
    if guide_trace is None:
        if isinstance(poutine.unwrap(guide), Messenger):  # a GuideMessenger (AutoGuideMessenger)
            return get_importance_trace("flat", max_plate_nesting, model, guide, args, kwargs)
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
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
    return model_trace, guide_trace


def site_scale(site):
    """A site's subsampling scale as a float, or ``None`` when it is a tensor or zero."""
    scale = site["scale"]
    if torch.is_tensor(scale):
        return None
    scale = float(scale)
    return scale if scale != 0.0 else None


def estimator_error(elbo, message):
    """Prefix an error message with the estimator's name."""
    return "{}: {}".format(type(elbo).__name__, message)


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
        raise ValueError(
            estimator_error(
                elbo,
                "model sample site '{}' is latent (not observed) but the guide has no "
                "site of that name, so it would be drawn from the prior with no gradient "
                "estimator. Add pyro.sample('{}', ...) to the guide, observe it with "
                "obs=..., or marginalize it with pyro.infer.TraceEnum_ELBO.".format(name, name),
            )
        )


def _hashable(value):
    try:
        hash(value)
        return ("value", value)
    except TypeError:
        return ("id", id(value))


def _compile(elbo, model, guide, update, template):
    # pyro.ops.jit.trace handles the parameters (traced as inputs, read from
    # the param store on every call); the closure holds the ELBO weakly.
    # ``template``: the positional arguments, None where a tensor goes.
    weak_elbo = weakref.ref(elbo)

    def loss_and_surrogate(*tensors, **kwargs):
        tensors = iter(tensors)
        args = tuple(next(tensors) if a is None else a for a in template)
        loss, surrogate = weak_elbo()._traced_loss_and_surrogate(model, guide, args, kwargs, update)
        if not torch.is_tensor(surrogate):  # no parameter to differentiate; a traced function returns tensors
            surrogate = loss.new_zeros(())
        return loss, surrogate

    return pyro.ops.jit.trace(loss_and_surrogate, ignore_warnings=elbo.ignore_jit_warnings, jit_options=elbo.jit_options)


def _total(terms):
    """The sum of a list of tensors or numbers without a leading ``0 +`` op; ``0.`` when empty."""
    if not terms:
        return 0.0
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


class DiscreteELBO(ELBO):
    """
    Base class of the ELBO implementations in :mod:`pyro_discrete`.

    It provides Pyro's ELBO interface -- :meth:`loss`, :meth:`loss_and_grads`,
    :meth:`differentiable_loss` and ``__call__`` -- with the conventions of
    :class:`~pyro.infer.Trace_ELBO`: every method's value is an estimate of
    ``-ELBO`` averaged over particles, and the gradient of
    :meth:`differentiable_loss` (and the gradients left by
    :meth:`loss_and_grads`) is the estimator of the subclass.

    Subclasses implement :meth:`_particle_loss_and_surrogate` and may wrap the
    guide with handlers (:meth:`_guide_handlers`).

    :param int num_particles: number of particles (samples of the guide) per
        estimate.
    :param max_plate_nesting: bound on the number of nested plates; guessed
        from one run of the model and guide when not given.
    :param bool vectorize_particles: draw the particles in one vectorized run,
        in an outermost plate named ``"num_particles_vectorized"`` (default
        ``True``, unlike Pyro's ELBOs, because leave-one-out baselines need
        all particles at once).
    :param bool track_dependencies: restrict each site's cost to the terms
        that depend on it (provenance tracking, as in
        :class:`~pyro.infer.TraceGraph_ELBO`). Lower variance for guides with
        many sites, at some cost in time. Default ``False``: costs are still
        Rao-Blackwellized by plates.
    :param bool jit_compile: compile the step with :func:`pyro.ops.jit.trace`
        (``torch.jit.trace``), as :class:`~pyro.infer.JitTrace_ELBO` does, once
        per model, guide and shapes of the tensor arguments. It removes part of
        Pyro's per-step Python work, which pays at small steps (tutorial VAE,
        batch 64: 1.04-1.06x the hand-written step instead of 1.07-1.08x,
        1.14-1.15x through SVI instead of 1.19-1.21x) but not at large ones
        (batch 1024: 1.05-1.06x instead of 1.01-1.02x), and the compiled graph
        holds about 7% more memory at batch 64 (``benchmarks/results/grid_jit.md``).
        The same limits as
        ``JitTrace_ELBO``: the model and guide must have a static structure and
        take their tensors as positional arguments, and must be the same
        objects (or equal bound methods) from step to step. Estimators that
        keep state between steps (a moving-average baseline, a temperature
        schedule) refuse it. ``torch.jit.trace`` is deprecated from torch 2.13
        (it warns, as does Pyro's ``JitTrace_ELBO``); the ``TracerWarning`` s
        about shape comparisons are harmless here, since shapes are part of the
        key (``ignore_jit_warnings=True`` silences them).
    """

    def __init__(
        self,
        num_particles=1,
        max_plate_nesting=float("inf"),
        vectorize_particles=True,
        track_dependencies=False,
        jit_compile=False,
        **kwargs,
    ):
        if not isinstance(num_particles, int) or num_particles < 1:
            raise ValueError(
                "{}: num_particles must be a positive integer, got {!r}".format(
                    type(self).__name__, num_particles
                )
            )
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            **kwargs,
        )
        self.track_dependencies = track_dependencies
        self.jit_compile = jit_compile
        if jit_compile and track_dependencies:
            raise ValueError(
                estimator_error(
                    self,
                    "jit_compile=True cannot trace the provenance tracking of track_dependencies=True; "
                    "use one or the other.",
                )
            )
        self._compiled = {}

    # ------------------------------------------------------------------
    # How samples are drawn
    # ------------------------------------------------------------------
    def _guide_handlers(self):
        """
        Messengers to run the guide in, outermost last; each is created anew
        for every trace. The particle plate is inside them, so they see
        distributions already broadcast to the particle and data plates.
        """
        return ()

    def _particle_dim(self):
        """The batch dim (negative) of the vectorized particles, or ``None``."""
        if self.vectorize_particles and self.num_particles > 1:
            return -self.max_plate_nesting
        return None

    def _get_trace(self, model, guide, args, kwargs):
        for handler in self._guide_handlers():
            guide = handler(guide)
        guide = CategoricalSampler()(guide)
        if self.track_dependencies:
            with TrackNonReparam():
                model_trace, guide_trace = get_importance_traces(self.max_plate_nesting, model, guide, args, kwargs)
        else:
            model_trace, guide_trace = get_importance_traces(self.max_plate_nesting, model, guide, args, kwargs)
        check_model_guide(self, model_trace, guide_trace)
        mark_score_function_sites(guide_trace)
        return model_trace, guide_trace

    def _get_traces(self, model, guide, args, kwargs):
        if self.max_plate_nesting == float("inf"):
            self._guess_max_plate_nesting(model, guide, args, kwargs)
        return super()._get_traces(model, guide, args, kwargs)

    # ------------------------------------------------------------------
    # How the surrogate is built
    # ------------------------------------------------------------------
    def _particle_loss(self, model_trace, guide_trace):
        """``-ELBO`` summed over the particles of one trace pair (no gradient needed)."""
        elbo = 0.0
        for _, site in sample_sites(model_trace):
            elbo = elbo + site["log_prob_sum"]
        for _, site in sample_sites(guide_trace):
            elbo = elbo - site["log_prob_sum"]
        return -detach_provenance(elbo) if torch.is_tensor(elbo) else -elbo

    def _particle_loss_and_surrogate(self, model_trace, guide_trace, update):
        """
        Returns ``(loss, surrogate_loss)`` for one trace pair, both summed over
        the particles in it: ``loss`` is ``-ELBO``, the gradient of
        ``surrogate_loss`` is the estimator. ``update`` says whether the
        estimator's state (a moving-average baseline, a temperature schedule)
        may advance after this step.
        """
        raise NotImplementedError

    def _pathwise_terms(self, model_trace, guide_trace):
        """
        ``(elbo, surrogate_elbo)``: the ELBO of a trace pair, and the part of
        the surrogate that carries pathwise gradients -- every model term, and
        each guide site's ``entropy_term`` (``log q`` for reparameterized sites,
        zero for the others, whose gradient comes from their estimator).
        """
        model_terms = [site["log_prob_sum"] for _, site in sample_sites(model_trace)]
        guide_terms = []
        entropy_terms = []
        for _, site in sample_sites(guide_trace):
            guide_terms.append(site["log_prob_sum"])
            entropy_term = site["score_parts"].entropy_term
            if not is_identically_zero(entropy_term):
                entropy_terms.append(entropy_term.sum())
        model_sum = _total(model_terms)
        elbo = model_sum - _total(guide_terms)
        surrogate = model_sum - _total(entropy_terms) if entropy_terms else model_sum
        return elbo, surrogate

    def _score_sites_and_costs(self, model_trace, guide_trace):
        """``[(name, site, cost)]`` for the guide sites that need a non-pathwise gradient."""
        sites = score_function_sites(guide_trace)
        costs = site_costs(model_trace, guide_trace, [name for name, _ in sites], self.track_dependencies)
        return [(name, site, costs[name]) for name, site in sites]

    def _jit_unsupported(self):
        """Why this estimator cannot be compiled, or ``None``."""
        return None

    def _loss_and_surrogate(self, model, guide, args, kwargs, update):
        if self.jit_compile:
            loss, surrogate = self._compiled_loss_and_surrogate(model, guide, args, kwargs, update)
        else:
            loss, surrogate = self._traced_loss_and_surrogate(model, guide, args, kwargs, update)
        if update:
            self._after_step()
        return loss, surrogate

    def _compiled_loss_and_surrogate(self, model, guide, args, kwargs, update):
        reason = self._jit_unsupported()
        if reason is not None:
            raise ValueError(estimator_error(self, "jit_compile=True is not supported: " + reason))
        if self.max_plate_nesting == float("inf"):
            self._guess_max_plate_nesting(model, guide, args, kwargs)
        # tensors are traced as inputs; everything else is fixed in the compiled
        # function, so it is part of the key, as are the tensors' shapes
        template = tuple(None if torch.is_tensor(a) else a for a in args)
        key = (
            model,
            guide,
            update,
            tuple((a.shape, a.dtype, a.device) if torch.is_tensor(a) else _hashable(a) for a in args),
        )
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = _compile(self, model, guide, update, template)
            self._compiled[key] = compiled
        return compiled(*(a for a in args if torch.is_tensor(a)), **kwargs)

    def _traced_loss_and_surrogate(self, model, guide, args, kwargs, update):
        losses, surrogates = [], []
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            particle_loss, particle_surrogate = self._particle_loss_and_surrogate(
                model_trace, guide_trace, update
            )
            losses.append(particle_loss)
            surrogates.append(particle_surrogate)
        loss = detach_provenance(_total(losses))
        surrogate = _total(surrogates)
        loss = (loss.detach() if torch.is_tensor(loss) else loss) / self.num_particles
        surrogate = detach_provenance(surrogate) / self.num_particles
        return loss, surrogate

    def _after_step(self):
        """Called once per gradient step, after the surrogate was built."""

    # ------------------------------------------------------------------
    # Pyro's ELBO interface
    # ------------------------------------------------------------------
    def loss(self, model, guide, *args, **kwargs):
        """
        :returns: an estimate of ``-ELBO`` (a float). Changes no state.
        """
        with torch.no_grad():
            loss = 0.0
            for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
                loss = loss + self._particle_loss(model_trace, guide_trace)
            loss = torch_item(loss) / self.num_particles
        warn_if_nan(loss, "loss")
        return loss

    def differentiable_loss(self, model, guide, *args, **kwargs):
        """
        :returns: a tensor whose value is an estimate of ``-ELBO`` and whose
            gradient with respect to every parameter is this class's estimator.
            With validation enabled (``pyro.enable_validation``) a NaN value or
            gradient is warned about; without, nothing synchronizes the device.
        """
        loss, surrogate = self._loss_and_surrogate(model, guide, args, kwargs, update=True)
        if torch.is_tensor(surrogate) and surrogate.requires_grad:
            loss = loss + (surrogate - surrogate.detach())
        if is_validation_enabled():
            # a device synchronization and a backward hook: only when validating
            warn_if_nan(loss, "loss")
        return loss

    def loss_and_grads(self, model, guide, *args, **kwargs):
        """
        Computes the estimator's gradients (``.backward()`` on the surrogate)
        and returns an estimate of ``-ELBO`` as a float.
        """
        loss, surrogate = self._loss_and_surrogate(model, guide, args, kwargs, update=True)
        if torch.is_tensor(surrogate) and surrogate.requires_grad:
            surrogate.backward(retain_graph=self.retain_graph)
        loss = torch_item(loss)
        warn_if_nan(loss, "loss")
        return loss

