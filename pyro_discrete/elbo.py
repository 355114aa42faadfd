# SPDX-License-Identifier: Apache-2.0
"""
The contract every estimator in :mod:`pyro_discrete` is written on.

An estimator is a :class:`DiscreteELBO` that pairs two objects:

* a **sampler** (:class:`~pyro_discrete.samplers.Sampler`): how the guide's
  sites are drawn, and what the estimator needs to know of the draw;
* a **surrogate** (:class:`~pyro_discrete.surrogate.Surrogate`): how the traces of one step become the
  value of the objective and a surrogate loss whose gradient is the estimator.

:class:`DiscreteELBO` runs the traces -- particles vectorized in an outermost
plate, as :class:`pyro.infer.Trace_ELBO` does with
``vectorize_particles=True``, or one after another -- and hands them to the
surrogate as :class:`~pyro_discrete.surrogate.Particles`, with a
:class:`~pyro_discrete.surrogate.Step` that gives access to the
tools a surrogate may need: a batched replay of the model at other values of
chosen sites (:mod:`~pyro_discrete.replay`), auxiliary parameters with an
objective of their own (:mod:`~pyro_discrete.auxiliary`), and whether the
estimator's state may advance. :meth:`~DiscreteELBO.loss` asks for no
gradient, so it runs the model once per particle and nothing else.
"""

import torch
from pyro.infer.elbo import ELBO, ELBOModule
from pyro.infer.tracegraph_elbo import TrackNonReparam
from pyro.infer.util import is_validation_enabled, torch_item
from pyro.ops.provenance import detach_provenance
from pyro.util import warn_if_nan

from .compile import CompileCache
from .errors import EstimatorError
from .explain import Explanations
from .per_site import check_estimator_annotations, surrogate_for
from .samplers import IIDSampler
from .structure import analyze_left_of_plates
from .surrogate import Particles, ScoreSite, Step, Surrogate, TracePair
from .traces import (
    StructureChecks,
    check_infer_keys,
    check_model_guide,
    get_importance_traces,
)
from .util import (
    preserved_rng,
    rng_state,
    sample_sites,
    set_rng_state,
)

__all__ = ["DiscreteELBO", "Particles", "ScoreSite", "Step", "Surrogate", "TracePair"]


# ----------------------------------------------------------------------
# the ELBO
# ----------------------------------------------------------------------
class _DiscreteELBOModule(ELBOModule):
    # Pyro's ELBOModule, with the estimator's auxiliary parameters among its own
    # (so that ``torch.optim.Adam(elbo(model, guide).parameters())`` steps them)
    def __init__(self, model, guide, elbo):
        super().__init__(model, guide, elbo)
        self.auxiliary = torch.nn.ModuleDict(dict(elbo.surrogate.auxiliary_modules()))


