# SPDX-License-Identifier: Apache-2.0
"""
ARSM for categorical guide sites and ARM / DisARM for binary ones.
"""

import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample
from torch.distributions import Bernoulli, Categorical, OneHotCategorical

from .core import (
    DiscreteELBO,
    broadcast_cost,
    check_model_guide,
    cost_terms,
    cost_to_frames,
    estimator_error,
    get_importance_traces,
    innermost_distribution,
    sample_sites,
    score_function_sites,
)

__all__ = ["ARSMELBO"]

#: key of the guide-site dict that holds what the augmented sampler drew
_NOISE = "_pyro_discrete_arsm"



def _kind(fn):
    base = innermost_distribution(fn)
    if isinstance(base, OneHotCategorical):
        return "onehot"
    if isinstance(base, Categorical):
        return "categorical"
    if isinstance(base, Bernoulli):
        return "bernoulli"
    return None


class _AugmentedSampler(Messenger):
    """
    Draws every Categorical / OneHotCategorical / Bernoulli guide site through
    its augmentation, keeping the noise for the pseudo-actions:

    * categorical: :math:`\\pi \\sim \\text{Dir}(1_C)` per latent,
      :math:`z = \\arg\\min_i \\pi_i e^{-\\theta_i}`;
    * binary: :math:`u \\sim U(0, 1)` per latent, :math:`b = 1[u < \\sigma(\\alpha)]`.

    Both give exact samples of the site's distribution.
    """

    def _pyro_sample(self, msg):
        if msg["is_observed"] or msg["value"] is not None or isinstance(msg["fn"], _Subsample):
            return
        fn = msg["fn"]
        kind = _kind(fn)
        if kind is None or getattr(fn, "has_rsample", False):
            return
        base = innermost_distribution(fn)
        base_event = 1 if kind == "onehot" else 0
        latent_shape = fn.event_shape[: len(fn.event_shape) - base_event]
        logits = base.logits
        if kind == "bernoulli":
            logits = logits.expand(fn.batch_shape + latent_shape)
            u = torch.rand(logits.shape, dtype=logits.dtype, device=logits.device)
            value = (u < torch.sigmoid(logits.detach())).to(logits.dtype)
            noise = u
        else:
            num_categories = logits.shape[-1]
            logits = logits.expand(fn.batch_shape + latent_shape + (num_categories,))
            e = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device).exponential_()
            pi = e / e.sum(-1, keepdim=True)
            index = (pi.log() - logits.detach()).argmin(-1)
            value = index if kind == "categorical" else torch.nn.functional.one_hot(index, num_categories).to(logits.dtype)
            noise = pi
        msg["value"] = value
        msg["infer"] = dict(msg["infer"], **{_NOISE: (kind, noise, logits)})


def _swap_pairs(num_categories, device):
    return torch.triu_indices(num_categories, num_categories, 1, device=device)


def _pseudo_actions(kind, noise, logits):
    """
    The values of the pseudo-actions of one site, stacked on a new leftmost dim:
    the ``C(C-1)/2`` swaps ``j<m`` for a categorical site (shared by all its
    latents), the antithetic sample for a binary one.
    """
    if kind == "bernoulli":
        return (1.0 - noise < torch.sigmoid(logits.detach())).to(logits.dtype).unsqueeze(0)
    num_categories = logits.shape[-1]
    j, m = _swap_pairs(num_categories, logits.device)
    perm = torch.arange(num_categories, device=logits.device).expand(len(j), num_categories).clone()
    rows = torch.arange(len(j), device=logits.device)
    perm[rows, j] = m
    perm[rows, m] = j
    log_pi = noise.log()
    swapped = log_pi[..., perm]  # (..., C) indexed by (E, C) -> (..., E, C)
    swapped = swapped.movedim(-2, 0)  # (E, ..., C)
    index = (swapped - logits.detach()).argmin(-1)
    if kind == "categorical":
        return index
    return torch.nn.functional.one_hot(index, num_categories).to(logits.dtype)


def _logit_gradient(kind, noise, logits, value, f_true, f_rows, binary):
    """
    The estimator of the gradient of ``E[f]`` with respect to the site's
    logits. ``f_true`` has the site's batch shape, ``f_rows`` an extra leftmost
    dim of pseudo-actions.
    """
    extra = logits.dim() - f_true.dim()  # latent dims (+ categories)
    if kind == "bernoulli":
        f_anti = f_rows[0]
        anti = _pseudo_actions(kind, noise, logits)[0]
        df = (f_true - f_anti).reshape(f_true.shape + (1,) * extra)
        if binary == "arm":
            # ARM with b1 = anti (1[u > sigma(-a)]), b2 = value (1[u < sigma(a)])
            return -df * (noise - 0.5)
        # DisARM
        sign = 1.0 - 2.0 * anti  # (-1)^anti
        return 0.5 * df * sign * (value != anti).to(logits.dtype) * torch.sigmoid(logits.detach().abs())
    num_categories = logits.shape[-1]
    j, m = _swap_pairs(num_categories, logits.device)
    # F[j, m] = f(z^{j<->m}), symmetric, F[j, j] = f(z)
    F = f_true.expand((num_categories, num_categories) + f_true.shape).clone()
    F[j, m] = f_rows
    F[m, j] = f_rows
    D = F - F.mean(1, keepdim=True)  # (C_j, C_l, batch...)
    D = D.movedim(0, -1).movedim(0, -1)  # (batch..., C_j, C_l)
    D = D.reshape(f_true.shape + (1,) * (extra - 1) + (num_categories, num_categories))
    weight = 1.0 - num_categories * noise  # (batch..., latents..., C_j)
    return (weight.unsqueeze(-1) * D).sum(-2) / num_categories


