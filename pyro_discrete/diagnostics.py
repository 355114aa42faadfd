# SPDX-License-Identifier: Apache-2.0
r"""
Measure a gradient estimator: its variance, its bias against the exact
gradient, and its cost, for any ELBO -- the ones in :mod:`pyro_discrete` and
Pyro's own :class:`~pyro.infer.Trace_ELBO`, :class:`~pyro.infer.TraceGraph_ELBO`
and :class:`~pyro.infer.TraceEnum_ELBO`.

For an estimator :math:`\hat g` of :math:`g = \nabla_\theta \text{ELBO}` drawn
:math:`N` times independently at fixed parameters,

.. math::

    \text{Var} = \sum_i \mathbb{V}[\hat g_i], \qquad
    \text{Bias}^2 = \sum_i (\mathbb{E}[\hat g_i] - g_i)^2, \qquad
    \text{MSE} = \text{Var} + \text{Bias}^2,

summed over the elements :math:`i` of the chosen parameters (per parameter
and in total). The squared bias is estimated without the upward bias of the
plug-in :math:`\|\bar g - g\|^2`, by subtracting its expected value under zero
bias, :math:`\sum_i \mathbb{V}[\hat g_i] / N`; it can therefore come out
slightly negative for an unbiased estimator. ``bias_z`` (the largest
:math:`|\bar g_i - g_i|` in standard errors) is the test statistic to read
against a normal distribution.

**Vectorized draws.** ``D`` independent draws are made in one pass by running
model and guide inside an extra outermost ``pyro.plate("_draws", D)``: every
ELBO keeps each plate element's costs to itself, so one pass computes the sum
of ``D`` independent estimates. Per-draw variances come from the spread of the
``B`` batch means (``B·D = num_draws``), with a relative standard error of
about :math:`\sqrt{2/(B-1)}`. This needs a model and guide that broadcast
over a batch dim left of their plates (as ``vectorize_particles=True``
needs); ``draws_per_batch=1`` makes one draw per pass instead.

**References**

[1] `Monte Carlo Gradient Estimation in Machine Learning`,
Shakir Mohamed, Mihaela Rosca, Michael Figurnov, Andriy Mnih (JMLR 2020)

[2] `Storchastic: A Framework for General Stochastic Automatic Differentiation`,
Emile van Krieken, Jakub M. Tomczak, Annette ten Teije (NeurIPS 2021)
"""

import math
import time
import warnings
from dataclasses import dataclass, field

import torch

from .comparison import Comparison
from .drawing import Drawer, ParamStoreGuard, as_triple, count_plate_dims, evaluations_per_draw
from .likelihood import LogLikelihood, exact_log_likelihood, log_likelihood
from .statistics import DRAWS_PLATE, bias_z, draw_statistics, squared_bias
from .traces import IgnoredInferOption

__all__ = [
    "DRAWS_PLATE",
    "Comparison",
    "GradientStatistics",
    "LogLikelihood",
    "compare_estimators",
    "exact_log_likelihood",
    "gradient_statistics",
    "log_likelihood",
]


