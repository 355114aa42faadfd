# SPDX-License-Identifier: Apache-2.0
r"""
Sum-and-sample: Rao-Blackwellization by summing the most probable values
exactly and sampling the rest.
"""

import math

import torch

from .elbo import DiscreteELBO
from .errors import EstimatorError
from .gumbel import _gumbel, stochastic_beam_search, top_k_joint
from .unordered_set import SetSampler, WeightedSamples, ensure_particle_plate, vectorized_set

__all__ = ["SumAndSampleELBO", "SumAndSampleSampler"]


class SumAndSampleSampler(SetSampler):
    """
    The ``k`` most probable values of the site, per plate element, then ``m``
    independent draws from the guide restricted to the other values; weights
    :math:`q(z)` and :math:`(1 - q(C))/m`.
    """

    def __init__(self, elbo):
        super().__init__(elbo)
        self.num_summed, self.num_sampled = elbo.num_summed, elbo.num_sampled

    def search_sequences(self, guide, step):
        # several discrete sites: C by a beam search without noise over the joint sequences (the k most probable
        # prefixes kept at every latent: a function of the guide's distributions, which is all the estimator
        # needs of C), then m sequences drawn ancestrally from the guide restricted to the sequences outside C
        from .beam import RestSequences, SequenceBeams

        k, m = self.num_summed, self.num_sampled
        rows, beams = [], None
        if k:
            beams = summed = SequenceBeams(self.elbo, self.num, stochastic=False, width=k)
            summed.search(guide, step.args, step.kwargs, self.num_discrete)
            rows.append(summed.phi)
        if m:
            beams = rest = RestSequences(self.elbo, self.num, beams, m)
            rest.search(guide, step.args, step.kwargs, self.num_discrete)
            rows.append(rest.psi.to(rest.dtype))
        self.num_summed_here = rows[0].shape[0] if k else 0
        self.log_p = self._padded(torch.cat(rows))
        # the probability left out of the sum: all of it when nothing is summed
        self.log_rest = summed.discarded if k else rows[0].new_zeros(rows[0].shape[1:])
        return beams

    def draw_set(self, log_p, name):
        K, C = log_p.shape[-2:]
        support = C**K
        k, m = min(self.num_summed, support), self.num_sampled
        self.num_summed_here = k  # more than the support: all of it, the other particles padded
        top, log_p_top, log_rest = top_k_joint(log_p, k) if k else (None, None, log_p.new_zeros(log_p.shape[:-2]))
        if m == 0:
            return top, log_p_top, log_rest
        if k == support:  # nothing left to sample: weight zero, any value
            sampled = top[:1].expand((m,) + top.shape[1:])
        elif K == 1:
            sampled = self._sample_rest_of_one(log_p[..., 0, :], top, m)
        else:
            sampled = self._sample_rest_of_joint(log_p, top, m)
        log_p_sampled = log_p.unsqueeze(0).expand((m,) + log_p.shape).gather(-1, sampled.unsqueeze(-1)).squeeze(-1)
        index = sampled if top is None else torch.cat([top, sampled])
        log_p_all = log_p_sampled.sum(-1) if top is None else torch.cat([log_p_top, log_p_sampled.sum(-1)])
        return index, log_p_all, log_rest

    def _sample_rest_of_one(self, log_p, top, m):
        # Gumbel-max over the values left out, m times
        rest = log_p if top is None else log_p.scatter(-1, top[..., 0].movedim(0, -1), -math.inf)
        return (rest + _gumbel((m,) + rest.shape, rest.dtype, rest.device)).argmax(-1).unsqueeze(-1)

    def _sample_rest_of_joint(self, log_p, top, m):
        # a Gumbel-top-(k+1) sample of the joint holds at least one value outside the top k; the first of
        # them, in perturbed order, is an exact draw from the rest (the Gumbel-max of the values left out)
        k = 0 if top is None else top.shape[0]
        candidates, _, _ = stochastic_beam_search(log_p.unsqueeze(0).expand((m,) + log_p.shape), k + 1)
        if top is None:
            return candidates[0]
        # candidates: (k+1, m) + batch + (K,); top: (k,) + batch + (K,)
        same = (candidates.unsqueeze(2) == top.unsqueeze(0).unsqueeze(0)).all(-1)  # (k+1, m, k) + batch
        outside = ~same.any(2)  # (k+1, m) + batch
        first = outside.to(torch.uint8).argmax(0)  # (m,) + batch
        return candidates.gather(0, first.unsqueeze(0).unsqueeze(-1).expand((1,) + candidates.shape[1:]))[0]

    def weights(self, baseline):
        k, m, n = self.num_summed_here, self.num_sampled, self.num
        log_p = self.log_p
        summed = log_p[:k].exp()
        sampled = (self.log_rest.exp() / m).unsqueeze(0).expand((m,) + self.log_rest.shape) if m else summed[:0]
        padded = log_p.new_zeros((n - k - m,) + self.log_rest.shape)
        weights = torch.cat([summed, sampled, padded])
        if not baseline:
            return weights, None
        matrix = log_p.new_zeros((n, n))
        if m >= 2:
            matrix[:k, k : k + m] = 1.0 / m  # summed values: the mean of the sampled ones
            matrix[k : k + m, k : k + m] = (1.0 - torch.eye(m, dtype=log_p.dtype, device=log_p.device)) / (m - 1)
        return weights, matrix.reshape((n, n) + (1,) * self.log_rest.dim())


