# SPDX-License-Identifier: Apache-2.0
r"""
The statistics of repeated gradient draws, shared by the tests and by
:mod:`pyro_discrete.diagnostics`.

**Vectorized draws.** ``D`` independent draws of an estimator are made in one
pass by running model and guide inside an extra outermost
``pyro.plate("_gradient_draws", D)`` (:func:`draws_plate`): every estimator
keeps each plate element's costs to itself, so one pass computes the *sum* of
``D`` independent estimates. ``B`` passes give ``B`` independent batch means;
their spread gives the standard error of the overall mean of ``B·D`` draws and
the variance of a single draw (relative standard error about
:math:`\sqrt{2/(B-1)}`).

**Bias.** Against a reference :math:`g` (exact, or itself estimated with a
standard error), the z-score of element :math:`i` is
:math:`|\bar g_i - g_i| / \sqrt{se_i^2 + se_{g,i}^2}`, and the squared bias is
estimated without the upward bias of the plug-in
:math:`\|\bar g - g\|^2`, by subtracting its expectation under zero bias.
"""

from dataclasses import dataclass

import pyro
import torch

__all__ = ["DRAWS_PLATE", "DrawStatistics", "bias_z", "draw_statistics", "draws_plate", "squared_bias"]

#: name of the plate of vectorized draws
DRAWS_PLATE = "_gradient_draws"


def draws_plate(fn, num_draws, dim):
    """``fn`` run inside an outer plate of ``num_draws`` independent copies at batch dim ``dim``."""

    def wrapped(*args, **kwargs):
        with pyro.plate(DRAWS_PLATE, num_draws, dim=dim):
            return fn(*args, **kwargs)

    return wrapped


@dataclass
class DrawStatistics:
    """
    Mean and spread of ``num_draws`` gradient draws, per parameter (dicts of
    tensors shaped like the parameters).

    :ivar dict mean: mean of the draws.
    :ivar dict variance: variance of a single draw, per element.
    :ivar dict se: standard error of ``mean``, per element.
    :ivar float loss: mean of the loss values.
    :ivar float loss_se: its standard error.
    :ivar int num_draws: number of draws.
    :ivar int draws_per_batch: draws per pass.
    """

    mean: dict
    variance: dict
    se: dict
    loss: float
    loss_se: float
    num_draws: int
    draws_per_batch: int

    def total_variance(self):
        """The variance of a single draw summed over every element of every parameter."""
        return sum(v.sum().item() for v in self.variance.values())


def draw_statistics(batches, names, draws_per_batch):
    """
    :param list batches: ``(loss, grads)`` of each pass, both summed over the
        pass's ``draws_per_batch`` draws; ``grads`` a list aligned with ``names``.
    :returns: a :class:`DrawStatistics`.
    """
    num_batches = len(batches)
    if num_batches < 2:
        raise ValueError("draw_statistics needs at least 2 batches, got {}".format(num_batches))
    D = draws_per_batch
    losses = torch.tensor([float(b[0]) for b in batches], dtype=torch.float64) / D
    mean, variance, se = {}, {}, {}
    for i, name in enumerate(names):
        stack = torch.stack([b[1][i] for b in batches]) / D
        mean[name] = stack.mean(0)
        batch_var = stack.var(0)
        variance[name] = batch_var * D
        se[name] = (batch_var / num_batches).sqrt()
    return DrawStatistics(
        mean=mean,
        variance=variance,
        se=se,
        loss=losses.mean().item(),
        loss_se=(losses.var() / num_batches).sqrt().item(),
        num_draws=num_batches * D,
        draws_per_batch=D,
    )


def bias_z(mean, se, reference, reference_se=None, rounding=1e3):
    """
    Per-element z-scores :math:`|\\bar g - g| / \\sqrt{se^2 + se_g^2}` of one
    parameter. Rounding errors of an exact estimator are not bias: the
    denominator has a floor of ``rounding`` machine epsilons of the reference's
    magnitude.
    """
    reference = reference.to(mean)
    noise = se.pow(2) if reference_se is None else se.pow(2) + reference_se.to(mean).pow(2)
    r = reference.abs()
    floor = rounding * torch.finfo(mean.dtype).eps * (r + r.mean()) + torch.finfo(mean.dtype).tiny
    return (mean - reference).abs() / (noise.sqrt() + floor)


def squared_bias(mean, se, reference, reference_se=None):
    """The squared bias of one parameter, summed over elements, with the noise of the means subtracted."""
    reference = reference.to(mean)
    noise = se.pow(2) if reference_se is None else se.pow(2) + reference_se.to(mean).pow(2)
    return ((mean - reference).pow(2) - noise).sum().item()
