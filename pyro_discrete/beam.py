# SPDX-License-Identifier: Apache-2.0
r"""
Sampling without replacement across a sequence of guide sites: a stochastic
beam search over the joint values of every discrete guide site, in guide
order, for the unordered set estimator.

A guide whose discrete sites :math:`z_1, \dots, z_T` may each depend on the
earlier ones defines :math:`q(z) = \prod_t q(z_t \mid z_{<t})`. ``k`` distinct
joint values per plate element are drawn by the Gumbel-top-k trick on that
tree without listing it [1]: the beams are the particles; to extend them by
site :math:`t` the guide is run again (without gradients) with the beams'
prefixes as the values of the earlier sites, so that site :math:`t`'s
distribution given each prefix is the guide's own, and each beam's children
get Gumbel perturbations conditioned on their parent's. The latents of a
``.to_event`` site are extended one at a time (they are independent given
the prefix). So ``T`` discrete sites cost ``T`` partial guide runs before
the step's one run of guide and model on the ``k`` sequences, and the
arithmetic is ``k`` times the number of values of each latent per latent.
Nothing of this runs the model.

What it records is what :class:`~pyro_discrete.unordered_set.UnorderedSetSampler`
records for one site: the joint log-probabilities of the ``k`` sequences and
the log of the probability it left out, from which the weights and the
built-in baseline follow.

Requirements, each an :class:`~pyro_discrete.errors.EstimatorError` naming
the sites: every discrete guide site in the same plates (the beams are chosen
per element of those plates, so a site in fewer plates could not follow
them); no reparameterizable guide site between two discrete ones (it would be
drawn again in every partial run). Reparameterizable sites before the first
discrete site are drawn once (in the first partial run, with their graph, so
that they keep their pathwise gradient) and shared by the ``k`` sequences;
those after the last are drawn per sequence. The subsample indices of
subsampled plates are drawn in the first partial run too, and every later run,
the step's included, reuses them.

**References**

[1] `Stochastic Beams and Where to Find Them: The Gumbel-Top-k Trick for
Sampling Sequences Without Replacement`, Wouter Kool, Herke van Hoof,
Max Welling (ICML 2019)
"""

import math

import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import NonlocalExit
from pyro.poutine.subsample_messenger import _Subsample

from .errors import EstimatorError
from .gumbel import _conditional_gumbel, _gumbel, _log_rest
from .structure import PARTICLE_PLATE
from .util import BERNOULLI, CATEGORICAL, CONTINUOUS, ONEHOT, is_sampled, latent_shape, site_kind, site_logits

__all__ = ["SequenceBeams", "RestSequences", "SAME_PLATES"]

#: the requirement that every discrete guide site of a set drawn across sites is in the same plates
SAME_PLATES = "discrete_sites_in_the_same_plates"


def _frames(msg):
    # the plates that hold more than one element (the particles' own excluded)
    return tuple(
        sorted(
            (f.name, f.dim, f.size)
            for f in msg["cond_indep_stack"]
            if f.vectorized and f.dim is not None and f.size > 1 and f.name != PARTICLE_PLATE
        )
    )


class _Prefixes(Messenger):
    """
    Sets the decided discrete sites to the beams' values, replays the shared
    continuous draws, and stops the guide at the first undecided discrete site,
    keeping its message.
    """

    def __init__(self, beams):
        super().__init__()
        self.beams = beams
        self.stopped = None

    def _pyro_sample(self, msg):
        beams = self.beams
        if isinstance(msg["fn"], _Subsample):  # every run sees the first run's subsample
            if msg["name"] in beams.subsamples:
                msg["value"] = beams.subsamples[msg["name"]]
            return
        if not is_sampled(msg):
            return
        name, kind = msg["name"], site_kind(msg["fn"])
        if kind == CONTINUOUS:
            if name in beams.shared:
                msg["value"] = beams.shared[name]
            elif beams.order:
                raise EstimatorError(
                    beams.elbo,
                    "guide site '{}' is drawn between the discrete sites {} and the next one; the distinct "
                    "sequences of the discrete sites are drawn by running the guide once per site, which would "
                    "draw '{}' again each time. Draw it before the first discrete site or after the last.".format(
                        name, ", ".join("'{}'".format(n) for n in beams.order), name
                    ),
                    sites=tuple(beams.order) + (name,),
                    requirement="no_continuous_between_discrete",
                    suggest=lambda e: e.cost == "particles",
                )
            else:  # before the first discrete site: one draw with its graph (pathwise), shared by every sequence
                value = msg["fn"].rsample()
                j = len(msg["fn"].batch_shape) - beams.plate_nesting
                value = value.narrow(j, 0, 1).expand(value.shape)
                beams.shared[name] = value
                msg["value"] = value
            return
        if kind not in (BERNOULLI, CATEGORICAL, ONEHOT):
            return
        if name in beams.values:
            msg["value"] = beams.site_value(name, msg["fn"])
            return
        self.stopped = msg
        raise NonlocalExit(msg)

    def _pyro_post_sample(self, msg):
        if isinstance(msg["fn"], _Subsample):
            self.beams.subsamples.setdefault(msg["name"], msg["value"])


