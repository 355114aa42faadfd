# SPDX-License-Identifier: Apache-2.0
"""
ARSM or coupled (stick-breaking) DisARM for categorical guide sites, and ARM /
DisARM for binary ones.
"""

import torch

from .costs import broadcast_cost, cost_to_frames
from .elbo import DiscreteELBO, Surrogate
from .errors import EstimatorError
from .samplers import Sampler
from .structure import INDEPENDENT, LEFT_DIMS, check_assumptions
from .traces import score_function_sites
from .util import BERNOULLI, CATEGORICAL, CONTINUOUS, ONEHOT, site_kind, site_logits

__all__ = ["ARSMELBO", "AugmentedSampler", "CoupledDisARMELBO", "PseudoActionGradient", "stick_breaking_logits"]

#: the categorical augmentation of the coupled DisARM estimator: a sequence of binary choices
STICK_BREAKING = "stick_breaking"


def stick_breaking_logits(logits):
    r"""
    The logits :math:`\eta_i = \theta_i - \log\sum_{j > i} e^{\theta_j}`,
    ``i < C - 1``, of the binary choices "category ``i``, given not before":
    the categorical is the first success of independent
    :math:`b_i \sim \text{Bernoulli}(\sigma(\eta_i))` (the last category if none).
    """
    tail = torch.logcumsumexp(logits.flip(-1), -1).flip(-1)  # log sum_{j >= i} exp(theta_j)
    return logits[..., :-1] - tail[..., 1:]


def _first_success(b):
    # the index of the first true entry of b (..., C - 1), C - 1 if none
    extended = torch.cat([b, torch.ones_like(b[..., :1])], -1)
    return extended.to(torch.uint8).argmax(-1)


class AugmentedSampler(Sampler):
    """
    Draws every Categorical / OneHotCategorical / Bernoulli guide site through
    its augmentation, and keeps the noise that the pseudo-actions need in
    :attr:`noise` (site name to ``(kind, noise, logits)``):

    * categorical: :math:`\\pi \\sim \\text{Dir}(1_C)` per latent,
      :math:`z = \\arg\\min_i \\pi_i e^{-\\theta_i}`;
    * binary: :math:`u \\sim U(0, 1)` per latent, :math:`b = 1[u < \\sigma(\\alpha)]`;
    * categorical, coupled DisARM (the sites of ``stick_breaking``):
      :math:`u_i \\sim U(0, 1)`, ``i < C - 1``, :math:`z` the first ``i`` with
      :math:`u_i < \\sigma(\\eta_i)` (:func:`stick_breaking_logits`); the noise is
      ``u`` and the recorded logits are :math:`\\eta`.

    All give exact samples of the site's distribution.

    :param stick_breaking: a predicate on site names (the categorical sites drawn
        for coupled DisARM); default: every categorical site if the ELBO's
        surrogate is coupled DisARM's, else none.
    """

    def __init__(self, elbo=None, stick_breaking=None):
        super().__init__(elbo)
        if stick_breaking is None:
            surrogate = getattr(elbo, "surrogate", None)
            coupled = isinstance(surrogate, PseudoActionGradient) and surrogate.categorical == STICK_BREAKING
            stick_breaking = (lambda name: True) if coupled else (lambda name: False)
        self._stick_breaking = stick_breaking
        #: the names of the categorical sites drawn by stick-breaking (their noise is coupled DisARM's)
        self.stick_breaking = set()
        #: guide site name -> ``(kind, noise, logits)``, filled as the guide runs: the site's kind
        #: (see :func:`~pyro_discrete.util.site_kind`), the noise it was drawn with (``u`` of the logits' shape for
        #: a Bernoulli site, ``pi`` of the logits' shape ``(..., C)`` for a categorical one) and its logits
        #: (with their graph), from which the pseudo-actions are drawn
        self.noise = {}

    def draw(self, msg):
        fn = msg["fn"]
        kind = site_kind(fn)
        if kind not in (BERNOULLI, CATEGORICAL, ONEHOT):
            return
        logits = site_logits(fn)
        if kind == BERNOULLI:
            u = torch.rand(logits.shape, dtype=logits.dtype, device=logits.device)
            value = (u < torch.sigmoid(logits.detach())).to(logits.dtype)
            noise = u
        elif self._stick_breaking(msg["name"]):
            num_categories = logits.shape[-1]
            eta = stick_breaking_logits(logits)
            u = torch.rand(eta.shape, dtype=logits.dtype, device=logits.device)
            index = _first_success(u < torch.sigmoid(eta.detach()))
            value = (
                index if kind == CATEGORICAL else torch.nn.functional.one_hot(index, num_categories).to(logits.dtype)
            )
            msg["value"] = value
            self.noise[msg["name"]] = (kind, u, eta)
            self.stick_breaking.add(msg["name"])
            return
        else:
            num_categories = logits.shape[-1]
            e = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device).exponential_()
            pi = e / e.sum(-1, keepdim=True)
            index = (pi.log() - logits.detach()).argmin(-1)
            value = (
                index if kind == CATEGORICAL else torch.nn.functional.one_hot(index, num_categories).to(logits.dtype)
            )
            noise = pi
        msg["value"] = value
        self.noise[msg["name"]] = (kind, noise, logits)


