# SPDX-License-Identifier: Apache-2.0
"""
Drawing gradient estimates without side effects, for
:mod:`pyro_discrete.diagnostics`: a :class:`Drawer` evaluates an ELBO's loss
and gradient (optionally many independent draws in one pass, in an outer
plate) on a private copy of the ELBO, and :class:`ParamStoreGuard` puts back
whatever an ELBO writes to Pyro's param store, so that a measurement changes
no parameter, no ``.grad``, no estimator state and no param-store entry.
"""

import copy

import pyro
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO
from pyro.poutine.util import prune_subsample_sites

from .compile import CompileCache
from .elbo import DiscreteELBO
from .statistics import draws_plate

__all__ = ["Drawer", "ParamStoreGuard", "as_triple", "count_plate_dims", "evaluations_per_draw"]


def count_plate_dims(model, guide, args, kwargs):
    """The number of plate dims the model and guide use (without particles)."""
    with poutine.block():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    dims = [
        frame.dim
        for trace in (prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace))
        for site in trace.nodes.values()
        if site["type"] == "sample"
        for frame in site["cond_indep_stack"]
        if frame.vectorized
    ]
    return -min(dims) if dims else 0


class ParamStoreGuard:
    """Undo what an ELBO writes to the param store (e.g. TraceGraph_ELBO's running averages)."""

    def __enter__(self):
        store = pyro.get_param_store()
        self.before = {name: store._params[name] for name in store}
        return self

    def __exit__(self, *exc):
        store = pyro.get_param_store()
        for name in list(store.keys()):
            if name not in self.before:
                del store[name]
            elif store._params[name] is not self.before[name]:
                # Pyro's store keeps a reverse map from tensor to name: keep the two in step
                store._param_to_name.pop(store._params[name], None)
                store._params[name] = self.before[name]
                store._param_to_name[self.before[name]] = name
        return False


class Drawer:
    """
    Evaluates ``elbo``'s loss and gradient ``draws_per_batch`` times in one pass,
    on a private copy of the ELBO whose state is used but not advanced.
    """

    def __init__(self, elbo, model, guide, args, kwargs, draws_per_batch, plate_nesting):
        self.args, self.kwargs = args, kwargs
        self.draws_per_batch = draws_per_batch
        self.elbo = copy.copy(elbo) if isinstance(elbo, DiscreteELBO) else copy.deepcopy(elbo)
        if isinstance(elbo, DiscreteELBO):
            self.elbo._compiled = CompileCache()  # functions compiled here stay with the copy
        extra = 1 if draws_per_batch > 1 else 0
        if extra:
            dim = -(plate_nesting + 1)
            model = draws_plate(model, draws_per_batch, dim)
            guide = draws_plate(guide, draws_per_batch, dim)
        if self.elbo.max_plate_nesting == float("inf"):
            # what ELBO._guess_max_plate_nesting would find, without running the model again
            particles = self.elbo.vectorize_particles and self.elbo.num_particles > 1
            self.elbo.max_plate_nesting = plate_nesting + extra + int(particles)
        else:
            self.elbo.max_plate_nesting = max(self.elbo.max_plate_nesting + extra, plate_nesting + extra)
        self.model, self.guide = model, guide
        self.tensors = None  # name -> unconstrained tensor, fixed at the first call

    def _capture(self, params):
        """Find the parameters by a dry run (no gradient) and fix the names."""
        with poutine.trace(param_only=True) as tr:
            self.elbo.loss(self.model, self.guide, *self.args, **self.kwargs)
        touched = {name: site["value"].unconstrained() for name, site in tr.trace.nodes.items()}
        store = pyro.get_param_store()
        if params is None:
            tensors = {n: t for n, t in touched.items() if t.requires_grad}
        elif isinstance(params, dict):
            tensors = dict(params)
        else:
            params = [params] if isinstance(params, str) else list(params)
            tensors = {}
            for i, p in enumerate(params):
                if isinstance(p, str):
                    if p not in store:
                        raise KeyError("gradient_statistics: no parameter named {!r} in the param store".format(p))
                    tensors[p] = store.get_param(p).unconstrained()
                else:
                    tensors[store.param_name(p) or "param{}".format(i)] = p
        if not tensors:
            raise ValueError("gradient_statistics: the model and guide touch no parameter that requires grad")
        self.tensors = tensors
        self.touched = [t for t in touched.values() if t.requires_grad]

    def __call__(self):
        """``(loss, grads)``, both summed over the draws of this pass."""
        elbo, tensors = self.elbo, list(self.tensors.values())
        if isinstance(elbo, DiscreteELBO):
            loss, surrogate = elbo._loss_and_surrogate(self.model, self.guide, self.args, self.kwargs, update=False)
            if torch.is_tensor(surrogate) and surrogate.requires_grad:
                grads = torch.autograd.grad(surrogate, tensors, allow_unused=True)
            else:
                grads = [None] * len(tensors)
            loss = float(loss)
        elif hasattr(elbo, "differentiable_loss"):
            loss = elbo.differentiable_loss(self.model, self.guide, *self.args, **self.kwargs)
            grads = (
                torch.autograd.grad(loss, tensors, allow_unused=True) if loss.requires_grad else [None] * len(tensors)
            )
            loss = loss.item()
        else:  # e.g. TraceGraph_ELBO: only loss_and_grads
            saved = [(t, t.grad) for t in set(self.touched) | set(tensors)]
            for t, _ in saved:
                t.grad = None
            loss = elbo.loss_and_grads(self.model, self.guide, *self.args, **self.kwargs)
            grads = [t.grad for t in tensors]
            for t, g in saved:
                t.grad = g
        grads = [torch.zeros_like(t) if g is None else g.detach() for t, g in zip(tensors, grads)]
        return loss, grads


def evaluations_per_draw(elbo, guide, args, kwargs):
    """Model evaluations per draw (after at least one call of ``elbo``)."""
    n = getattr(elbo, "num_evaluations", None)
    if n is not None:
        return float(n)
    particles = getattr(elbo, "num_particles", 1)
    if isinstance(elbo, TraceEnum_ELBO):
        first = -elbo.max_plate_nesting - 1 if elbo.max_plate_nesting != float("inf") else -8
        with poutine.block():
            trace = poutine.trace(poutine.enum(guide, first_available_dim=first)).get_trace(*args, **kwargs)
        size = 1
        for site in trace.nodes.values():
            if site["type"] == "sample" and site["infer"].get("enumerate") == "parallel":
                dim = site["infer"].get("_enumerate_dim")
                if dim is not None:
                    batch_shape = site["value"].shape[: site["value"].dim() - len(site["fn"].event_shape)]
                    size *= batch_shape[dim]
        return float(size * particles)
    return float(particles)


def as_triple(spec, model, guide, what):
    """An estimator spec is an ELBO or ``(elbo, model, guide)`` for an equivalent model."""
    if isinstance(spec, tuple):
        if len(spec) != 3:
            raise ValueError("{}: expected an ELBO or (elbo, model, guide), got a tuple of {}".format(what, len(spec)))
        return spec
    return spec, model, guide