class SequenceBeams:
    """
    The stochastic beam search over the discrete sites of one guide (see the
    module's docstring), per element of their plates, with ``k`` beams laid
    out along the particle dim.

    :ivar list order: the discrete sites, in guide order.
    :ivar dict values: site -> the beams' values, ``(B,) + batch + latents`` (front layout, ``B <= k`` beams).
    :ivar phi: the beams' joint log-probabilities, ``(B,) + batch``.
    :ivar discarded: the log of the probability of the prefixes left out, ``batch``.
    """

    def __init__(self, elbo, num, stochastic=True, width=None):
        self.elbo = elbo
        self.num = num
        #: the most beams kept (default ``num``, the particles the guide runs with)
        self.width = num if width is None else width
        #: ``False``: a beam search without noise, keeping the ``num`` most probable prefixes (sum-and-sample's
        #: summed set, a function of the guide's distributions alone)
        self.stochastic = stochastic
        self.plate_nesting = elbo.max_plate_nesting
        self.order, self.values, self.shared = [], {}, {}
        #: plate name -> the subsample indices of the first run, which every later run (and the step's) reuses
        self.subsamples = {}
        self.frames = None
        self.phi = self.gumbel = self.discarded = None

    def _front_log_probs(self, fn):
        """``(log_p, batch, latents)``: the site's log-probabilities, ``(particles,) + batch + latents + (C,)``."""
        logits = site_logits(fn).detach()
        if site_kind(fn) == BERNOULLI:
            logits = torch.stack([-logits, logits], -1) / 2
        log_p = logits.log_softmax(-1).movedim(len(fn.batch_shape) - self.plate_nesting, 0)
        latents = latent_shape(fn)
        return log_p, log_p.shape[1 : log_p.dim() - len(latents) - 1], latents

    def front_values(self, name):
        """The decided site's values, ``(rows,) + batch + latents``."""
        return self.values[name]

    def site_value(self, name, fn):
        """The value of a decided site for the guide: its beams along the particle dim (padded to ``k`` rows)."""
        value = self.front_values(name)
        if value.shape[0] < self.num:
            value = torch.cat([value, value[:1].expand((self.num - value.shape[0],) + value.shape[1:])])
        kind = site_kind(fn)
        j = len(fn.batch_shape) - self.plate_nesting
        value = value.movedim(0, j)
        logits = site_logits(fn)
        if kind == ONEHOT:
            return torch.nn.functional.one_hot(value, logits.shape[-1]).to(logits.dtype)
        if kind == BERNOULLI:
            return value.to(logits.dtype)
        return value

    def search(self, guide, args, kwargs, num_sites=None):
        """
        Runs the guide once per discrete site, extending the beams by it, until
        ``num_sites`` sites are extended (or, if not given, no site is left).
        """
        while num_sites is None or len(self.order) < num_sites:
            prefixes = _Prefixes(self)
            # the first run draws the shared continuous sites, whose values keep their graph for the step's
            # pathwise gradient; the runs after it only read distributions
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.order), poutine.block():
                try:
                    prefixes(guide)(*args, **kwargs)
                except NonlocalExit:
                    pass
            msg = prefixes.stopped
            if msg is None:
                return
            self._extend(msg)

    def _extend(self, msg):
        fn, name = msg["fn"], msg["name"]
        frames = _frames(msg)
        if self.frames is None:
            self.frames = frames
        elif frames != self.frames:
            first = self.order[0]
            raise EstimatorError(
                self.elbo,
                "guide sites '{}' and '{}' are in different plates ({} and {}); the distinct sequences of "
                "the discrete sites are chosen per element of their plates, so every discrete site must be in "
                "the same plates.".format(first, name, _describe(self.frames), _describe(frames)),
                sites=(first, name),
                requirement=SAME_PLATES,
                suggest=lambda e: e.cost != "set",
            )
        log_p, batch, latents = self._front_log_probs(fn)  # (k,) + batch + latents + (C,)
        num_categories = log_p.shape[-1]
        if self.phi is None:  # the first site: one root beam
            log_p = log_p[:1]
            self.phi = log_p.new_zeros((1,) + batch)
            self.gumbel = log_p.new_zeros((1,) + batch)
            self.discarded = log_p.new_full(batch, -math.inf)
        else:
            log_p = log_p[: self.phi.shape[0]]
        log_p = log_p.reshape(log_p.shape[: 1 + len(batch)] + (-1, num_categories))  # (B,) + batch + (L, C)
        chosen = log_p.new_zeros(log_p.shape[: 1 + len(batch)] + (0,), dtype=torch.long)
        for latent in range(log_p.shape[-2]):
            beams = self.phi.shape[0]
            child_phi = self.phi.unsqueeze(-1) + log_p[..., latent, :]  # (B,) + batch + (C,)
            child_g = _conditional_gumbel(child_phi, self.gumbel.unsqueeze(-1)) if self.stochastic else child_phi
            flat_phi = child_phi.movedim(0, -2).reshape(batch + (beams * num_categories,))
            flat_g = child_g.movedim(0, -2).reshape(batch + (beams * num_categories,))
            keep = min(self.width, beams * num_categories)
            _, top = flat_g.topk(keep, dim=-1)  # batch + (keep,)
            picked = torch.zeros_like(flat_g, dtype=torch.bool).scatter(-1, top, True)
            self.discarded = torch.logaddexp(self.discarded, _log_rest(flat_phi, picked))
            parent = top.div(num_categories, rounding_mode="floor").movedim(-1, 0)  # (keep,) + batch
            category = top.remainder(num_categories).movedim(-1, 0)
            self.phi = flat_phi.gather(-1, top).movedim(-1, 0)
            self.gumbel = flat_g.gather(-1, top).movedim(-1, 0)
            log_p = _gather_beams(log_p, parent)
            chosen = torch.cat([_gather_beams(chosen, parent), category.unsqueeze(-1)], -1)
            for other in self.order:
                self.values[other] = _gather_beams(self.values[other], parent)
        self.order.append(name)
        self.values[name] = chosen.reshape(chosen.shape[: 1 + len(batch)] + latents)