# ----------------------------------------------------------------------
# results
# ----------------------------------------------------------------------
@dataclass
class GradientStatistics:
    """
    What :func:`gradient_statistics` measured. Per-parameter dicts are keyed by
    parameter name; per-element tensors have the parameter's shape.

    :ivar dict mean: mean of the draws.
    :ivar dict variance: variance of a single draw, per element.
    :ivar dict reference: the reference gradient (``None`` without reference).
    :ivar dict bias: ``mean - reference``, per element.
    :ivar dict squared_bias: estimated squared bias, per parameter (float).
    :ivar dict mse: ``variance + squared_bias`` per parameter (float).
    :ivar float total_variance: summed over all elements of all parameters.
    :ivar float total_squared_bias: likewise (``nan`` without reference).
    :ivar float total_mse: likewise (``nan`` without reference).
    :ivar float bias_z: the largest ``|bias|`` in standard errors (of the mean
        and of the reference, when that is itself estimated).
    :ivar float loss: mean of the loss values (the ELBO's ``-ELBO`` estimate).
    :ivar float loss_se: its standard error.
    :ivar float reference_loss: the reference's loss.
    :ivar int num_draws: number of gradient draws.
    :ivar int draws_per_batch: draws made per pass.
    :ivar float seconds_per_draw: wall time of the draws divided by their number
        (amortized over vectorized draws).
    :ivar float seconds_per_step: median wall time of one unbatched
        ``loss + gradient`` evaluation, as a training step makes it.
    :ivar float evaluations_per_draw: model evaluations per draw (particles,
        enumerated configurations, ARSM pseudo-actions).
    """

    mean: dict
    variance: dict
    num_draws: int
    draws_per_batch: int
    loss: float
    loss_se: float
    seconds_per_draw: float
    seconds_per_step: float
    evaluations_per_draw: float
    reference: dict = None
    reference_loss: float = math.nan
    bias: dict = None
    squared_bias: dict = None
    mse: dict = None
    bias_z: float = math.nan
    total_variance: float = field(init=False)
    total_squared_bias: float = math.nan
    total_mse: float = math.nan

    def __post_init__(self):
        self.total_variance = sum(v.sum().item() for v in self.variance.values())

    def summary(self):
        """A flat dict of the totals (one row of a table)."""
        return {
            "variance": self.total_variance,
            "squared_bias": self.total_squared_bias,
            "mse": self.total_mse,
            "bias_z": self.bias_z,
            "loss": self.loss,
            "ms_per_step": 1000 * self.seconds_per_step,
            "ms_per_draw": 1000 * self.seconds_per_draw,
            "evaluations": self.evaluations_per_draw,
            "draws": self.num_draws,
        }

    def __str__(self):
        s = self.summary()
        return (
            "variance {variance:.4g}  squared bias {squared_bias:.4g}  MSE {mse:.4g}  max|z| {bias_z:.2f}  "
            "loss {loss:.4f}  {ms_per_step:.2f} ms/step  {evaluations:g} evals/draw  ({draws} draws)".format(**s)
        )


