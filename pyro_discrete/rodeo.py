# SPDX-License-Identifier: Apache-2.0
r"""
RODEO: discrete Stein operator control variates for Bernoulli latents (and
Double control variates).
"""

import torch
from torch import nn

from .auxiliary import Auxiliary
from .costs import broadcast_cost, cost_terms, cost_to_frames
from .elbo import DiscreteELBO, Surrogate
from .errors import EstimatorError, check_pair_memory
from .samplers import IIDSampler
from .traces import score_function_sites
from .util import BERNOULLI, CONTINUOUS, site_kind, site_logits

__all__ = ["RODEOELBO", "SteinControlVariates"]


class DifferentiableSamples(IIDSampler):
    """Draws as :class:`~pyro_discrete.samplers.IIDSampler`, and makes Bernoulli values require a gradient."""

    def draw(self, msg):
        if site_kind(msg["fn"]) == BERNOULLI and not msg["args"] and not msg["kwargs"]:
            msg["value"] = msg["fn"].sample().detach().requires_grad_(True)
        else:
            super().draw(msg)


class ControlNetwork(nn.Module):
    """
    :math:`H_\\phi(\\ell, \\bar f) = W_2\\,\\mathrm{LeakyReLU}_{0.3}(W_\\ell \\ell + W_f \\bar f)`:
    two scalar outputs from a Taylor feature and a cost, with the scalars
    :math:`\\alpha, \\beta` of the estimator (both start at zero: the estimator
    starts as leave-one-out).
    """

    def __init__(self, hidden=100):
        super().__init__()
        self.taylor = nn.Linear(1, hidden)
        self.cost = nn.Linear(1, hidden, bias=False)
        self.out = nn.Linear(hidden, 2)
        self.alpha = nn.Parameter(torch.zeros(()))
        self.beta = nn.Parameter(torch.zeros(()))

    slope = 0.3  #: of the LeakyReLU

    def forward(self, taylor, cost):
        hidden = self.taylor(taylor.unsqueeze(-1)) + self.cost(cost.unsqueeze(-1))
        return self.out(nn.functional.leaky_relu(hidden, self.slope)).unbind(-1)

    def mean_over_others(self, taylor, cost):
        r"""
        ``(h1, h2)``, each ``(K, n, P)``: the mean over ``i != j`` of
        ``self(taylor[j, i, n, p], cost[i, n])``, for ``taylor`` of shape
        ``(K, K, n, P)`` and ``cost`` of shape ``(K, n)``, without a tensor of
        ``K * K * n * P * hidden`` numbers.

        For fixed ``(i, n)`` the network is a piecewise-linear function of its
        scalar input :math:`t`: unit :math:`h` is active
        (:math:`w_h t + \beta_h > 0`, :math:`\beta_h = v_h c + b_h`) on one side
        of :math:`\tau_h = -\beta_h / w_h`. With the ``hidden`` breakpoints
        sorted, the output is :math:`A[m]\,t + B[m]` where :math:`m` is the
        number of breakpoints below :math:`t` (a ``searchsorted``) and
        :math:`A, B` are prefix and suffix sums over the sorted units: the
        values are the network's, and so are the parameters' gradients (the
        active set is locally constant), at
        :math:`O(K n \cdot hidden \log hidden + K^2 n P \log hidden)` instead
        of :math:`O(K^2 n P \cdot hidden)`.
        """
        K = cost.shape[0]
        w = self.taylor.weight[:, 0]  # (H,)
        v = self.cost.weight[:, 0]
        beta = cost.unsqueeze(-1) * v + self.taylor.bias  # (K, n, H): the units' intercepts per (i, n)
        rising, falling = w > 0, w < 0  # active right, left of the breakpoint; w == 0: by the sign of beta
        safe = torch.where(rising | falling, w, torch.ones_like(w))
        tau = torch.where(rising | falling, -beta / safe, torch.zeros_like(beta)).detach()
        tau, order = tau.sort(-1)
        W2 = self.out.weight  # (2, H)
        # per unit and output: the slope and the intercept it adds when active, in sorted order
        unit_slope = (W2 * w).unsqueeze(1).unsqueeze(1)  # (2, 1, 1, H)
        unit_inter = W2.unsqueeze(1).unsqueeze(1) * beta  # (2, K, n, H)
        unit_slope = unit_slope.expand(unit_inter.shape).gather(-1, order.expand(unit_inter.shape))
        unit_inter = unit_inter.gather(-1, order.expand(unit_inter.shape))
        up = rising[order].to(beta.dtype)  # (K, n, H)
        down = falling[order].to(beta.dtype)
        always = ((w == 0)[order] & (beta.gather(-1, order) > 0)).to(beta.dtype)

        def table(u):
            # active contribution with m breakpoints below t, m = 0 .. H: rising units among the first m,
            # falling units among the rest, and the flat units that are on
            zero = u.new_zeros(u.shape[:-1] + (1,))
            prefix = torch.cat([zero, (u * up).cumsum(-1)], -1)
            suffix = torch.cat([(u * down).flip(-1).cumsum(-1).flip(-1), zero], -1)
            return prefix + suffix + (u * always).sum(-1, keepdim=True)

        leak = self.slope
        A = leak * unit_slope.sum(-1, keepdim=True) + (1 - leak) * table(unit_slope)  # (2, K, n, H + 1)
        B = leak * unit_inter.sum(-1, keepdim=True) + (1 - leak) * table(unit_inter) + self.out.bias.reshape(2, 1, 1, 1)
        # points (j, i, n, p) -> (i, n, j * p), for a searchsorted per (i, n)
        J, _, n, P = taylor.shape
        points = taylor.permute(1, 2, 0, 3).reshape(K, n, J * P).detach()
        m = torch.searchsorted(tau.contiguous(), points.contiguous())  # breakpoints strictly below each point
        t = taylor.permute(1, 2, 0, 3).reshape(K, n, J * P)
        others = (~torch.eye(K, dtype=torch.bool, device=cost.device)).to(cost.dtype)  # [i, j]
        weight = (others / (K - 1)).reshape(K, 1, K, 1)
        outputs = []
        for o in range(2):
            value = A[o].gather(-1, m) * t + B[o].gather(-1, m)  # (i, n, j * p)
            value = (value.reshape(K, n, J, P) * weight).sum(0)  # (n, j, p): mean over i != j
            outputs.append(value.permute(1, 0, 2))
        return tuple(outputs)


