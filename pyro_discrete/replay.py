# SPDX-License-Identifier: Apache-2.0
"""
Replays: the model and guide evaluated again, without gradients and in one
batched run, at other values of chosen guide sites -- the pseudo-actions of
ARSM and DisARM, the values of one latent at a time of IndeCateR.

The alternative values of every chosen site are laid out along one new batch
dim left of all the plates (and of the particles): the rows of site ``a`` hold
``a``'s alternatives with every other site at its sampled value, then come the
rows of site ``b``, and so on. The model must broadcast over that dim, as for
Pyro's parallel enumeration.

**Models that do not broadcast.** The first replay of each model and guide
keeps provenance through the model: a site that depends on a replayed site but
whose log-density lacks the replay dim (the model reshaped or reduced over it)
is an error, since its costs would be wrong without one.

**Guide dependencies.** Replaying site ``a`` at another value holds every
other guide site at its sampled value. That is only right if no other guide
site's distribution depends on ``a``'s value: the estimators that replay assume
it, and would otherwise give a wrong gradient without any sign of it. So the
guide is replayed too, with ``a``'s alternative values carrying provenance
(:class:`~pyro.ops.provenance.ProvenanceTensor`), and a guide site whose
log-density picks up that provenance is an error that names both sites. The
rule depends on what the guide computes, not on how many alternatives there
are (an earlier rule read the size of the new dim, which is 1 for a binary
site's single antithetic value, and let such dependencies through).
"""

import torch
from pyro import poutine
from pyro.ops.provenance import ProvenanceTensor, detach_provenance, get_provenance

from .costs import broadcast_cost, cost_terms, cost_to_frames
from .errors import EstimatorError
from .traces import check_dims_follow_provenance, get_importance_traces
from .util import batch_dims, sample_sites

__all__ = ["Replay"]


class Replay:
    """
    One batched, gradient-free replay of a :class:`~pyro_discrete.elbo.TracePair`
    at alternative values of chosen guide sites.

    Calling it with ``alternatives = {name: values}``, where ``values`` has
    shape ``(R_name,) + site value shape``, returns ``{name: costs}`` with
    ``costs`` of shape ``(R_name,) + site batch shape``: the cost the site can
    influence (:func:`~pyro_discrete.costs.site_costs`, plates
    Rao-Blackwellized, no dependency tracking) at each alternative value, every
    other site held at its sampled value. It adds ``R * particles`` to the
    step's model evaluations.
    """

    def __init__(self, step):
        self.step = step
        self.elbo = step.elbo

    def __call__(self, pair, alternatives):
        if not alternatives:
            return {}
        if pair.raw_guide_trace is None:
            raise EstimatorError(
                self.elbo,
                "replays the guide at other values of its sites, which a GuideMessenger guide "
                "(AutoGuideMessenger) does not support.",
                requirement="replayable_guide",
                suggest=lambda e: e.cost == "particles",
            )
        names = list(alternatives)
        num_rows = {name: alternatives[name].shape[0] for name in names}
        offsets, total_rows = {}, 0
        for name in names:
            offsets[name] = total_rows
            total_rows += num_rows[name]
        num_dims = batch_dims(pair)
        guide_trace = self._replay_trace(pair, alternatives, offsets, total_rows, num_dims)
        with torch.no_grad():
            try:
                replayed = poutine.trace(poutine.replay(pair.guide, trace=guide_trace)).get_trace(
                    *self.step.args, **self.step.kwargs
                )
            except (RuntimeError, IndexError, TypeError) as e:
                self._raise_broadcast_error(e, total_rows, names, num_dims)
            # NotImplementedError is a RuntimeError: checked outside the try
            self._check_guide_dependencies(replayed, names)
            # the first replay of a model keeps the provenance, to check that the model broadcasts
            check = not self.elbo._replay_checks.done(self.step)
            if not check:
                for name in names:
                    replayed.nodes[name]["value"] = detach_provenance(replayed.nodes[name]["value"])
            try:
                model_trace, replayed = get_importance_traces(
                    num_dims, pair.model, None, self.step.args, self.step.kwargs, guide_trace=replayed
                )
            except (RuntimeError, IndexError, TypeError) as e:
                self._raise_broadcast_error(e, total_rows, names, num_dims)
            if check:
                dims = {name: (-num_dims - 1, total_rows) for name in names}
                check_dims_follow_provenance(self.elbo, (model_trace,), dims, "(replays)")
                self.elbo._replay_checks.add(self.step)
            groups = cost_terms(model_trace, replayed)
            costs = {}
            for name in names:
                batch_shape = pair.guide_trace.nodes[name]["fn"].batch_shape
                padded = (total_rows,) + (1,) * (num_dims - len(batch_shape)) + batch_shape
                cost = cost_to_frames(groups, replayed.nodes[name], widened=self.step.widened(name))
                if cost is None:
                    cost = torch.zeros(padded, dtype=alternatives[name].dtype, device=alternatives[name].device)
                try:  # a model that moved the replayed dim (x.T on a batch) leaves terms of another shape
                    cost = broadcast_cost(detach_provenance(cost), padded).reshape((total_rows,) + batch_shape)
                except RuntimeError as e:
                    self._raise_broadcast_error(e, total_rows, names, num_dims)
                costs[name] = cost[offsets[name] : offsets[name] + num_rows[name]]
        self.step.evaluations += total_rows * pair.num_particles
        return costs

    def _raise_broadcast_error(self, e, total_rows, names, num_dims):
        if isinstance(e, NotImplementedError):  # a RuntimeError, but not about shapes
            raise e
        raise EstimatorError(
            self.elbo,
            "replaying the model at {} alternative values of guide site(s) {} along batch dim {} "
            "failed: the model must broadcast over batch dims left of its plates, as for Pyro's "
            "parallel enumeration (e.g. Vindex(x)[..., z] instead of x[z]). The error was: "
            "{}: {}.".format(total_rows, ", ".join(map(repr, names)), -num_dims - 1, type(e).__name__, e),
            sites=tuple(names),
            requirement="broadcasts_left_of_plates",
            suggest=lambda e: e.cost == "particles",
        ) from e

    def _replay_trace(self, pair, alternatives, offsets, total_rows, num_dims):
        trace = pair.raw_guide_trace.copy()
        for name, rows in alternatives.items():
            site = trace.nodes[name]
            value = site["value"]
            batch_shape = site["fn"].batch_shape
            shape = (1,) * (num_dims - len(batch_shape)) + value.shape
            full = value.reshape(shape).unsqueeze(0).expand((total_rows,) + shape).clone()
            full[offsets[name] : offsets[name] + rows.shape[0]] = rows.reshape((rows.shape[0],) + shape)
            trace.nodes[name] = dict(site, value=ProvenanceTensor(full, frozenset([name])))
        return trace

    def _check_guide_dependencies(self, replayed, names):
        names = set(names)
        for name, site in sample_sites(replayed):
            parents = (get_provenance(site["fn"].log_prob(site["value"])) & names) - {name}
            if parents:
                raise EstimatorError(
                    self.elbo,
                    "guide site '{}' depends on the value of the discrete guide site(s) {}, which this "
                    "estimator replays at other values while holding '{}' fixed; its gradient would be "
                    "wrong.".format(name, ", ".join("'{}'".format(p) for p in sorted(parents)), name),
                    sites=tuple(sorted(parents)) + (name,),
                    requirement="no_guide_dependencies",
                    suggest=True,
                )
