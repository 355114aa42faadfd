# SPDX-License-Identifier: Apache-2.0
"""
Error messages that name the estimator and suggest what to use instead. The
suggestions come from the registry (:mod:`pyro_discrete.registry`), so a new
estimator appears in them by being registered.
"""

__all__ = ["EstimatorError", "estimator_error", "suggest"]


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

    ``str(error)`` is the message, prefixed with the estimator's name.
    """

    def __init__(self, estimator, message=None, sites=(), requirement=None, alternatives=()):
        if message is None:
            # one argument: Pyro's trace handler re-raising it with the trace's shapes appended; the data is
            # on the original, its __cause__
            self._data = None
            super().__init__(estimator)
            return
        self._data = (_estimator_name(estimator), tuple(sites), requirement, tuple(alternatives))
        self.message = message
        name = self._data[0]
        super().__init__(message if name is None else "{}: {}".format(name, message))

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


def estimator_error(elbo, message):
    """Prefix an error message with the estimator's name (an ELBO, a class or a string)."""
    return "{}: {}".format(_estimator_name(elbo), message)


def _join(names):
    names = list(names)
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " or " + names[-1]


def suggest(kind=None, exclude=None, require=None):
    """
    ``"use A, B or C"``: the registered unbiased estimators that take guide
    sites of ``kind`` (a site kind of :mod:`pyro_discrete.util`) and satisfy
    ``require`` (a predicate of a registry entry), other than ``exclude`` (an
    ELBO or class).
    """
    from .registry import REGISTRY

    if exclude is not None and not isinstance(exclude, type):
        exclude = type(exclude)
    names = []
    for entry in REGISTRY.values():
        if not entry.unbiased or entry.cls is exclude or entry.cls.__name__ in names:
            continue
        if kind is not None and kind not in entry.site_kinds:
            continue
        if require is not None and not require(entry):
            continue
        names.append(entry.cls.__name__)
    return "use " + _join(names) if names else "no registered estimator applies"