class SteinControlVariates(Surrogate):
    """
    The RODEO surrogate (see :class:`RODEOELBO`): per Bernoulli site and plate
    element, the logit-gradient estimate ``g`` applied as
    ``(g.detach() * logits).sum()``, and the variance objective ``mean(g**2)``
    for the control variates' parameters.
    """

    site_kinds = frozenset([BERNOULLI, CONTINUOUS])

    def __init__(self, variant="rodeo", hidden=100, name="rodeo_control", max_pair_bytes=2**31):
        if variant not in ("rodeo", "double_cv"):
            raise ValueError("RODEOELBO: variant must be 'rodeo' or 'double_cv', got {!r}".format(variant))
        self.variant = variant
        self.hidden = hidden
        self.max_pair_bytes = max_pair_bytes
        self.auxiliary = Auxiliary(name, ControlNetwork(hidden))

    def _check_pair_memory(self, elbo, name, f, x):
        # RODEO evaluates its network at every ordered pair of particles (h_j averages H over the other K - 1
        # samples, and H is not linear): K * K * elements * (1 + D) points, each with its breakpoint index and
        # a few numbers kept for the backward pass (measured: 35-58 bytes a point in float32, K = 100-2000).
        # Refuse before allocating what would not fit, rather than let the process be killed.
        K = f.shape[0]
        check_pair_memory(
            elbo,
            name,
            K * K * f.shape[1] * (1 + x.shape[-1]) * (10 * f.element_size() + 16),
            self.max_pair_bytes,
            "RODEO's control variates evaluate their network at every pair of the {} particles for guide site '{}' "
            "({} elements of {} bits)".format(K, name, f.shape[1], x.shape[-1]),
            "variant='double_cv' (linear in the particles), or leave-one-out (TraceScoreELBO)",
            ("double_cv", "loo"),
        )

    def method(self):
        return "{}({})".format(type(self).__name__, self.variant)

    def bind(self, elbo):
        if elbo.num_particles < 2 or not elbo.vectorize_particles:
            raise EstimatorError(
                elbo,
                "needs num_particles >= 2 vectorized particles (leave-one-out over them), got "
                "num_particles={}, vectorize_particles={}".format(elbo.num_particles, elbo.vectorize_particles),
            )
        if elbo.track_dependencies:
            raise EstimatorError(elbo, "track_dependencies is not supported")

    def check_site(self, elbo, name, site):
        if site_kind(site["fn"]) not in self.site_kinds:
            raise EstimatorError(
                elbo,
                "guide site '{}' is not a Bernoulli site: the discrete Stein operator here is over single-bit "
                "flips (RODEO's binary construction).".format(name),
                sites=(name,),
                requirement="site_kind",
                suggest=True,
            )

    def jit_unsupported(self):
        return "its control variates learn between steps."

    def auxiliary_modules(self):
        return {self.auxiliary.name: self.auxiliary.module}

    def __call__(self, particles, step):
        _, surrogate_elbo = particles.pathwise_terms()
        surrogate = -surrogate_elbo / particles.num_particles
        (pair,) = particles.pairs
        sites = score_function_sites(pair.guide_trace)
        if not sites:
            return surrogate
        network = self.auxiliary.register()
        groups = cost_terms(pair.model_trace, pair.guide_trace, detach=False)
        objective = 0.0
        for name, site in sites:
            fn, x = site["fn"], site["value"]
            batch = fn.batch_shape
            f = broadcast_cost(
                cost_to_frames(groups, site, widened=step.widened(name)), batch
            )  # with its graph to the values
            # the features are any function of the other samples: a cost that is not differentiable in the
            # values (a model indexing with them) leaves the estimator unbiased, with weaker control variates
            (grad_f,) = torch.autograd.grad(f.sum(), [x], retain_graph=True, allow_unused=True)
            if grad_f is None:
                grad_f = torch.zeros_like(x)
            logits = site_logits(fn)
            g, estimate = self._logit_gradient(
                network, f.detach(), x.detach(), grad_f.detach(), logits.detach(), particles, name, step.elbo
            )
            surrogate = surrogate + (g.detach() * logits).sum() / particles.num_particles
            objective = objective + estimate.pow(2).mean()  # the variance of the estimate, up to a constant
        return surrogate + self.auxiliary.term(objective)

    def _logit_gradient(self, network, f, x, grad_f, logits, particles, name=None, elbo=None):
        """
        ``(g, estimate)``: the per-particle terms of the logit-gradient estimate, shaped like ``logits``, and
        the estimate (their mean over particles), ``(elements, D)``.
        """
        pdim = particles.pairs[0].particle_dim
        batch_dims = f.dim()
        j = pdim + batch_dims if pdim < 0 else pdim  # the particle dim as a positive index
        # flatten: (K, elements, D)
        K = f.shape[j]
        f = f.movedim(j, 0).reshape(K, -1)
        shape = x.shape
        x = x.movedim(j, 0).reshape(K, f.shape[1], -1)
        grad_f = grad_f.movedim(j, 0).reshape(x.shape)
        theta = torch.sigmoid(logits).movedim(j, 0).reshape(x.shape)
        score = x - theta  # d log q / d logits
        flip = 1 - 2 * x  # the change of each bit when flipped
        weight = torch.where(x > 0.5, 1 - theta, theta) / x.shape[-1]  # q of the flipped value, / D
        alpha, beta = network.alpha, network.beta
        if self.variant == "rodeo" and elbo is not None:
            self._check_pair_memory(elbo, name, f, x)
        if self.variant == "double_cv":
            g = self._double_cv(f, grad_f, x, theta, score, K, alpha)
        else:
            g = self._rodeo(network, f, grad_f, x, score, flip, weight, K, alpha, beta)
        return g.reshape((K,) + tuple(shape[:j]) + tuple(shape[j + 1 :])).movedim(0, j), g.mean(0)

    def _rodeo(self, network, f, grad_f, x, score, flip, weight, K, alpha, beta):
        # h_j(y) = mean over i != j of H(grad f(x_i) . (y - x_i), f(x_i)), at y = x_j and its D single flips
        base = ((x.unsqueeze(1) - x.unsqueeze(0)) * grad_f.unsqueeze(0)).sum(-1)  # [j, i, n]: grad f_i . (x_j - x_i)
        delta = grad_f.unsqueeze(0) * flip.unsqueeze(1)  # [j, i, n, d]: the change for flipping bit d of x_j
        taylor = torch.cat([base.unsqueeze(-1), base.unsqueeze(-1) + delta], -1)  # [j, i, n, 1 + D]
        h1, h2 = network.mean_over_others(taylor, f)  # [j, n, 1 + D]: at x_j, then its flips
        # (A u)(x) = sum_d w_d [u(x flipped at d) - u(x)]
        stein_h1 = (weight * (h1[..., 1:] - h1[..., :1])).sum(-1)  # [j, n]
        r = f + alpha * stein_h1
        baseline = (r.sum(0, keepdim=True) - r) / (K - 1)  # [k, n]: mean of r over j != k
        # A[h2 s](x) = s(x) sum_d w_d (h2(x^d) - h2(x)) + w_d h2(x^d) flip_d e_d
        stein_vector = score * (weight * (h2[..., 1:] - h2[..., :1])).sum(-1, keepdim=True)
        stein_vector = stein_vector + weight * h2[..., 1:] * flip
        return (f - baseline).unsqueeze(-1) * score + beta * stein_vector

    def _double_cv(self, f, grad_f, x, theta, score, K, alpha):
        # c_k(x) = alpha * mean_{j != k} grad f(x_j) . (x - theta); its expectation subtracted analytically
        mean_other = (grad_f.sum(0, keepdim=True) - grad_f) / (K - 1)  # [k, n, d]
        c = alpha * (mean_other * score).sum(-1)  # [k, n]
        r = f + c
        baseline = (r.sum(0, keepdim=True) - r) / (K - 1)
        # E[c_k(x_k) s(x_k) | the other samples] = alpha * mean_other_k * theta_k (1 - theta_k), per sample k (the
        # guide's probabilities may differ between samples, e.g. below a continuous site)
        expectation = alpha * mean_other * theta * (1 - theta)
        return (f + c - baseline).unsqueeze(-1) * score - expectation