class RestSequences(SequenceBeams):
    r"""
    ``m`` independent draws of the joint values of the discrete sites from the
    guide restricted to the sequences outside a set :math:`C` (sum-and-sample's
    summed set, found by a :class:`SequenceBeams` without noise), by ancestral
    sampling: the guide is run once per site, as for the search, and each latent
    is drawn from

    .. math::

        P(z_l = c \mid u, z \notin C) \propto q(c \mid u) - \sum_{s \in C:\, s \succ (u, c)} q(s) / q(u),

    the guide's conditional less the mass of the sequences of :math:`C` that
    extend the prefix :math:`(u, c)` (computed in float64), so that the
    sequence is an exact draw from :math:`q(z \mid z \notin C)`.

    The draws lie along the particle dim after the ``len(C)`` rows of
    :math:`C` (the layout of :class:`~pyro_discrete.sum_and_sample.SumAndSampleSampler`);
    rows past them, when :math:`C` holds fewer values than asked for, repeat its first.

    :param SequenceBeams summed: the finished search for :math:`C`, or ``None`` (nothing summed).
    :param int num_sampled: ``m``.
    """

    def __init__(self, elbo, num, summed, num_sampled):
        super().__init__(elbo, num)
        self.summed, self.num_sampled = summed, num_sampled
        if summed is not None:  # the same continuous draws and subsamples as the search for C
            self.shared, self.subsamples, self.frames = summed.shared, summed.subsamples, summed.frames
        #: the draws' joint log-probabilities so far, ``(m,) + batch`` (float64)
        self.psi = None
        #: the dtype of the guide's distributions
        self.dtype = None
        #: ``(m, |C|) + batch``: whether draw ``i``'s prefix so far is sequence ``j``'s of ``C``
        self.match = None

    def _rows(self):
        return 0 if self.summed is None else self.summed.phi.shape[0]

    def front_values(self, name):
        value = self.values[name]  # (m,) + batch + latents: after C's rows
        return value if self.summed is None else torch.cat([self.summed.values[name], value])

    def _extend(self, msg):
        fn, name = msg["fn"], msg["name"]
        if self.summed is not None and name not in self.summed.values:
            raise unknown_site_error(self.elbo, name, self.summed.order)
        if self.frames is None:
            self.frames = _frames(msg)
        log_p, batch, latents = self._front_log_probs(fn)  # (n,) + batch + latents + (C,)
        self.dtype = log_p.dtype
        log_p = log_p.to(torch.float64)
        num_categories = log_p.shape[-1]
        rows, m = self._rows(), self.num_sampled
        # the draws' rows: (m,) + batch + (L, C)
        log_p = log_p[rows : rows + m].reshape((m,) + batch + (-1, num_categories))
        if self.psi is None:
            self.psi = log_p.new_zeros((m,) + batch)
            self.match = torch.ones((m, rows) + batch, dtype=torch.bool, device=log_p.device)
        if self.summed is not None:
            summed_phi = self.summed.phi.to(torch.float64)  # (|C|,) + batch
            summed = self.summed.values[name].reshape((rows,) + batch + (-1,))  # (|C|,) + batch + (L,)
        chosen = []
        for latent in range(log_p.shape[-2]):
            weight = log_p[..., latent, :].exp()  # (m,) + batch + (C,): q(c | u)
            if self.summed is not None:
                category = summed[..., latent]  # (|C|,) + batch
                # q(s) / q(u) for the sequences of C that extend the draw's prefix, by their value here
                log_share = torch.where(self.match, summed_phi.unsqueeze(0) - self.psi.unsqueeze(1), -math.inf)
                one_hot = torch.nn.functional.one_hot(category, num_categories).to(torch.float64)
                taken = (log_share.exp().unsqueeze(-1) * one_hot.unsqueeze(0)).sum(1)  # (m,) + batch + (C,)
                weight = _restricted(weight, taken)
            empty = weight.sum(-1, keepdim=True) <= 0  # C holds everything below the prefix: any value (weight 0)
            weight = torch.where(empty, log_p[..., latent, :].exp(), weight)
            noise = _gumbel(weight.shape, weight.dtype, weight.device)
            value = (weight.log() + noise).argmax(-1)  # (m,) + batch: a draw from the restricted conditional
            self.psi = self.psi + log_p[..., latent, :].gather(-1, value.unsqueeze(-1)).squeeze(-1)
            if self.summed is not None:
                self.match = self.match & (category.unsqueeze(0) == value.unsqueeze(1))
            chosen.append(value)
        self.order.append(name)
        self.values[name] = torch.stack(chosen, -1).reshape((m,) + batch + latents)