def _swap_pairs(num_categories, device):
    return torch.triu_indices(num_categories, num_categories, 1, device=device)


def _pseudo_actions(kind, noise, logits, stick_breaking=False):
    r"""
    The values of the pseudo-actions of one site, stacked on a new leftmost dim:
    the ``C(C-1)/2`` swaps ``j<m`` for a categorical site (shared by all its
    latents), the antithetic sample for a binary one, and for a categorical site
    drawn by stick-breaking (``logits`` then holds :math:`\eta`) the antithetic
    sample of its binary choices.
    """
    if stick_breaking:
        index = _first_success(1.0 - noise < torch.sigmoid(logits.detach())).unsqueeze(0)
        if kind == CATEGORICAL:
            return index
        return torch.nn.functional.one_hot(index, logits.shape[-1] + 1).to(logits.dtype)
    if kind == BERNOULLI:
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
    if kind == CATEGORICAL:
        return index
    return torch.nn.functional.one_hot(index, num_categories).to(logits.dtype)


def _stick_breaking_gradient(noise, eta, f_true, f_anti):
    r"""
    Coupled DisARM's estimator of the gradient of ``E[f]`` with respect to the
    stick-breaking logits :math:`\eta` (``(..., C - 1)``): DisARM on the binary
    choices both sequences reach, the Rao-Blackwellized term
    :math:`\tfrac12(f - \tilde f)(b_i - p_i)` (or its mirror) on those only one
    reaches, nothing beyond.
    """
    p = torch.sigmoid(eta.detach())
    b, b_anti = noise < p, 1.0 - noise < p
    positions = torch.arange(eta.shape[-1], device=eta.device)
    reach = positions <= _first_success(b).unsqueeze(-1)
    reach_anti = positions <= _first_success(b_anti).unsqueeze(-1)
    df = (f_true - f_anti).reshape(f_true.shape + (1,) * (eta.dim() - f_true.dim()))
    b, b_anti = b.to(eta.dtype), b_anti.to(eta.dtype)
    disarm = 0.5 * df * (1.0 - 2.0 * b_anti) * (b != b_anti).to(eta.dtype) * torch.sigmoid(eta.detach().abs())
    grad = disarm * (reach & reach_anti).to(eta.dtype)
    grad = grad + 0.5 * df * (b - p) * (reach & ~reach_anti).to(eta.dtype)
    return grad - 0.5 * df * (b_anti - p) * (reach_anti & ~reach).to(eta.dtype)