class SumAndSampleELBO(DiscreteELBO):
    r"""
    Sum-and-sample [1]: for the guide's discrete site, per element of its
    plates, the ``k`` most probable values :math:`C` (by the current guide)
    are summed exactly and ``m`` values are drawn from the guide restricted to
    the others:

    .. math::

        \widehat{E_q[f]} = \sum_{z\in C} q(z) f(z) + \frac{1 - q(C)}{m}\sum_{j=1}^m f(v_j),
        \qquad v_j \sim q(\cdot \mid z \notin C),

    and its gradient uses the unconditional score :math:`\nabla\log q(v_j)`
    with the weight :math:`1-q(C)` held fixed. It is unbiased because
    :math:`C` depends on the parameters but not on the draw; it is the
    Rao-Blackwellization of one draw from :math:`q` given whether it falls in
    :math:`C`. With ``m >= 2`` the sampled values get a leave-one-out baseline
    and the summed ones the mean of the sampled costs (which keeps it
    unbiased); with ``k`` equal to the support size it is exact, as
    :class:`~pyro_discrete.ExpectELBO`.

    For a ``.to_event`` site the ``k`` most probable *joint* values are found
    by a beam search (exact for independent latents), and the draws from the
    rest by a stochastic beam search of ``k + 1`` values, whose first value
    outside :math:`C` is an exact draw. A guide with several discrete sites (in
    the same plates, each possibly depending on the earlier ones) gets the
    ``k`` sequences of a beam search without noise across the sites as
    :math:`C`, and ``m`` sequences drawn ancestrally from the guide restricted
    to the rest (:class:`~pyro_discrete.beam.RestSequences`). The same
    structures as :class:`~pyro_discrete.UnorderedSetELBO` are supported.

    :param int num_summed: ``k``.
    :param int num_samples: ``m`` (the model runs on ``k + m`` values, vectorized).

    **References**

    [1] `Rao-Blackwellized Stochastic Gradients for Discrete Distributions`,
    Runjing Liu, Jeffrey Regier, Nilesh Tripuraneni, Michael I. Jordan,
    Jon McAuliffe (ICML 2019)
    """

    def __init__(self, num_summed=3, num_samples=1, **kwargs):
        if "num_particles" in kwargs:  # a budget of model evaluations: num_samples of them sampled
            num_summed = max(0, kwargs.pop("num_particles") - num_samples)
        for name, value in (("num_summed", num_summed), ("num_samples", num_samples)):
            if not isinstance(value, int) or value < 0:
                raise EstimatorError(self, "{} must be a non-negative integer, got {!r}".format(name, value))
        if num_summed + num_samples < 1:
            raise EstimatorError(self, "num_summed + num_samples must be at least 1")
        self.num_summed, self.num_sampled = num_summed, num_samples
        super().__init__(
            num_particles=num_summed + num_samples,
            sampler=SumAndSampleSampler,
            surrogate=WeightedSamples(single_site=False),
            **kwargs,
        )
        if self.num_particles == 1 and self.max_plate_nesting != float("inf"):
            self.max_plate_nesting += 1

    def _ensure_plate_nesting(self, step, sampler):
        ensure_particle_plate(self, step)

    def _particle_dim(self):
        return -self.max_plate_nesting

    def _vectorized_num_particles(self, fn):
        return vectorized_set(self, fn)