class DiscreteELBO(Explanations, ELBO):
    """
    Base class of the ELBO implementations in :mod:`pyro_discrete`: a sampler
    and a surrogate (see the module's docstring) behind Pyro's ELBO interface.

    :meth:`loss`, :meth:`loss_and_grads`, :meth:`differentiable_loss` and
    ``__call__`` follow :class:`~pyro.infer.Trace_ELBO`'s conventions: every
    method's value is the estimate of the negated objective (``-ELBO``, or the
    negated multi-sample bound of :class:`~pyro_discrete.VIMCOELBO`), and the
    gradient of :meth:`differentiable_loss` (and the gradients left by
    :meth:`loss_and_grads`) is the estimator.

    :param int num_particles: number of particles (samples of the guide) per
        estimate.
    :param max_plate_nesting: bound on the number of nested plates; guessed
        from one run of the model and guide when it is needed (vectorized
        particles, enumeration) and not given.
    :param bool vectorize_particles: draw the particles in one vectorized run,
        in an outermost plate named ``"num_particles_vectorized"`` (default
        ``True``, unlike Pyro's ELBOs); ``False`` runs them one after another,
        for models that do not broadcast over a dim left of their plates.
    :param track_dependencies: restrict each site's cost to the terms
        that depend on it (provenance tracking: TraceGraph_ELBO's downstream
        costs, :class:`~pyro.infer.TraceGraph_ELBO`). Lower variance for guides
        with many sites, at some cost in time. ``False``: costs are
        Rao-Blackwellized by plates only. Default ``None``: ``True`` for a guide
        that carries TraceGraph_ELBO's ``infer={"baseline": ...}`` options and
        an estimator that honors them (:class:`~pyro_discrete.TraceScoreELBO`),
        so that such a guide gets TraceGraph_ELBO's gradient; else ``False``.
    :param bool jit_compile: compile the step with :func:`pyro.ops.jit.trace`
        (``torch.jit.trace``), as :class:`~pyro.infer.JitTrace_ELBO` does, once
        per model, guide and shapes of the tensor arguments. It removes part of
        Pyro's per-step Python work, which pays at small steps but not at large
        ones (``benchmarks/results/grid_jit.md``). The limits of
        ``JitTrace_ELBO`` apply: static model structure, tensors passed
        positionally, the same model and guide objects from step to step.
        Estimators that keep state between steps refuse it.
        ``torch.jit.trace`` is deprecated from torch 2.13 and warns so.
    :param sampler: the sampler class (or factory) of gradient steps.
    :param surrogate: the :class:`Surrogate`.
    :param loss_sampler: the sampler of :meth:`loss` (default: ``sampler``).
    """

    def __init__(
        self,
        num_particles=1,
        max_plate_nesting=float("inf"),
        vectorize_particles=True,
        track_dependencies=None,
        jit_compile=False,
        *,
        sampler=IIDSampler,
        surrogate=None,
        loss_sampler=None,
        **kwargs,
    ):
        if not isinstance(num_particles, int) or isinstance(num_particles, bool) or num_particles < 1:
            raise EstimatorError(self, "num_particles must be a positive integer, got {!r}".format(num_particles))
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            **kwargs,
        )
        if surrogate is None:
            raise EstimatorError(self, "a surrogate is required")
        self.track_dependencies = track_dependencies
        self.jit_compile = jit_compile
        if jit_compile and track_dependencies:
            raise EstimatorError(
                self,
                "jit_compile=True cannot trace the provenance tracking of track_dependencies=True; "
                "use one or the other.",
            )
        self.sampler = sampler
        self.loss_sampler = sampler if loss_sampler is None else loss_sampler
        self.surrogate = surrogate
        #: gradient steps taken (steps that may update state)
        self.num_steps = 0
        #: model evaluations (joint configurations of the guide's sites, per
        #: plate element) made by the last call
        self.num_evaluations = None
        self._compiled = CompileCache()
        self._warned_infer_keys = set()
        self._annotated_methods = {}  # registry name -> its method, for infer={"estimator": ...} (per_site)
        self._per_site = {}  # (model, guide) -> the surrogate of their steps (the ELBO's, or a per-site mix), rows
        self._pending_per_site = []  # per-site states of a checkpoint, loaded when their mix is made
        self._replay_checks = StructureChecks()
        self._discrete_site_counts = {}  # (model, guide) -> its discrete guide sites (sets drawn across sites)
        self._structures = {}
        self._downstream_costs = {}
        surrogate.bind(self)

    # ------------------------------------------------------------------
    # drawing the traces
    # ------------------------------------------------------------------
    def _particle_dim(self):
        """The batch dim (negative) of the vectorized particles, or ``None``."""
        if self.vectorize_particles and self.num_particles > 1:
            return -self.max_plate_nesting
        return None

    def _guess_max_plate_nesting(self, model, guide, args, kwargs):
        # Pyro's dry run draws from the guide; here it leaves the random state as it found it, so that a
        # fresh ELBO resumed from a checkpoint draws what the uninterrupted run drew
        with preserved_rng():
            super()._guess_max_plate_nesting(model, guide, args, kwargs)

    def _ensure_plate_nesting(self, step, sampler):
        if self.max_plate_nesting != float("inf"):
            return
        if (self.vectorize_particles and self.num_particles > 1) or getattr(sampler, "needs_plate_nesting", False):
            self._guess_max_plate_nesting(step.model, step.guide, step.args, step.kwargs)

    def _draw(self, step, for_gradient):
        """The :class:`Particles` of one step."""
        if self.track_dependencies is not None:
            step.track_dependencies = bool(self.track_dependencies)
            return self._draw_particles(step, for_gradient)
        # auto: TraceGraph_ELBO's downstream costs for a guide that carries its baseline options (the first
        # step of each model and guide finds out, and draws again with the same random numbers if so)
        key = _key(step.model, step.guide)
        decided = self._downstream_costs.get(key)
        if decided is not None:
            step.track_dependencies = decided
            return self._draw_particles(step, for_gradient)
        state = rng_state()
        step.track_dependencies = False
        particles = self._draw_particles(step, for_gradient)
        decided = "baseline" in self.surrogate.honored_infer_keys and any(
            site["infer"].get("baseline") is not None for _, site in sample_sites(particles.pairs[0].guide_trace)
        )
        if key is not None:
            self._downstream_costs[key] = decided
        if not decided:
            return particles
        set_rng_state(state)
        step.track_dependencies = True
        step.evaluations = 0
        return self._draw_particles(step, for_gradient)

    def _draw_particles(self, step, for_gradient):
        sampler = (step.sampler or self.sampler) if for_gradient else self.loss_sampler
        self._ensure_plate_nesting(step, sampler)
        particle_dim = self._particle_dim()
        if particle_dim is not None:
            model = self._vectorized_num_particles(step.model)
            guide = self._vectorized_num_particles(step.guide)
            try:
                pairs = [self._trace(model, guide, step, sampler, self.num_particles, particle_dim)]
            except (RuntimeError, ValueError, IndexError, TypeError) as e:
                if not self._is_own_error(e):
                    self._explain_broadcast_failure(e, step, sampler)
                raise
        else:
            try:
                pairs = [self._trace(step.model, step.guide, step, sampler, 1, None) for _ in range(self.num_particles)]
            except (RuntimeError, ValueError, IndexError, TypeError) as e:
                if getattr(sampler, "needs_plate_nesting", False) and not self._is_own_error(e):
                    self._explain_enumeration_failure(e, step, sampler)
                raise
        step.structure = self._structure(step, pairs[0], analyze_now=for_gradient)
        return Particles(pairs, self.num_particles, step.track_dependencies, step)

    # ------------------------------------------------------------------
    # the structural analysis
    # ------------------------------------------------------------------
    @property
    def structure(self):
        """
        The :class:`~pyro_discrete.structure.Structure` of the last model and
        guide this ELBO ran (``None`` before the first step): per discrete
        guide site, the plates its cost was widened over and what it reaches.
        """
        return self._last_structure

    _last_structure = None

    def _structure(self, step, pair, analyze_now=True):
        """
        The structure of this step's model and guide: analyzed on the first
        gradient step of each, then checked (``loss()`` runs no analysis: it
        evaluates the model once per particle and nothing else).
        """
        signature = (
            step.model,
            step.guide,
            pair.particle_dim,
            tuple((name, tuple(site["log_prob"].shape)) for name, site in sample_sites(pair.guide_trace)),
            tuple((name, tuple(site["log_prob"].shape)) for name, site in sample_sites(pair.model_trace)),
        )
        try:
            structure = self._structures.get(signature, _UNSEEN)
        except TypeError:  # unhashable model or guide: analyzed at every step
            signature, structure = None, _UNSEEN
        if structure is _UNSEEN:
            if not analyze_now:
                return None
            structure = self._analyze(step, pair)
            if structure is not None:
                self._check_structure(structure, pair, step)
            if signature is not None:
                self._structures[signature] = structure
        self._last_structure = structure
        return structure

    def _analyze(self, step, pair):
        # without vectorized particles inside a plate of two copies left of every plate (see analyze_left_of_plates)
        dim = None
        if pair.particle_dim is None:
            depth = max(
                [
                    -f.dim
                    for t in (pair.model_trace, pair.guide_trace)
                    for _, site in sample_sites(t)
                    for f in site["cond_indep_stack"]
                    if f.vectorized
                ]
                + [0]
            )
            if self.max_plate_nesting != float("inf"):
                depth = max(depth, self.max_plate_nesting)
            dim = -depth - 1
        return analyze_left_of_plates(pair.model, pair.guide, step.args, step.kwargs, dim)[0]

    def _check_structure(self, structure, pair, step):
        """Raises an :class:`~pyro_discrete.errors.EstimatorError` for what the estimator cannot take."""
        from .registry import alternatives

        mixed = structure.mixed_particles()
        if pair.particle_dim is not None and mixed:
            name, term = mixed[0]
            looped = alternatives(self, structure, vectorized=False)
            raise EstimatorError(
                self,
                "{} depends on the values of guide site '{}' in more than one vectorized particle (the model "
                "or guide reduces over the particle dim {}, e.g. z.sum() over every dim), so the particles "
                "would be mixed and the gradient wrong. Reduce over the plate dims only (z.sum(-1) on the "
                "plate's dim), or pass vectorize_particles=False to run the particles one after another{}.".format(
                    term[:1].upper() + term[1:],
                    name,
                    pair.particle_dim,
                    " ({} take that)".format(", ".join(looped)) if looped else "",
                ),
                sites=(name,),
                requirement="particles_not_mixed",
                alternatives=looped,
            )
        failure = step.surrogate.check_structure(structure)
        if failure is not None:
            sites, requirement, message = failure
            names = alternatives(self, structure, vectorized=pair.particle_dim is not None)
            raise EstimatorError(
                self,
                "{} {}.".format(
                    message,
                    "Use {}{}".format(
                        ", ".join(names), " with vectorize_particles=False" if structure.mixed_particles() else ""
                    )
                    if names
                    else "No registered estimator takes it",
                ),
                sites=sites,
                requirement=requirement,
                alternatives=names,
            )

    def _trace(self, model, guide, step, sampler_class, num_particles, particle_dim):
        sampler = sampler_class(self)
        sampler.prepare(guide, step)
        sampled_guide = sampler(guide)
        model_handler = sampler.model_handler()
        run_model = model if model_handler is None else model_handler(model)
        if step.track_dependencies or step.surrogate.wants_provenance(step):
            with TrackNonReparam():
                model_trace, guide_trace, raw = get_importance_traces(
                    self.max_plate_nesting, run_model, sampled_guide, step.args, step.kwargs, with_raw=True
                )
        else:
            model_trace, guide_trace, raw = get_importance_traces(
                self.max_plate_nesting, run_model, sampled_guide, step.args, step.kwargs, with_raw=True
            )
        sampler.after_trace(guide_trace)
        if particle_dim is not None and not getattr(sampler, "needs_plate_nesting", False):
            self._check_no_dims_left_of_plates(model_trace, guide_trace)
        check_model_guide(self, model_trace, guide_trace)
        for name, site in sample_sites(guide_trace):
            if not site["is_observed"]:
                step.surrogate.check_site(self, name, site)
        check_infer_keys(self, guide_trace, self.surrogate.honored_infer_keys)
        check_estimator_annotations(self, guide_trace)
        step.evaluations += num_particles * getattr(sampler, "evaluations", 1)
        return TracePair(model_trace, guide_trace, sampler, num_particles, particle_dim, model, guide, raw)

    def _check_no_dims_left_of_plates(self, model_trace, guide_trace):
        # with vectorized particles and no enumeration, nothing may live left of the particle plate: Pyro's
        # shape check lets such dims through (enumeration uses them), and the particles would be mixed
        for trace in (guide_trace, model_trace):
            for name, site in sample_sites(trace):
                shape = site["log_prob"].shape
                extra = shape[: max(0, len(shape) - self.max_plate_nesting)]
                if any(size > 1 for size in extra):
                    raise EstimatorError(
                        self,
                        "the model or guide does not broadcast over the vectorized particles: the log-density "
                        "of site '{}' has shape {}, with batch dims left of the particle plate (at dim {}), "
                        "so particles would be mixed (e.g. a .to_event vector combined with plate-batched "
                        "values). Make it broadcast, or pass vectorize_particles=False.".format(
                            name, tuple(shape), -self.max_plate_nesting
                        ),
                    )

    def _get_trace(self, model, guide, args, kwargs):
        """One ``(model_trace, guide_trace)`` of the gradient's sampler, as Pyro's ELBOs return it."""
        step = Step(self, model, guide, args, kwargs, False)
        pair = self._trace(model, guide, step, self.sampler, 1, None)
        return pair.model_trace, pair.guide_trace

    # ------------------------------------------------------------------
    # the step
    # ------------------------------------------------------------------
    def _loss_and_surrogate(self, model, guide, args, kwargs, update):
        """``(loss, surrogate)`` of one gradient step; state advances only if ``update``."""
        with self._suggesting(model, guide, args, kwargs):
            return self._unsuggested_loss_and_surrogate(model, guide, args, kwargs, update)

    def _unsuggested_loss_and_surrogate(self, model, guide, args, kwargs, update):
        if self.jit_compile:
            reason = self._jit_unsupported()
            if reason is not None:
                raise EstimatorError(self, "jit_compile=True is not supported: " + reason)
            if self.max_plate_nesting == float("inf"):
                self._guess_max_plate_nesting(model, guide, args, kwargs)
            loss, surrogate = self._compiled(self, model, guide, args, kwargs, update)
        else:
            loss, surrogate = self._traced_loss_and_surrogate(model, guide, args, kwargs, update)
        if update:
            self.num_steps += 1
            self.surrogate.after_step()
        return loss, surrogate

    def _per_site_surrogate(self, step):
        """
        The ELBO's surrogate, or a :class:`~pyro_discrete.mix.PerSite` mix
        when the guide's sites carry ``infer={"estimator": ...}`` annotations of
        other methods (read from one run of the guide, once per guide).
        """
        key = _key(step.model, step.guide)
        cached = self._per_site.get(key) if key is not None else None
        if cached is not None:
            return cached[0]
        surrogate, rows = surrogate_for(self, step.model, step.guide, step.args, step.kwargs)
        self._load_pending_per_site(surrogate)
        if key is not None:
            self._per_site[key] = (surrogate, rows)
        return surrogate

    def site_methods(self, model, guide, *args, **kwargs):
        """
        Which gradient method each discrete guide site gets from this ELBO, and
        why: a list of :class:`~pyro_discrete.auto.SiteChoice` (site, method,
        why), in guide order, for annotated sites (``infer={"estimator": ...}``,
        ``"auto"`` included) and the others alike. Runs the guide once (and,
        for ``"auto"``, the structural analysis); draws nothing the next step
        would see.
        """
        step = Step(self, model, guide, args, kwargs, False)
        self._per_site_surrogate(step)
        key = _key(model, guide)
        if key is None:
            return surrogate_for(self, model, guide, args, kwargs)[1]
        return list(self._per_site[key][1])

    def _jit_unsupported(self):
        """Why this estimator cannot be compiled, or ``None``."""
        return self.surrogate.jit_unsupported()

    def _traced_loss_and_surrogate(self, model, guide, args, kwargs, update):
        step = Step(self, model, guide, args, kwargs, update)
        step.surrogate = self._per_site_surrogate(step)
        if step.surrogate is not self.surrogate:
            step.sampler = step.surrogate.sampler(self)
        particles = self._draw(step, for_gradient=True)
        loss, surrogate = step.surrogate.loss_and_surrogate(particles, step)
        self.num_evaluations = step.evaluations
        loss = detach_provenance(loss)
        if torch.is_tensor(loss):
            loss = loss.detach()
        if torch.is_tensor(surrogate):
            surrogate = detach_provenance(surrogate)
        return loss, surrogate

    # ------------------------------------------------------------------
    # Pyro's ELBO interface
    # ------------------------------------------------------------------
    def loss(self, model, guide, *args, **kwargs):
        """
        :returns: an estimate of the negated objective (a float). Runs the model
            once per particle and computes nothing a gradient would need;
            changes no state.
        """
        with torch.no_grad(), self._suggesting(model, guide, args, kwargs):
            step = Step(self, model, guide, args, kwargs, False)
            particles = self._draw(step, for_gradient=False)
            loss = torch_item(detach_provenance(self.surrogate.loss(particles)))
            self.num_evaluations = step.evaluations
        warn_if_nan(loss, "loss")
        return loss

    def differentiable_loss(self, model, guide, *args, **kwargs):
        """
        :returns: a tensor whose value is an estimate of the negated objective
            and whose gradient with respect to every parameter is this class's
            estimator. With validation enabled (``pyro.enable_validation``) a
            NaN value is warned about; without, nothing synchronizes the device.
        """
        loss, surrogate = self._loss_and_surrogate(model, guide, args, kwargs, update=True)
        if not torch.is_tensor(loss):
            loss = torch.tensor(float(loss))
        if torch.is_tensor(surrogate) and surrogate.requires_grad:
            loss = loss + (surrogate - surrogate.detach())
        if is_validation_enabled():
            warn_if_nan(loss, "loss")
        return loss

    def loss_and_grads(self, model, guide, *args, **kwargs):
        """
        Computes the estimator's gradients (``.backward()`` on the surrogate)
        and returns an estimate of the negated objective as a float.
        """
        loss, surrogate = self._loss_and_surrogate(model, guide, args, kwargs, update=True)
        if torch.is_tensor(surrogate) and surrogate.requires_grad:
            surrogate.backward(retain_graph=self.retain_graph)
        loss = torch_item(loss)
        warn_if_nan(loss, "loss")
        return loss

    def __call__(self, model, guide):
        """
        An :class:`~torch.nn.Module` computing :meth:`differentiable_loss`, as
        :meth:`pyro.infer.ELBO.__call__` returns, whose parameters also include
        the estimator's auxiliary parameters (a learned control variate).
        """
        return _DiscreteELBOModule(model, guide, self)

    def method(self):
        """Which gradient method this ELBO is: its class and :meth:`Surrogate.method`."""
        return "{}.{}".format(type(self).__name__, self.surrogate.method())

    # ------------------------------------------------------------------
    # state
    # ------------------------------------------------------------------
    def state_dict(self):
        """
        The estimator's state: which estimator and configuration wrote it, the
        step count, the surrogate's state (moving averages, ...) and the weights
        of its auxiliary modules. Together with Pyro's param store
        (``pyro.get_param_store().get_state()``) it resumes training exactly.
        """
        return {
            "estimator": type(self).__name__,
            "configuration": self.surrogate.configuration(),
            "num_steps": self.num_steps,
            "surrogate": self.surrogate.state_dict(),
            "auxiliary": {name: module.state_dict() for name, module in self.surrogate.auxiliary_modules().items()},
            # the methods of per-site mixes (infer={"estimator": ...}), one entry per mix, by its site -> method
            "per_site": [
                surrogate.group_state_dict()
                for surrogate, _ in self._per_site.values()
                if surrogate is not self.surrogate
            ]
            + list(self._pending_per_site),
        }

    def load_state_dict(self, state):
        """
        Restores what :meth:`state_dict` returned. A state written by another
        estimator, or by this one in another configuration (another baseline,
        say), is an :class:`~pyro_discrete.errors.EstimatorError` naming both,
        as is a state that lacks what :meth:`state_dict` writes.
        """
        missing = [key for key in ("num_steps", "surrogate") if not isinstance(state, dict) or key not in state]
        if missing:
            raise EstimatorError(
                self,
                "load_state_dict: the state lacks {} (it is not what state_dict() returns).".format(
                    ", ".join(repr(k) for k in missing)
                ),
                requirement="state",
            )
        written = (state.get("estimator", type(self).__name__), state.get("configuration", None))
        expected = (type(self).__name__, self.surrogate.configuration())
        if written[0] != expected[0] or (written[1] is not None and written[1] != expected[1]):
            raise EstimatorError(
                self,
                "load_state_dict: the state was written by {} ({}), and this is {} ({}); load it into the "
                "estimator that wrote it.".format(written[0], written[1], expected[0], expected[1]),
                requirement="state",
            )
        self.num_steps = int(state["num_steps"])
        self.surrogate.load_state_dict(state["surrogate"])
        modules = self.surrogate.auxiliary_modules()
        for name, module_state in state.get("auxiliary", {}).items():
            if name not in modules:
                raise EstimatorError(
                    self,
                    "load_state_dict: the state holds auxiliary module '{}', which this estimator does not have "
                    "(it has {}).".format(name, sorted(modules) or "none"),
                    requirement="state",
                )
            modules[name].load_state_dict(module_state)
        # loaded into each mix when it is made (on its model and guide's first step); a mix made already now
        self._pending_per_site = list(state.get("per_site", []))
        for surrogate, _ in self._per_site.values():
            self._load_pending_per_site(surrogate)

    def _load_pending_per_site(self, surrogate):
        # a mix's methods' state, if a checkpoint holds one for the same site -> method assignment
        if surrogate is self.surrogate:
            return
        for i, pending in enumerate(self._pending_per_site):
            if pending["sites"] == surrogate.assignment():
                surrogate.load_group_state_dict(self._pending_per_site.pop(i))
                return


_UNSEEN = object()


def _key(model, guide):
    try:
        hash((model, guide))
    except TypeError:
        return None
    return (model, guide)