def _logit_gradient(kind, noise, logits, value, f_true, f_rows, binary):
    """
    The estimator of the gradient of ``E[f]`` with respect to the site's
    logits. ``f_true`` has the site's batch shape, ``f_rows`` an extra leftmost
    dim of pseudo-actions.
    """
    extra = logits.dim() - f_true.dim()  # latent dims (+ categories)
    if kind == BERNOULLI:
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
    element of the site's plates (see :func:`~pyro_discrete.costs.site_costs`).
    All pseudo-actions of all sites are evaluated in one batched replay of the
    guide and model along an extra leftmost dim: models must broadcast over
    dims left of their plates, as for Pyro's parallel enumeration.
    Reparameterizable guide sites and model parameters get pathwise gradients.

    The pseudo-actions are needed for the gradient only: :meth:`loss` runs the
    model once per particle (drawn the same way, so that ``loss`` and
    ``differentiable_loss`` agree under the same seed).

    Not supported, and an error naming the sites: a guide site whose
    distribution depends on the value of an ARSM/ARM site (see
    :mod:`~pyro_discrete.replay`), and non-reparameterizable sites that are
    not Categorical, OneHotCategorical or Bernoulli.

    After each step, :attr:`num_evaluations` holds the number of evaluations of
    the model per step (particles times one plus the pseudo-action rows).

    With ``categorical="disarm"`` categorical sites get coupled DisARM
    instead of ARSM (:class:`CoupledDisARMELBO`).

    :param int num_particles: independent ARSM/DisARM estimates averaged.
    :param str binary: ``"disarm"`` (default) or ``"arm"`` for Bernoulli sites.
    :param str categorical: ``"arsm"`` (default) or ``"disarm"`` for
        Categorical and OneHotCategorical sites.

    **References**

    [1] `ARSM: Augment-REINFORCE-Swap-Merge Estimator for Gradient
    Backpropagation Through Categorical Variables`, Mingzhang Yin, Yuguang
    Yue, Mingyuan Zhou (ICML 2019)

    [2] `ARM: Augment-REINFORCE-Merge Gradient for Stochastic Binary
    Networks`, Mingzhang Yin, Mingyuan Zhou (ICLR 2019)

    [3] `DisARM: An Antithetic Gradient Estimator for Binary Latent
    Variables`, Zhe Dong, Andriy Mnih, George Tucker (NeurIPS 2020)
    """

    def __init__(self, num_particles=1, binary="disarm", categorical="arsm", **kwargs):
        if categorical not in ("arsm", "disarm"):
            raise ValueError("ARSMELBO: categorical must be 'arsm' or 'disarm', got {!r}".format(categorical))
        super().__init__(
            num_particles=num_particles,
            sampler=AugmentedSampler,
            surrogate=PseudoActionGradient(binary, STICK_BREAKING if categorical == "disarm" else "arsm"),
            **kwargs,
        )

    @property
    def binary(self):
        return self.surrogate.binary


class CoupledDisARMELBO(ARSMELBO):
    r"""
    Coupled DisARM for categorical guide sites [1], DisARM for binary ones.

    A categorical site of :math:`C` categories is drawn as a sequence of
    binary choices, "category :math:`i`, given not an earlier one", with
    logits :math:`\eta_i = \theta_i - \log\sum_{j>i} e^{\theta_j}`
    (stick-breaking): :math:`u_i \sim U(0, 1)`, :math:`b_i = 1[u_i < \sigma(\eta_i)]`,
    :math:`z` the first success. Its antithetic partner :math:`\tilde z` comes
    from :math:`1 - u`, so the pair is coupled through every choice. With
    :math:`f = f(z)`, :math:`\tilde f = f(\tilde z)`, the gradient with
    respect to :math:`\eta_i` is

    .. math::

        g_i = \begin{cases}
          \tfrac12(f - \tilde f)(-1)^{\tilde b_i} 1[b_i \ne \tilde b_i]\,\sigma(|\eta_i|)
              & i \le \min(z, \tilde z) \\
          \tfrac12(f - \tilde f)(b_i - \sigma(\eta_i)) & \tilde z < i \le z \\
          \tfrac12(\tilde f - f)(\tilde b_i - \sigma(\eta_i)) & z < i \le \tilde z \\
          0 & \text{otherwise},
        \end{cases}

    DisARM on the choices both sequences reach, and on those only one reaches
    the other's term integrated over the choice it never made
    (Rao-Blackwellization); it is passed to :math:`\theta` through
    :math:`\eta`. Two model evaluations per particle whatever :math:`C` (ARSM
    needs :math:`1 + C(C-1)/2`); a ``.to_event`` site's latents are flipped
    together, in one evaluation. Structures as :class:`ARSMELBO`.

    :param int num_particles: independent estimates averaged.

    **References**

    [1] `Coupled Gradient Estimators for Discrete Latent Variables`, Zhe
    Dong, Andriy Mnih, George Tucker (NeurIPS 2021)

    [2] `DisARM: An Antithetic Gradient Estimator for Binary Latent
    Variables`, Zhe Dong, Andriy Mnih, George Tucker (NeurIPS 2020)
    """

    def __init__(self, num_particles=1, **kwargs):
        super().__init__(num_particles=num_particles, binary="disarm", categorical="disarm", **kwargs)


class PseudoActionGradient(Surrogate):
    """
    The ARSM / ARM / DisARM surrogate: for every augmented site, the
    estimator's gradient with respect to the site's logits (from the costs at
    the sample and at its pseudo-actions, one batched replay per trace),
    applied as ``(gradient.detach() * logits).sum()``; pathwise terms for the
    rest.
    """

    assumes = frozenset([INDEPENDENT, LEFT_DIMS])

    def check_structure(self, structure, names=None):
        # a lone Bernoulli site's pseudo-action is one row: a model that moves the row dim mixes nothing. With
        # several discrete sites every site's rows go into one batched replay, and they would mix.
        sites = [s for n, s in structure.sites.items() if names is None or n in names]
        lone_bernoulli = len(sites) == 1 and sites[0].kind == BERNOULLI
        return check_assumptions({INDEPENDENT}, structure, names) or check_assumptions(
            {LEFT_DIMS}, structure, [] if lone_bernoulli else names
        )

    site_kinds = frozenset([BERNOULLI, CATEGORICAL, ONEHOT, CONTINUOUS])

    def __init__(self, binary="disarm", categorical="arsm"):
        if binary not in ("disarm", "arm"):
            raise ValueError("ARSMELBO: binary must be 'disarm' or 'arm', got {!r}".format(binary))
        self.binary = binary
        #: ``"arsm"`` or ``"stick_breaking"`` (coupled DisARM) for categorical sites
        self.categorical = categorical

    def method(self):
        if self.categorical == STICK_BREAKING:
            return "{}({}, {})".format(type(self).__name__, self.binary, self.categorical)
        return "{}({})".format(type(self).__name__, self.binary)

    def bind(self, elbo):
        if elbo.track_dependencies:
            raise EstimatorError(elbo, "track_dependencies is not supported; costs are Rao-Blackwellized by plates.")

    def __call__(self, particles, step):
        _, surrogate_elbo = particles.pathwise_terms()
        return self.site_terms(particles, step, None, -surrogate_elbo)[0] / particles.num_particles

    def site_terms(self, particles, step, names, surrogate):
        """``surrogate`` plus the terms of the sites ``names`` (all: ``None``), summed over particles."""
        for pair in particles:
            sites = [(n, s) for n, s in score_function_sites(pair.guide_trace) if names is None or n in names]
            if not sites:
                continue
            noise, coupled = pair.sampler.noise, pair.sampler.stick_breaking
            rows = {name: _pseudo_actions(*noise[name], stick_breaking=name in coupled) for name, _ in sites}
            replayed = step.replay(pair, rows)
            groups = pair.cost_terms()
            for name, site in sites:
                kind, site_noise, logits = noise[name]
                f_true = broadcast_cost(
                    cost_to_frames(groups, site, widened=step.widened(name)), site["fn"].batch_shape
                )
                if name in coupled:
                    grad = _stick_breaking_gradient(site_noise, logits, f_true, replayed[name][0])
                else:
                    grad = _logit_gradient(kind, site_noise, logits, site["value"], f_true, replayed[name], self.binary)
                surrogate = surrogate + (grad.detach() * logits).sum()
        return surrogate, lambda total: total
