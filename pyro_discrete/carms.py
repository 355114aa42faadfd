# SPDX-License-Identifier: Apache-2.0
r"""
CARMS: ARMS for categorical sites. The particles' draws of a categorical
latent are coupled through the Dirichlet copula, and each pair of particles
is importance-weighted by the ratio of the independent to the coupled
probability of its pair of values.

**The draws.** For a latent with probabilities :math:`q` over :math:`C`
categories and :math:`n` particles, the categories are laid out on
:math:`[0, 1)` in an order :math:`\pi` and particle :math:`i` takes the
category whose interval holds :math:`u_i`, where :math:`u_1..u_n` come from
the Dirichlet copula (:math:`u_i = (1 - d_i)^{n-1}`, :math:`d \sim
\text{Dir}(1_n)`; each :math:`u_i` is uniform, so each draw is exact). The
order is drawn per latent, shared by its particles, uniformly among the
:math:`C(C-1)/2` orders that put one category :math:`a` first and one
:math:`b > a` last (the others in their natural order): the copula makes
small values of two :math:`u` together impossible, and these orders give
every pair of categories a positive probability of being drawn together.

**The pair probabilities.** With the copula's bivariate distribution
function :math:`K(x, y) = \max(0, x^{1/(n-1)} + y^{1/(n-1)} - 1)^{n-1}` and
category :math:`c`'s interval :math:`[L_c^\pi, R_c^\pi)`,

.. math::

    P(z_i = a, z_j = b) = \frac{1}{|\Pi|}\sum_{\pi}
        K(R_a^\pi, R_b^\pi) - K(L_a^\pi, R_b^\pi) - K(R_a^\pi, L_b^\pi) + K(L_a^\pi, L_b^\pi),

exactly (in float64), for :math:`i \ne j`.

**The estimator** [1]. With :math:`w_{ij} = q_{z_i} q_{z_j} / P(z_i, z_j)` and
:math:`f` the cost the site influences,

.. math::

    \hat g_\theta = \frac{1}{n(n-1)} \sum_{i \ne j} w_{ij}\,\big(f(z_i) - f(z_j)\big)
        \nabla_\theta \log q(z_i),

unbiased because the weights turn the coupled pair into an independent one
wherever the coupled pair has positive probability, which is everywhere;
with independent draws (:math:`w = 1`) it is leave-one-out.

**References**

[1] `CARMS: Categorical-Antithetic-REINFORCE Multi-Sample Gradient
Estimator`, Aleksandar Dimitriev, Mingyuan Zhou (NeurIPS 2021)
"""

import torch

from .arms import AntitheticScore, CopulaSampler, apply_masks
from .elbo import DiscreteELBO
from .errors import check_pair_memory
from .util import BERNOULLI, CATEGORICAL, ONEHOT, latent_shape, site_kind, site_logits

__all__ = [
    "CARMSELBO",
    "CARMSSampler",
    "CategoricalCopulaScore",
    "copula_pair_probabilities",
    "pair_probabilities_at",
]

#: the most float64 entries the pair probabilities of one chunk of orders may take (32 MB a tensor)
_CHUNK_ENTRIES = 2**22


def _orders(num_categories, device):
    """``(P, C)``: for each pair ``a < b``, the order ``a``, the others ascending, ``b``."""
    a, b = torch.triu_indices(num_categories, num_categories, 1, device=device)
    categories = torch.arange(num_categories, device=device)
    others = categories.expand(len(a), num_categories)
    keep = (others != a.unsqueeze(-1)) & (others != b.unsqueeze(-1))
    middle = others[keep].reshape(len(a), num_categories - 2)
    return torch.cat([a.unsqueeze(-1), middle, b.unsqueeze(-1)], -1)


def _bivariate_cdf(x, y, num):
    power = 1.0 / (num - 1)
    return (x.pow(power) + y.pow(power) - 1).clamp(min=0).pow(num - 1)


def copula_pair_probabilities(probs, num):
    """
    ``(..., C, C)``: :math:`P(z_i = a, z_j = b)` of two of ``num`` draws of
    :func:`CARMSSampler`'s construction, for probabilities ``probs``
    ``(..., C)``, in float64 (the diagonal included).
    """
    num_categories = probs.shape[-1]
    grid = torch.arange(num_categories, device=probs.device)
    a = grid.repeat_interleave(num_categories).expand(probs.shape[:-1] + (num_categories**2,))
    b = grid.repeat(num_categories).expand(probs.shape[:-1] + (num_categories**2,))
    return pair_probabilities_at(probs, num, a, b).unflatten(-1, (num_categories, num_categories))