# ----------------------------------------------------------------------
# the measurement
# ----------------------------------------------------------------------
def gradient_statistics(
    elbo,
    model,
    guide,
    *args,
    num_draws=100,
    reference=None,
    params=None,
    draws_per_batch=None,
    reference_draws=2000,
    timing_repeats=3,
    **kwargs,
):
    r"""
    Draws ``num_draws`` independent gradient estimates of ``elbo`` at the
    current parameters and returns their mean and variance -- and, given a
    ``reference``, their bias and mean squared error -- with the cost per
    draw. No parameter changes; the ELBO's own state (a moving-average
    baseline, a temperature schedule, Pyro's decaying-average baselines in the
    param store) is used as it is and not advanced.

    :param elbo: any :class:`pyro.infer.ELBO` -- from this package, or Pyro's
        ``Trace_ELBO``, ``TraceGraph_ELBO`` (through ``loss_and_grads``),
        ``TraceEnum_ELBO`` -- or a tuple ``(elbo, model, guide)`` to evaluate
        it on an equivalent model (e.g. one site per latent for
        ``TraceEnum_ELBO``) sharing the parameters.
    :param model: the model.
    :param guide: the guide.
    :param int num_draws: number of gradient draws.
    :param reference: ``None``; ``"exact"`` (:class:`~pyro_discrete.ExpectELBO`);
        an ELBO or ``(elbo, model, guide)``; or a dict of reference gradients by
        parameter name. A reference ELBO whose gradient is itself random
        (e.g. ``ExpectELBO`` with continuous guide sites) is averaged over
        ``reference_draws`` draws and its standard error enters ``bias_z``.
    :param params: which parameters: ``None`` (every parameter the ELBO
        touches), a list of names or tensors (e.g. ``encoder.parameters()``),
        or a dict from name to tensor.
    :param int draws_per_batch: draws per vectorized pass; default
        ``ceil(num_draws / 50)``, so that variances come from at least 50
        batch means. ``1`` runs one plain draw per pass (for models that do
        not broadcast over an extra batch dim).
    :param int timing_repeats: unbatched steps timed for ``seconds_per_step``
        (0 to skip).
    :returns: a :class:`GradientStatistics`.
    """
    elbo, model, guide = as_triple(elbo, model, guide, "gradient_statistics")
    if not isinstance(num_draws, int) or num_draws < 2:
        raise ValueError("gradient_statistics: num_draws must be an integer >= 2, got {!r}".format(num_draws))
    if draws_per_batch is None:
        draws_per_batch = max(1, math.ceil(num_draws / 50))
    num_batches = max(2, math.ceil(num_draws / draws_per_batch))
    plate_nesting = count_plate_dims(model, guide, args, kwargs)

    with ParamStoreGuard():
        drawer = Drawer(elbo, model, guide, args, kwargs, draws_per_batch, plate_nesting)
        try:
            with ParamStoreGuard():  # a failed attempt may have written to the param store
                drawer._capture(params)
                loss, grads = drawer()
        except Exception as e:  # the model may not broadcast over the draws dim
            if draws_per_batch == 1:
                raise
            warnings.warn(
                "gradient_statistics: vectorized draws failed ({}: {}); making one draw per pass "
                "(pass draws_per_batch=1 to skip this attempt)".format(type(e).__name__, e)
            )
            draws_per_batch, num_batches = 1, num_draws
            drawer = Drawer(elbo, model, guide, args, kwargs, 1, plate_nesting)
            drawer._capture(params)
            loss, grads = drawer()
        names = list(drawer.tensors)
        batches = [(loss, grads)]
        start = time.perf_counter()
        for _ in range(num_batches - 1):
            batches.append(drawer())
        elapsed = time.perf_counter() - start
        seconds_per_draw = elapsed / max(1, (num_batches - 1) * draws_per_batch)
        evaluations = evaluations_per_draw(drawer.elbo, drawer.guide, args, kwargs)

        seconds_per_step = math.nan
        if timing_repeats:
            single = drawer if draws_per_batch == 1 else Drawer(elbo, model, guide, args, kwargs, 1, plate_nesting)
            if single is not drawer:
                single.tensors, single.touched = dict(zip(names, drawer.tensors.values())), drawer.touched
                single()  # warm-up (guesses max_plate_nesting)
            times = []
            for _ in range(timing_repeats):
                t0 = time.perf_counter()
                single()
                times.append(time.perf_counter() - t0)
            seconds_per_step = sorted(times)[len(times) // 2]

        draws = draw_statistics(batches, names, draws_per_batch)
        stats = GradientStatistics(
            mean=draws.mean,
            variance=draws.variance,
            num_draws=draws.num_draws,
            draws_per_batch=draws.draws_per_batch,
            loss=draws.loss,
            loss_se=draws.loss_se,
            seconds_per_draw=seconds_per_draw,
            seconds_per_step=seconds_per_step,
            evaluations_per_draw=evaluations,
        )
        se2 = {name: se.pow(2) for name, se in draws.se.items()}

        if reference is not None:
            ref, ref_se2, ref_loss = _reference_gradient(
                reference, model, guide, args, kwargs, drawer.tensors, reference_draws
            )
            _add_bias(stats, ref, ref_se2, ref_loss, se2)
    return stats


def _reference_gradient(reference, model, guide, args, kwargs, tensors, reference_draws):
    """``(grads, their squared standard errors, loss)`` of the reference."""
    if isinstance(reference, dict):
        missing = [n for n in tensors if n not in reference]
        if missing:
            raise KeyError("gradient_statistics: reference gradients lack {}".format(missing))
        return {n: reference[n] for n in tensors}, {n: torch.zeros_like(t) for n, t in tensors.items()}, math.nan
    if isinstance(reference, str):
        if reference != "exact":
            raise ValueError(
                "gradient_statistics: reference must be None, 'exact', an ELBO or a dict, got {!r}".format(reference)
            )
        from .expect import ExpectELBO

        reference = ExpectELBO()
    ref_elbo, ref_model, ref_guide = as_triple(reference, model, guide, "gradient_statistics(reference=...)")
    drawer = Drawer(
        ref_elbo, ref_model, ref_guide, args, kwargs, 1, count_plate_dims(ref_model, ref_guide, args, kwargs)
    )
    drawer.tensors, drawer.touched = dict(tensors), list(tensors.values())
    state = torch.get_rng_state()
    with warnings.catch_warnings():
        # the reference may ignore options meant for the estimator measured (a TraceGraph_ELBO baseline)
        warnings.simplefilter("ignore", IgnoredInferOption)
        loss1, g1 = drawer()
        _, g2 = drawer()
    torch.set_rng_state(state)
    deterministic = all(torch.allclose(a, b, rtol=1e-9, atol=1e-12) for a, b in zip(g1, g2))
    if deterministic:
        return dict(zip(tensors, g1)), {n: torch.zeros_like(t) for n, t in tensors.items()}, loss1
    ref = gradient_statistics(
        (ref_elbo, ref_model, ref_guide),
        model,
        guide,
        *args,
        num_draws=reference_draws,
        params=dict(tensors),
        timing_repeats=0,
        **kwargs,
    )
    se2 = {n: ref.variance[n] / ref.num_draws for n in tensors}
    return ref.mean, se2, ref.loss


def _add_bias(stats, ref, ref_se2, ref_loss, se2):
    stats.reference = ref
    stats.reference_loss = ref_loss
    stats.bias, stats.squared_bias, stats.mse = {}, {}, {}
    worst = 0.0
    for name, mean in stats.mean.items():
        se, ref_se = se2[name].sqrt(), ref_se2[name].to(mean).sqrt()
        stats.bias[name] = mean - ref[name].to(mean)
        stats.squared_bias[name] = squared_bias(mean, se, ref[name], ref_se)
        stats.mse[name] = stats.variance[name].sum().item() + stats.squared_bias[name]
        if mean.numel():
            worst = max(worst, bias_z(mean, se, ref[name], ref_se).max().item())
    stats.bias_z = worst
    stats.total_squared_bias = sum(stats.squared_bias.values())
    stats.total_mse = stats.total_variance + stats.total_squared_bias


# ----------------------------------------------------------------------
# comparisons
# ----------------------------------------------------------------------
def compare_estimators(
    model, guide, *args, estimators, reference="exact", num_draws=100, params=None, progress=False, **kwargs
):
    """
    :func:`gradient_statistics` for each estimator at the same parameters,
    against one reference computed once.

    :param dict estimators: name -> ELBO, or name -> ``(elbo, model, guide)``
        for an estimator that needs an equivalent model (Pyro's
        ``TraceEnum_ELBO`` on a model with one site per latent).
    :param reference: as in :func:`gradient_statistics`; ``None`` for no bias.
    :param bool progress: print one line per estimator as it is measured.
    :returns: a :class:`Comparison` (a list of row dicts with the columns
        ``estimator, variance, squared_bias, mse, bias_z, loss, ms_per_step,
        evaluations, draws``), which prints as a Markdown table and can be
        written with :meth:`~Comparison.to_csv` and drawn with
        :meth:`~Comparison.plot`.
    """
    if not estimators:
        raise ValueError("compare_estimators: estimators is empty")
    ref = reference
    if reference is not None and not isinstance(reference, dict):
        first = next(iter(estimators.values()))
        first_elbo, first_model, first_guide = as_triple(first, model, guide, "compare_estimators")
        probe = Drawer(
            first_elbo,
            first_model,
            first_guide,
            args,
            kwargs,
            1,
            count_plate_dims(first_model, first_guide, args, kwargs),
        )
        with ParamStoreGuard():
            probe._capture(params)
        ref_grads, ref_se2, ref_loss = _reference_gradient(reference, model, guide, args, kwargs, probe.tensors, 2000)
        if any((v > 0).any() for v in ref_se2.values()):
            ref = reference  # random reference: let each measurement draw it
        else:
            ref = ref_grads
    rows, statistics = [], {}
    for name, spec in estimators.items():
        stats = gradient_statistics(
            spec, model, guide, *args, num_draws=num_draws, reference=ref, params=params, **kwargs
        )
        statistics[name] = stats
        row = dict(estimator=name, **stats.summary())
        if isinstance(ref, dict) and reference is not None and not isinstance(reference, dict):
            row["reference_loss"] = ref_loss
        rows.append(row)
        if progress:
            print("{:>14}: {}".format(name, stats), flush=True)
    return Comparison(rows, statistics)