class RODEOELBO(DiscreteELBO):
    r"""
    RODEO [1]: leave-one-out over ``K`` samples with control variates built
    from a discrete Stein operator, for Bernoulli guide sites (``.to_event``
    included). For the Gibbs kernel that resamples one bit,
    :math:`(Au)(x) = \frac1D\sum_d q_d(\bar x_d)\,[u(x^{\oplus d}) - u(x)]` has
    zero mean under :math:`q` for every :math:`u`, so with
    :math:`s(x) = x - \sigma(\eta)` (the score of the logits),

    .. math::

        r_j = f(x_j) + \alpha\,(A h^{(1)}_j)(x_j), \qquad
        \hat g_\eta = \frac1K\sum_k \Big[\big(f(x_k) - \tfrac1{K-1}\textstyle\sum_{j\ne k} r_j\big)\,s(x_k)
                      + \beta\,(A[h^{(2)}_k s])(x_k)\Big],

    unbiased for any :math:`\alpha, \beta` and any :math:`h_k` built from the
    samples other than :math:`x_k`. Here (the "adapted" auxiliary function)
    :math:`h_k(y)` is a small network :math:`H_\phi` (:class:`ControlNetwork`)
    of the first-order Taylor feature
    :math:`\nabla f(x_j)\cdot(y - x_j)` and the cost :math:`f(x_j)` of the
    other samples, averaged over them: the ``D`` neighbours of every sample
    cost network evaluations, not model evaluations. A step evaluates the
    model at the ``K`` samples and takes one backward pass for
    :math:`\nabla_x f`, so the model must be differentiable in the site's
    values (a clear error names the site otherwise). :math:`\alpha, \beta`
    (both starting at zero, where the estimator is leave-one-out) and
    :math:`\phi` learn by minimizing the mean square of :math:`\hat g_\eta`,
    through :class:`~pyro.infer.SVI` or a torch optimizer over
    ``elbo(model, guide).parameters()`` (see :mod:`~pyro_discrete.auxiliary`).

    ``variant="double_cv"`` is Double control variates [2] instead: the
    leave-one-out baseline plus
    :math:`c_k(x) = \alpha\,\overline{\nabla f}_{-k}\cdot(x - \sigma(\eta))`, its
    expectation :math:`\alpha\,\overline{\nabla f}\odot\sigma(\eta)(1-\sigma(\eta))`
    subtracted; one learned scalar, no network.

    Only Bernoulli sites: the repositories of both papers are binary, and the
    categorical construction is not implemented here (a categorical site is an
    error that suggests the estimators that take it).

    :param int num_particles: ``K >= 2``, vectorized.
    :param str variant: ``"rodeo"`` or ``"double_cv"``.
    :param int hidden: width of :math:`H_\phi`.
    :param int max_pair_bytes: RODEO evaluates :math:`H_\phi` at every pair of
        particles, so its memory grows as ``K**2``: about
        ``K**2 * elements * (1 + D)`` points of ``10 * itemsize + 16`` bytes
        (the network is piecewise linear in its input, evaluated through its
        sorted breakpoints, so no point holds ``hidden`` activations; see
        :meth:`~pyro_discrete.rodeo.ControlNetwork.mean_over_others`). A step that would hold more
        than this many bytes is an :class:`~pyro_discrete.errors.EstimatorError`
        before anything is allocated (default 2 GiB). ``double_cv`` is linear
        in ``K``.

    **References**

    [1] `Gradient Estimation with Discrete Stein Operators`, Jiaxin Shi, Yuhao
    Zhou, Jessica Hwang, Michalis K. Titsias, Lester Mackey (NeurIPS 2022)

    [2] `Double Control Variates for Gradient Estimation in Discrete Latent
    Variable Models`, Michalis K. Titsias, Jiaxin Shi (AISTATS 2022)
    """

    def __init__(
        self, num_particles=2, variant="rodeo", hidden=100, name="rodeo_control", max_pair_bytes=2**31, **kwargs
    ):
        super().__init__(
            num_particles=num_particles,
            sampler=DifferentiableSamples,
            loss_sampler=IIDSampler,
            surrogate=SteinControlVariates(variant, hidden, name, max_pair_bytes),
            **kwargs,
        )
