# SPDX-License-Identifier: Apache-2.0
"""
The package's one exception type, :class:`EstimatorError`, which carries the
estimator, the sites, the requirement that failed and the alternatives as
data. An error raised during a run leaves its alternatives to the ELBO
(``suggest=``): after every structure check, the ELBO fills them in from the
registry (:func:`pyro_discrete.registry.alternatives`), filtered by the
structure at hand, so a new estimator appears in them by being registered and
this module imports nothing of the package.
"""

__all__ = ["EstimatorError", "estimator_error"]


def _estimator_name(elbo):
    if elbo is None:
        return None
    if isinstance(elbo, str):
        return elbo
    if isinstance(elbo, type):
        return elbo.__name__
    return type(elbo).__name__


class EstimatorError(ValueError, NotImplementedError):
    """
    A model/guide structure or an option that an estimator cannot take. It is a
    :class:`ValueError` and a :class:`NotImplementedError` (the builtins a
    caller of an ELBO would catch), and carries what failed as data:

    :ivar str estimator: the estimator's class name.
    :ivar tuple sites: the guide or model sites concerned.
    :ivar str requirement: a short key of the requirement that failed (e.g.
        ``"particles_not_mixed"``, ``"replayable_per_element"``, ``"site_kind"``).
    :ivar tuple alternatives: registry names of estimators that take the structure.
    :ivar bool looped: the alternatives take it with looped particles only (``vectorize_particles=False``).

    ``str(error)`` is the message, prefixed with the estimator's name.
    """

    def __init__(self, estimator, message=None, sites=(), requirement=None, alternatives=(), suggest=None):
        if message is None:
            # one argument: Pyro's trace handler re-raising it with the trace's shapes appended; the data is
            # on the original, its __cause__
            self._data = None
            self.suggest = None
            super().__init__(estimator)
            return
        self._data = (_estimator_name(estimator), tuple(sites), requirement, tuple(alternatives))
        #: ``None``, or what the ELBO needs to fill in the alternatives after the structure checks: a predicate
        #: of a registry entry (beyond taking the structure), ``True`` for none
        self.suggest = suggest
        self.message = message
        name = self._data[0]
        super().__init__(message if name is None else "{}: {}".format(name, message))

    @property
    def pending(self):
        """The error whose alternatives are still to be filled in (this one or its cause), or ``None``."""
        if self._data is None:
            cause = self.__cause__
            return cause.pending if isinstance(cause, EstimatorError) else None
        return self if self.suggest is not None else None

    def complete(self, alternatives, looped=False):
        """
        Fill in the alternatives (registry names) and end the message with
        them; ``looped``: they take the structure with looped particles.
        Errors re-raised around this one (Pyro's trace handler) get the new
        text too.
        """
        target = self.pending
        if target is None:
            return
        old = str(target)
        if alternatives:
            tail = "Use {}{}.".format(_join(alternatives), " with vectorize_particles=False" if looped else "")
        else:
            tail = "No other registered estimator takes this model and guide."
        target.message = "{} {}".format(target.message, tail)
        name, sites, requirement, _ = target._data
        target._data = (name, sites, requirement, tuple(alternatives))
        target.suggest = None
        target._looped = looped
        target.args = (target.message if name is None else "{}: {}".format(name, target.message),)
        error = self
        while error is not None and error is not target:
            if error.args and isinstance(error.args[0], str):
                error.args = (error.args[0].replace(old, str(target)),) + error.args[1:]
            error = error.__cause__

    def _field(self, i, default):
        if self._data is not None:
            return self._data[i]
        cause = self.__cause__
        return cause._field(i, default) if isinstance(cause, EstimatorError) else default

    @property
    def estimator(self):
        return self._field(0, None)

    @property
    def sites(self):
        return self._field(1, ())

    @property
    def requirement(self):
        return self._field(2, None)

    @property
    def alternatives(self):
        return self._field(3, ())

    @property
    def looped(self):
        """Whether the alternatives take the structure only with looped particles (``vectorize_particles=False``)."""
        if self._data is None:
            cause = self.__cause__
            return cause.looped if isinstance(cause, EstimatorError) else False
        return getattr(self, "_looped", False)


def check_pair_memory(elbo, site, needed, limit, what, instead, alternatives):
    """
    Raises an :class:`EstimatorError` (requirement ``"memory"``) before a step
    allocates ``needed`` bytes that grow as the square of the particle count
    (a method that works on every pair of particles), when they exceed
    ``limit`` (the ELBO's ``max_pair_bytes``). ``what`` says what the pairs
    hold, ``instead`` which linear estimators to use.
    """
    if needed > limit:
        raise EstimatorError(
            elbo,
            "{}: about {:.1f} GB, growing as the square of the particle count, over max_pair_bytes={:.1f} GB. Use "
            "fewer particles, {}, or raise max_pair_bytes if memory allows.".format(
                what, needed / 1e9, limit / 1e9, instead
            ),
            sites=(site,),
            requirement="memory",
            alternatives=alternatives,
        )


def estimator_error(elbo, message):
    """Prefix an error message with the estimator's name (an ELBO, a class or a string)."""
    return "{}: {}".format(_estimator_name(elbo), message)


def _join(names):
    names = list(names)
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " or " + names[-1]