def pair_probabilities_at(probs, num, a, b):
    """
    ``(..., m)``: :math:`P(z_i = a, z_j = b)` (see :func:`copula_pair_probabilities`)
    at the category pairs ``a``, ``b`` (``(..., m)`` indices), in float64:
    only the pairs a step draws, :math:`O(|\\Pi|(C + m))` per latent.
    """
    p = probs.detach().to(torch.float64)
    num_categories = p.shape[-1]
    orders = _orders(num_categories, p.device)  # (P, C)
    inverse = orders.argsort(-1)  # (P, C): the position of each category
    batch, m = p.shape[:-1], a.shape[-1]
    total = p.new_zeros(batch + (m,))
    chunk = max(1, _CHUNK_ENTRIES // max(1, p[..., 0].numel() * max(num_categories, m)))
    for start in range(0, len(orders), chunk):
        order, position = orders[start : start + chunk], inverse[start : start + chunk]
        permuted = p.unsqueeze(-2).expand(batch + order.shape).gather(-1, order.expand(batch + order.shape))
        right = permuted.cumsum(-1)
        right = right / right[..., -1:]  # exactly 1 at the end
        right = right.gather(-1, position.expand(batch + position.shape))  # back in category order
        left = (right - p.unsqueeze(-2)).clamp(min=0)
        at_a = a.unsqueeze(-2).expand(batch + (len(order), m))
        at_b = b.unsqueeze(-2).expand(batch + (len(order), m))
        ra, rb = right.gather(-1, at_a), right.gather(-1, at_b)
        la, lb = left.gather(-1, at_a), left.gather(-1, at_b)
        rectangle = (
            _bivariate_cdf(ra, rb, num)
            - _bivariate_cdf(la, rb, num)
            - _bivariate_cdf(ra, lb, num)
            + _bivariate_cdf(la, lb, num)
        )
        total = total + rectangle.clamp(min=0).sum(-2)
    return total / len(orders)


def copula_categorical_draws(probs, num):
    """``(num,) + probs.shape[:-1]`` coupled category indices (see the module's docstring)."""
    p = probs.detach()
    num_categories = p.shape[-1]
    batch = p.shape[:-1]
    orders = _orders(num_categories, p.device)
    order = orders[torch.randint(len(orders), batch, device=p.device)]  # (..., C)
    e = torch.empty((num,) + batch, dtype=p.dtype, device=p.device).exponential_()
    d = e / e.sum(0, keepdim=True)
    u = torch.exp((num - 1) * torch.log1p(-d))  # (num, ...)
    right = p.gather(-1, order).cumsum(-1)
    right = right / right[..., -1:]
    position = (right.unsqueeze(0) <= u.unsqueeze(-1)).sum(-1).clamp(max=num_categories - 1)
    return order.unsqueeze(0).expand((num,) + order.shape).gather(-1, position.unsqueeze(-1)).squeeze(-1)


class CARMSSampler(CopulaSampler):
    """
    :class:`~pyro_discrete.arms.CopulaSampler` that also couples the
    Categorical and OneHotCategorical sites it is given across the particles
    (see the module's docstring), recording :attr:`pair_weights` (site name to
    :math:`w_{ij}`, ``(n, n) + batch + latents`` without the particles' dim,
    zero on the diagonal).

    :param categorical: a predicate on site names (default: every categorical site).
    """

    def __init__(self, elbo, coupled=None, categorical=None):
        super().__init__(elbo, coupled)
        self.categorical = categorical
        #: guide site name -> the pair weights of its particles' draws
        self.pair_weights = {}

    def draw(self, msg):
        fn, name = msg["fn"], msg["name"]
        kind = site_kind(fn)
        if kind not in (CATEGORICAL, ONEHOT) or msg["args"] or msg["kwargs"]:
            return super().draw(msg)
        if self.categorical is not None and not self.categorical(name):
            return super().draw(msg)
        first, j = self.first_particle(msg, "CARMS", "categorical")
        probs = first.squeeze(j).softmax(-1)
        self._check_pair_memory(name, probs)
        index = copula_categorical_draws(probs, self.num)  # (n,) + batch' + latents
        q = probs.to(torch.float64).unsqueeze(0).expand((self.num,) + probs.shape)  # views: nothing copied
        q = q.gather(-1, index.unsqueeze(-1)).squeeze(-1)  # (n,) + batch' + latents: q(z_i)
        shape = (self.num, self.num) + index.shape[1:]
        a = index.unsqueeze(1).expand(shape).flatten(0, 1).movedim(0, -1)  # batch' + latents + (n * n,)
        b = index.unsqueeze(0).expand(shape).flatten(0, 1).movedim(0, -1)
        pair = pair_probabilities_at(probs, self.num, a, b).movedim(-1, 0).unflatten(0, (self.num, self.num))
        diagonal = torch.eye(self.num, dtype=torch.bool, device=index.device)
        diagonal = diagonal.reshape((self.num, self.num) + (1,) * (index.dim() - 1))
        weights = (q.unsqueeze(1) * q.unsqueeze(0) / pair).masked_fill(diagonal, 0.0)
        self.pair_weights[name] = weights.to(first.dtype)
        value = index.movedim(0, j)
        if kind == ONEHOT:
            value = torch.nn.functional.one_hot(value, first.shape[-1]).to(first.dtype)
        msg["value"] = value

    def _check_pair_memory(self, name, probs):
        # every ordered pair of particles gets a weight per latent: n * n * latents numbers (and their category
        # indices), quadratic in the particles by the method's construction; the orders' arithmetic is chunked
        # (at most a few tensors of _CHUNK_ENTRIES). Refuse what would not fit before allocating it.
        n, elements = self.num, probs[..., 0].numel()
        check_pair_memory(
            self.elbo,
            name,
            n * n * elements * 56 + 8 * 8 * _CHUNK_ENTRIES,
            getattr(self.elbo, "max_pair_bytes", 2**31),
            "CARMS weights every pair of its {} particles for each of the {} latents of guide site '{}'".format(
                n, elements, name
            ),
            "coupled DisARM or leave-one-out (linear in the particles)",
            ("coupled_disarm", "loo"),
        )


class CategoricalCopulaScore(AntitheticScore):
    r"""
    The CARMS surrogate: for every coupled categorical site, per particle
    :math:`i` and latent, the signal :math:`\frac{1}{n-1}\sum_{j \ne i} w_{ij}(f_i - f_j)`
    applied to the latent's log-density; Bernoulli sites as ARMS
    (:class:`~pyro_discrete.arms.AntitheticScore`); pathwise terms for the rest.
    """

    coupled_kinds = frozenset([BERNOULLI, CATEGORICAL, ONEHOT])

    def site_term(self, score_site, sampler):
        weights = sampler.pair_weights.get(score_site.name)  # (n, n, batch' + latents)
        if weights is None:
            return super().site_term(score_site, sampler)
        site, fn = score_site.site, score_site.site["fn"]
        cost = score_site.cost.detach().expand(fn.batch_shape)
        dim = score_site.particle_dim % cost.dim()
        front = cost.movedim(dim, 0)  # (n, batch')
        front = front.reshape(front.shape + (1,) * len(latent_shape(fn)))
        signal = (weights * (front.unsqueeze(1) - front.unsqueeze(0))).sum(1) / (front.shape[0] - 1)
        logits = site_logits(fn)
        value = site["value"]
        index = value.argmax(-1) if site_kind(fn) == ONEHOT else value
        log_q = logits.log_softmax(-1).gather(-1, index.expand(logits.shape[:-1]).unsqueeze(-1)).squeeze(-1)
        return (apply_masks(signal.movedim(0, dim), site) * log_q).sum()


class CARMSELBO(DiscreteELBO):
    r"""
    CARMS [1]: the particles' draws of every categorical guide site coupled
    through the Dirichlet copula, with the pairs of particles
    importance-weighted by the ratio of independent to coupled pair
    probabilities (computed exactly),

    .. math::

        \hat g_\theta = \frac{1}{n(n-1)} \sum_{i \ne j} \frac{q(z_i)q(z_j)}{P(z_i, z_j)}
            \big(f(z_i) - f(z_j)\big)\nabla_\theta \log q(z_i)

    per latent (see :mod:`~pyro_discrete.carms`); Bernoulli sites get ARMS
    (:class:`~pyro_discrete.ARMSELBO`), reparameterizable sites and model
    parameters pathwise gradients. No model evaluation beyond the :math:`n`
    particles; the pair probabilities of the drawn pairs cost
    :math:`O(C^2(C + n^2))` arithmetic per latent (over the :math:`C(C-1)/2`
    orders, in chunks), the dominant cost of its step: 281 ms against
    leave-one-out's 46 on the 20 x 10 leaderboard protocol (batch 200, 4
    particles).

    Not supported, and an error naming the site: a discrete site whose
    distribution differs between particles (it depends on another sampled
    guide site), looped particles, fewer than two.

    :param int num_particles: :math:`n`, the coupled draws per step (>= 2).
    :param int max_pair_bytes: the pair weights grow as :math:`n^2` per latent
        (about ``56 * n**2`` bytes a latent, plus a fixed 256 MB for the
        orders' arithmetic, done in chunks); a step that would need more is an
        :class:`~pyro_discrete.errors.EstimatorError` (requirement
        ``"memory"``) before anything is allocated (default 2 GiB).

    **References**

    [1] `CARMS: Categorical-Antithetic-REINFORCE Multi-Sample Gradient
    Estimator`, Aleksandar Dimitriev, Mingyuan Zhou (NeurIPS 2021)

    [2] `ARMS: Antithetic-REINFORCE-Multi-Sample Gradient for Binary
    Variables`, Aleksandar Dimitriev, Mingyuan Zhou (ICML 2021)
    """

    def __init__(self, num_particles=2, max_pair_bytes=2**31, **kwargs):
        self.max_pair_bytes = max_pair_bytes
        super().__init__(
            num_particles=num_particles, sampler=CARMSSampler, surrogate=CategoricalCopulaScore(), **kwargs
        )