def unknown_site_error(elbo, name, order):
    """The error for a discrete guide site that the earlier runs of the same step did not have."""
    return EstimatorError(
        elbo,
        "guide site '{}' was not among the discrete sites {} of the guide's earlier runs; the sequences are "
        "drawn over a fixed set of sites (declare every site on every run, masking the ones a run does not "
        "use).".format(name, ", ".join("'{}'".format(n) for n in order)),
        sites=(name,),
        requirement="fixed_discrete_sites",
        suggest=lambda e: e.cost == "particles",
    )


def _restricted(weight, taken):
    """``q(c | u)`` less the conditional mass of the summed sequences below ``(u, c)``, never negative."""
    # a value whose sequences are all summed has weight 0, not the rounding error of the difference
    return torch.where(taken >= weight * (1 - 1e-12), torch.zeros_like(weight), weight - taken)


def _gather_beams(tensor, parent):
    """``tensor`` ``(B,) + batch + rest`` re-indexed along the beams by ``parent`` ``(B',) + batch``."""
    rest = tensor.dim() - parent.dim()
    index = parent.reshape(parent.shape + (1,) * rest).expand(parent.shape + tensor.shape[parent.dim() :])
    return tensor.gather(0, index)


def _describe(frames):
    return "none" if not frames else ", ".join("'{}' (dim {}, size {})".format(*f) for f in frames)