class ARSMELBO(DiscreteELBO):
    r"""
    ARSM for categorical guide sites, ARM or DisARM for binary ones.

    For a categorical site with logits :math:`\theta` and :math:`C` categories,
    the sample is drawn by augmentation, :math:`\pi \sim \text{Dir}(1_C)`,
    :math:`z = \arg\min_i \pi_i e^{-\theta_i}`, and the gradient of
    :math:`E[f(z)]` with respect to :math:`\theta_l` is estimated by ARSM [1]

    .. math::

        g_l = \frac1C \sum_{j=1}^C \Big(f(z^{j\rightleftharpoons l})
            - \frac1C\sum_{m=1}^C f(z^{j\rightleftharpoons m})\Big)(1 - C\pi_j),

    where :math:`z^{j\rightleftharpoons m}` is the pseudo-action drawn with
    :math:`\pi_j, \pi_m` swapped. For a site holding :math:`K` latents
    (``.to_event``) every latent has its own :math:`\pi`, and the swaps are
    shared by all latents, so one sample needs ``C(C-1)/2 + 1`` evaluations of
    ``f`` whatever ``K`` is. For a Bernoulli site with logit :math:`\alpha`,
    :math:`u \sim U(0,1)`, :math:`b = 1[u < \sigma(\alpha)]`,
    :math:`\tilde b = 1[1 - u < \sigma(\alpha)]`, DisARM [3] (default)

    .. math::

        g = \tfrac12\big(f(b) - f(\tilde b)\big)(-1)^{\tilde b}\,
            1[b \ne \tilde b]\,\sigma(|\alpha|)

    or ARM [2] (``binary="arm"``), :math:`g = (f(\tilde b) - f(b))(u - \tfrac12)`.

    ``f`` is the cost the site can influence, ``log q - log p`` kept per
    element of the site's plates (see :func:`~pyro_discrete.core.site_costs`).
    All pseudo-actions of all sites are evaluated in one batched replay of the
    guide and model along an extra leftmost dim: models must broadcast over
    dims left of their plates, as for Pyro's parallel enumeration.
    Reparameterizable guide sites and model parameters get pathwise gradients.

    Not supported, and an error naming the sites: a guide site whose
    distribution depends on the value of an ARSM/ARM site (use
    :class:`~pyro_discrete.TraceScoreELBO` or :class:`~pyro_discrete.VarGradELBO`),
    and non-reparameterizable sites that are not Categorical, OneHotCategorical
    or Bernoulli.

    After each step, :attr:`num_evaluations` holds the number of evaluations of
    the model per step (particles times one plus the pseudo-action rows).

    :param int num_particles: independent ARSM/DisARM estimates averaged.
    :param str binary: ``"disarm"`` (default) or ``"arm"`` for Bernoulli sites.

    **References**

    [1] `ARSM: Augment-REINFORCE-Swap-Merge Estimator for Gradient
        Backpropagation Through Categorical Variables`, Mingzhang Yin, Yuguang
        Yue, Mingyuan Zhou (ICML 2019)

    [2] `ARM: Augment-REINFORCE-Merge Gradient for Stochastic Binary
        Networks`, Mingzhang Yin, Mingyuan Zhou (ICLR 2019)

    [3] `DisARM: An Antithetic Gradient Estimator for Binary Latent
        Variables`, Zhe Dong, Andriy Mnih, George Tucker (NeurIPS 2020)
    """

    def __init__(self, num_particles=1, binary="disarm", **kwargs):
        if kwargs.get("track_dependencies"):
            raise ValueError("ARSMELBO: track_dependencies is not supported; costs are Rao-Blackwellized by plates.")
        super().__init__(num_particles=num_particles, **kwargs)
        if binary not in ("disarm", "arm"):
            raise ValueError("ARSMELBO: binary must be 'disarm' or 'arm', got {!r}".format(binary))
        self.binary = binary
        self.num_evaluations = None

    def _get_trace(self, model, guide, args, kwargs):
        raw_guide_trace = poutine.trace(_AugmentedSampler()(guide)).get_trace(*args, **kwargs)
        model_trace, guide_trace = get_importance_traces(
            self.max_plate_nesting, model, guide, args, kwargs, guide_trace=raw_guide_trace
        )
        check_model_guide(self, model_trace, guide_trace)
        sites = score_function_sites(guide_trace)
        for name, site in sites:
            if _NOISE not in site["infer"]:
                raise NotImplementedError(
                    estimator_error(
                        self,
                        "guide site '{}' ({}) is neither Categorical, OneHotCategorical nor Bernoulli "
                        "and cannot be reparameterized. Use TraceScoreELBO or VarGradELBO.".format(
                            name, type(innermost_distribution(site["fn"])).__name__
                        ),
                    )
                )
        if sites:
            self._pseudo_action_gradients(model, guide, args, kwargs, raw_guide_trace, model_trace, guide_trace, sites)
        else:
            self.num_evaluations = self.num_particles
        return model_trace, guide_trace

    def _pseudo_action_gradients(self, model, guide, args, kwargs, raw_guide_trace, model_trace, guide_trace, sites):
        num_batch_dims = self.max_plate_nesting
        extra_dim = -num_batch_dims - 1
        rows = {name: _pseudo_actions(*site["infer"][_NOISE]) for name, site in sites}
        offsets, total = {}, 0
        for name, _ in sites:
            offsets[name] = total
            total += rows[name].shape[0]

        # one trace holding, on an extra leftmost dim, every site's pseudo-actions
        # (the other sites at their sampled values); the guide is replayed
        # without the augmented sampler, so no noise is drawn
        replay_trace = raw_guide_trace.copy()
        for name, site in sites:
            value = site["value"]
            batch_pad = (1,) * (num_batch_dims - len(site["fn"].batch_shape))
            full = value.reshape(batch_pad + value.shape).unsqueeze(0).expand((total,) + batch_pad + value.shape).clone()
            full[offsets[name] : offsets[name] + rows[name].shape[0]] = rows[name].reshape(
                (rows[name].shape[0],) + batch_pad + value.shape
            )
            replay_trace.nodes[name] = dict(replay_trace.nodes[name], value=full)
        with torch.no_grad():
            replayed_guide = poutine.trace(poutine.replay(guide, trace=replay_trace)).get_trace(*args, **kwargs)
            replayed_model, replayed_guide = get_importance_traces(
                self.max_plate_nesting, model, guide, args, kwargs, guide_trace=replayed_guide
            )
        self._check_guide_dependencies(replayed_guide, sites, offsets, rows, extra_dim)
        main_terms = cost_terms(model_trace, guide_trace)
        replay_terms = cost_terms(replayed_model, replayed_guide)
        for name, site in sites:
            kind, noise, logits = site["infer"][_NOISE]
            batch_shape = site["fn"].batch_shape
            f_true = cost_to_frames(main_terms, site)
            f_true = broadcast_cost(f_true, batch_shape)
            f_all = cost_to_frames(replay_terms, replayed_guide.nodes[name])
            f_all = broadcast_cost(f_all, (total,) + (1,) * (num_batch_dims - len(batch_shape)) + batch_shape)
            f_all = f_all.reshape((total,) + batch_shape)
            f_rows = f_all[offsets[name] : offsets[name] + rows[name].shape[0]]
            grad = _logit_gradient(kind, noise, logits, site["value"], f_true, f_rows, self.binary)
            site[_NOISE] = (logits, grad.detach())
        self.num_evaluations = self.num_particles * (1 + total)

    def _check_guide_dependencies(self, replayed_guide, sites, offsets, rows, extra_dim):
        names = {name for name, _ in sites}
        for name, site in sample_sites(replayed_guide):
            batch_shape = site["fn"].batch_shape
            # the replay dim's presence, not its size, marks a dependency: with
            # one pseudo-action (a binary or 2-category site) it has size 1
            if len(batch_shape) < -extra_dim:
                continue
            # this site's distribution changes with some pseudo-action: find which
            log_prob = site["log_prob"] if "log_prob" in site else site["fn"].log_prob(site["value"])
            culprits = [
                other
                for other in sorted(names)
                if other != name
                and not torch.equal(
                    log_prob[offsets[other] : offsets[other] + rows[other].shape[0]],
                    log_prob[offsets[other] : offsets[other] + 1].expand_as(
                        log_prob[offsets[other] : offsets[other] + rows[other].shape[0]]
                    ),
                )
            ] or sorted(names - {name})
            raise NotImplementedError(
                estimator_error(
                    self,
                    "guide site '{}' depends on the value of the discrete guide site(s) {}, "
                    "which ARSM/ARM would need to re-sample for every pseudo-action. Use "
                    "TraceScoreELBO or VarGradELBO for this guide.".format(
                        name, ", ".join("'{}'".format(c) for c in culprits)
                    ),
                )
            )

    def _particle_loss_and_surrogate(self, model_trace, guide_trace, update):
        elbo, surrogate_elbo = self._pathwise_terms(model_trace, guide_trace)
        surrogate_loss = -surrogate_elbo
        for name, site in sample_sites(guide_trace):
            if _NOISE in site:
                logits, grad = site[_NOISE]
                surrogate_loss = surrogate_loss + (grad * logits).sum()
        return -elbo, surrogate_loss
