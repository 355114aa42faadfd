# SPDX-License-Identifier: Apache-2.0
"""
What a :class:`~pyro_discrete.elbo.DiscreteELBO` says when a run fails: which
site a model that does not broadcast fails at, and the alternatives of an
:class:`~pyro_discrete.errors.EstimatorError` (the registered estimators that
take the model and guide at hand), filled in on the error's way out.
"""

import contextlib

import pyro
import torch
from pyro.util import check_site_shape

from .broadcast import failing_module
from .errors import EstimatorError
from .samplers import IIDSampler
from .structure import analyze, analyze_left_of_plates
from .surrogate import Step
from .util import preserved_rng, sample_sites

__all__ = ["Explanations"]

# requirements about batch dims left of the plates: the estimators that take such a model run looped particles
_LOOPED_REQUIREMENTS = frozenset(["left_dims_not_mixed", "broadcasts_left_of_plates", "particles_not_mixed"])


class Explanations:
    """The failure explanations of :class:`~pyro_discrete.elbo.DiscreteELBO` (a mixin)."""

    def _is_own_error(self, error):
        # an error of this package's (an unsupported structure), or a NotImplementedError: not about shapes
        return isinstance(error, (EstimatorError, NotImplementedError))

    def _explain_enumeration_failure(self, error, step, sampler):
        """After a run that enumerates sites left of the plates failed: say that the model must broadcast."""
        where, sites = self._failing_site(step, sampler, vectorized=False)
        raise EstimatorError(
            self,
            "enumerates the guide's discrete sites along batch dims left of the plates (from dim {}), and "
            "the run failed{}: the model and guide must broadcast over those dims, as for Pyro's parallel "
            "enumeration (e.g. Vindex(x)[..., z] instead of x[z], networks that accept extra leading dims). "
            "The error was: {}: {}.".format(-self.max_plate_nesting - 1, where, type(error).__name__, error),
            sites=sites,
            requirement="broadcasts_left_of_plates",
            suggest=lambda e: e.cost == "particles",
        ) from error

    def _explain_broadcast_failure(self, error, step, sampler):
        """
        After a vectorized run failed: if one particle runs, the model or guide
        does not broadcast over the particle dim; raise an error that says so.
        """
        try:
            with pyro.poutine.block(), torch.no_grad():
                single = Step(self, step.model, step.guide, step.args, step.kwargs, False)
                # plain draws: the estimator's own sampler may need the particle dim
                self._trace(step.model, step.guide, single, IIDSampler, 1, None)
        except Exception as other:  # noqa: BLE001
            if self._is_own_error(other):  # a structure this estimator refuses anyway: say that
                raise other from error
            return  # the failure is not about particles: re-raise the original
        from .registry import alternatives, entry_of

        where, sites = self._failing_site(step, sampler)
        module = failing_module(error)
        try:
            structure = analyze(step.model, step.guide, step.args, step.kwargs)
        except Exception:  # noqa: BLE001
            structure = None
        looped = [] if structure is None else alternatives(self, structure, vectorized=False, left_dims=False)
        entry = entry_of(self)
        if entry is not None and not entry.vectorized_only:
            fix = "pass vectorize_particles=False to run the particles one after another"
        elif looped:
            fix = "use {} with vectorize_particles=False ({} needs the particles vectorized)".format(
                ", ".join(looped), type(self).__name__
            )
        else:
            fix = "use an estimator that runs particles one after another (vectorize_particles=False)"
        raise EstimatorError(
            self,
            "the model or guide does not broadcast over the vectorized particles "
            "(plate 'num_particles_vectorized' of size {} at dim {}){}{}; with one particle it runs. "
            "Make it broadcast over batch dims left of its plates (e.g. Vindex(x)[..., z] instead of "
            "x[z]; a network that takes one batch dim: pyro_discrete.broadcastable(module) folds the extra "
            "dims into it), or {}. The error was: {}: {}".format(
                self.num_particles,
                -self.max_plate_nesting,
                where,
                "" if module is None else ", in module {}".format(module),
                fix,
                type(error).__name__,
                error,
            ),
            sites=sites,
            requirement="broadcasts_left_of_plates",
            alternatives=looped,
        ) from error

    def _failing_site(self, step, sampler, vectorized=True):
        # where the run fails: (words, (the last sample site entered before,))
        model, guide = step.model, step.guide
        if vectorized:
            model = self._vectorized_num_particles(model)
            guide = self._vectorized_num_particles(guide)
        guide = sampler(self)(guide)
        for where in ("guide", "model"):
            last = _LastSite()
            try:
                with pyro.poutine.block(), torch.no_grad(), last:
                    if where == "guide":
                        trace = guide_trace = pyro.poutine.trace(guide).get_trace(*step.args, **step.kwargs)
                    else:
                        trace = pyro.poutine.trace(pyro.poutine.replay(model, trace=guide_trace)).get_trace(
                            *step.args, **step.kwargs
                        )
            except Exception:  # noqa: BLE001
                if last.name is None:
                    return ", in the {} before its first sample site".format(where), ()
                return ", in the {} after sample site '{}'".format(where, last.name), (last.name,)
            for name, site in sample_sites(trace):  # the run passed: a site of the wrong shape
                try:
                    check_site_shape(dict(site, log_prob=site["fn"].log_prob(site["value"])), self.max_plate_nesting)
                except Exception:  # noqa: BLE001
                    return ", at {} site '{}'".format(where, name), (name,)
        return "", ()

    @contextlib.contextmanager
    def _suggesting(self, model, guide, args, kwargs):
        """Errors raised inside get their alternatives, from the structure at hand, on their way out."""
        try:
            yield
        except EstimatorError as error:
            if error.pending is not None:
                self._suggest(error, model, guide, args, kwargs)
            raise

    def _suggest(self, error, model, guide, args, kwargs):
        """
        Fill in ``error``'s alternatives: the registered unbiased estimators of
        the ELBO that take this model and guide (:func:`registry.alternatives`
        on a fresh structural analysis; RNG state kept), and that satisfy the
        error's own predicate. Requirements about dims left of the plates
        name estimators that run looped particles.
        """
        from .registry import REGISTRY, alternatives

        looped = error.pending.requirement in _LOOPED_REQUIREMENTS
        structure = None
        with preserved_rng(), pyro.poutine.block(), torch.no_grad():
            if self.max_plate_nesting == float("inf"):
                try:
                    self._guess_max_plate_nesting(model, guide, args, kwargs)
                except Exception:  # noqa: BLE001 -- the model does not run: no structure
                    pass
            dim = None
            if self.max_plate_nesting != float("inf"):
                dim = self._particle_dim() or -int(self.max_plate_nesting) - 1
            structure, broadcasts = analyze_left_of_plates(model, guide, args, kwargs, dim)
            looped = looped or not broadcasts
        if structure is not None:
            looped = looped or bool(structure.mixed_particles())
            names = alternatives(self, structure, vectorized=not looped, left_dims=not looped)
        else:
            names = [
                n
                for n, e in REGISTRY.items()
                if e.unbiased and e.objective == "elbo" and (looped or e.cls is not type(self))
            ]
        predicate = error.pending.suggest
        if callable(predicate):
            names = [n for n in names if predicate(REGISTRY[n])]
        error.complete(names, looped=looped)


class _LastSite(pyro.poutine.messenger.Messenger):
    # records the name of the last sample site entered
    name = None

    def _pyro_sample(self, msg):
        self.name = msg["name"]
