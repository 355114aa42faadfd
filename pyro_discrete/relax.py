# SPDX-License-Identifier: Apache-2.0
r"""
RELAX and REBAR: learned control variates through a continuous relaxation.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .auxiliary import Auxiliary
from .costs import broadcast_cost, cost_terms, cost_to_frames
from .elbo import DiscreteELBO, Surrogate
from .errors import EstimatorError
from .replay import Replay
from .samplers import Sampler
from .straight_through import _LinearModel, _LinearSite
from .structure import INDEPENDENT, LEFT_DIMS, PER_ELEMENT, UNMASKED
from .traces import get_importance_traces, score_function_sites
from .util import BERNOULLI, CATEGORICAL, CONTINUOUS, ONEHOT, batch_dims, site_kind, site_logits

__all__ = ["RELAXELBO", "RELAXSampler", "RELAXSurrogate"]


def _logit(u):
    return u.log() - (-u).log1p()


def _uniform(shape, like):
    eps = torch.finfo(like.dtype).eps
    return torch.rand(shape, dtype=like.dtype, device=like.device).clamp(eps, 1 - eps)


def relaxed_and_conditional(kind, logits):
    """
    ``(z, b, z_tilde)`` for a site's logits (``batch + latent`` for a Bernoulli,
    ``+ (C,)`` for a categorical): the relaxed sample (logistic /
    Gumbel-perturbed logits), the hard sample ``b = H(z)`` (0/1, or the index),
    and a relaxed sample drawn from ``p(z | b)`` with fresh noise. ``z`` and
    ``z_tilde`` carry the gradient of the logits, in the stable forms of the
    conditional sample (the conditional noise is never detached from the
    logits: that was a known source of bias).
    """
    if kind == BERNOULLI:
        z = logits + _logit(_uniform(logits.shape, logits))
        b = (z > 0).to(logits.dtype)
        logit_v = _logit(_uniform(logits.shape, logits))
        above = F.softplus(logit_v + F.softplus(logits))  # b = 1: conditionally above 0
        below = -F.softplus(-logit_v + F.softplus(-logits))  # b = 0
        return z, b, torch.where(b > 0, above, below)
    log_u = torch.log(-torch.log(_uniform(logits.shape, logits)))
    z = logits - log_u  # Gumbel-perturbed logits
    index = z.argmax(-1)
    log_z = logits.logsumexp(-1, keepdim=True)
    log_e = torch.log(-torch.log(_uniform(logits.shape, logits)))  # log of Exp(1) draws
    log_e_top = log_e.gather(-1, index.unsqueeze(-1))
    others = -torch.logaddexp(log_e - logits, log_e_top - log_z)
    z_tilde = others.scatter(-1, index.unsqueeze(-1), log_z - log_e_top)
    return z, index, z_tilde


def relax_soft(kind, z, temperature):
    """The relaxation :math:`\\sigma_\\lambda(z)`: a sigmoid or a softmax at the temperature."""
    return torch.sigmoid(z / temperature) if kind == BERNOULLI else (z / temperature).softmax(-1)


_MEMOIZED = ("log_prob", "log_prob_sum", "unscaled_log_prob", "score_parts")


class RELAXSampler(Sampler):
    """
    Draws every Bernoulli / Categorical / OneHotCategorical guide site through
    its relaxation: the hard sample ``b = H(z)`` is the site's value (exact),
    and ``z``, ``z_tilde`` (with their gradients to the logits) are kept in
    :attr:`relaxed` for the control variate.
    """

    def __init__(self, elbo=None):
        super().__init__(elbo)
        #: guide site name -> ``(kind, logits, z, z_tilde)``, filled as the guide runs: the site's kind, its
        #: logits, the relaxed sample ``z`` and the conditional relaxed sample ``z_tilde`` (both of the logits'
        #: shape, with their gradients to the logits; see ``relaxed_and_conditional``)
        self.relaxed = {}

    def draw(self, msg):
        fn = msg["fn"]
        kind = site_kind(fn)
        if kind not in (BERNOULLI, CATEGORICAL, ONEHOT) or msg["args"] or msg["kwargs"]:
            return
        logits = site_logits(fn)
        z, b, z_tilde = relaxed_and_conditional(kind, logits)
        if kind == ONEHOT:
            msg["value"] = F.one_hot(b, logits.shape[-1]).to(logits.dtype)
        else:
            msg["value"] = b.detach()
        self.relaxed[msg["name"]] = (kind, logits, z, z_tilde)


class _Parameters(nn.Module):
    # the control variate's parameters: REBAR's eta and log temperature (buffers when held fixed), a network
    def __init__(self, temperature, eta, network, learn_temperature, rebar):
        super().__init__()
        log_temperature = torch.tensor(math.log(temperature))
        if learn_temperature:
            self.log_temperature = nn.Parameter(log_temperature)
        else:
            self.register_buffer("log_temperature", log_temperature)
        if rebar:
            self.eta = nn.Parameter(torch.tensor(float(eta)))
        else:
            self.register_buffer("eta", torch.tensor(0.0))
        self.network = network if isinstance(network, nn.Module) else None


class RELAXSurrogate(Surrogate):
    """
    The RELAX surrogate (see :class:`RELAXELBO`): per discrete guide site, the
    logit-gradient estimate :math:`\\hat g` with its graph to the control
    variate's parameters, applied as ``(g.detach() * logits).sum()``, and the
    variance objective ``mean(g**2)`` for those parameters.
    """

    assumes = frozenset([INDEPENDENT, LEFT_DIMS, PER_ELEMENT, UNMASKED])

    site_kinds = frozenset([BERNOULLI, CATEGORICAL, ONEHOT, CONTINUOUS])

    def __init__(self, rebar, network, temperature, learn_temperature, eta, name):
        self.rebar, self.learn_temperature = rebar, learn_temperature
        if rebar:  # the model is run at soft values, which an index site cannot take
            self.site_kinds = frozenset([BERNOULLI, ONEHOT, CONTINUOUS])
        self.callable = network if (network is not None and not isinstance(network, nn.Module)) else None
        self.auxiliary = Auxiliary(name, _Parameters(temperature, eta, network, learn_temperature, rebar))

    def method(self):
        return "{}(rebar={})".format(type(self).__name__, bool(self.rebar))

    def bind(self, elbo):
        if elbo.track_dependencies:
            raise EstimatorError(elbo, "track_dependencies is not supported")

    def check_site(self, elbo, name, site):
        if self.rebar and site_kind(site["fn"]) == CATEGORICAL:
            raise EstimatorError(
                elbo,
                "guide site '{}' is a Categorical (index) site: REBAR's control variate evaluates the model "
                "at relaxed (soft) values, which an index cannot be. Declare it OneHotCategorical, use "
                "RELAXELBO(control_variate=module) (a network only).".format(name),
                sites=(name,),
                requirement="site_kind",
                suggest=True,
            )
        super().check_site(elbo, name, site)

    def jit_unsupported(self):
        return "its control variate learns between steps."

    def auxiliary_modules(self):
        return {self.auxiliary.name: self.auxiliary.module}

    def __call__(self, particles, step):
        _, surrogate_elbo = particles.pathwise_terms()
        surrogate = -surrogate_elbo / particles.num_particles
        parameters = self.auxiliary.register()
        temperature = parameters.log_temperature.exp()
        objective = 0.0
        for pair in particles:
            sites = [(n, s) for n, s in score_function_sites(pair.guide_trace) if n in pair.sampler.relaxed]
            if not sites:
                continue
            soft = {}
            for name, _ in sites:
                kind, logits, z, z_tilde = pair.sampler.relaxed[name]
                soft[name] = (relax_soft(kind, z, temperature), relax_soft(kind, z_tilde, temperature))
            rebar_costs = self._rebar_costs(step, pair, soft) if self.rebar else {}
            groups = pair.cost_terms()
            for name, site in sites:
                kind, logits, z, z_tilde = pair.sampler.relaxed[name]
                batch = site["fn"].batch_shape
                f_b = broadcast_cost(cost_to_frames(groups, site, widened=step.widened(name)), batch).detach()
                c_z, c_tilde = self._control_variate(parameters, kind, soft[name], rebar_costs.get(name), batch)
                d_log_q = self._score(kind, site, logits)
                reduce = tuple(range(-(logits.dim() - len(batch)), 0))
                (d_cz,) = torch.autograd.grad(c_z.sum(), [logits], create_graph=True, allow_unused=True)
                (d_ct,) = torch.autograd.grad(c_tilde.sum(), [logits], create_graph=True, allow_unused=True)
                d_cz = torch.zeros_like(logits) if d_cz is None else d_cz
                d_ct = torch.zeros_like(logits) if d_ct is None else d_ct
                coefficient = (f_b - c_tilde).reshape(batch + (1,) * len(reduce))
                g = coefficient * d_log_q + d_cz - d_ct
                surrogate = surrogate + (g.detach() * logits).sum() / particles.num_particles
                objective = objective + g.pow(2).mean()
        return surrogate + self.auxiliary.term(objective)

    @staticmethod
    def _score(kind, site, logits):
        # d log q(b) / d logits, in closed form
        value = site["value"]
        if kind == BERNOULLI:
            return value - torch.sigmoid(logits.detach())
        onehot = value if kind == ONEHOT else F.one_hot(value, logits.shape[-1]).to(logits.dtype)
        return onehot - logits.detach().softmax(-1)

    def _control_variate(self, parameters, kind, soft, rebar, batch):
        """``(c(z), c(z_tilde))`` per element of the site's batch, with their graphs."""
        c = [0.0, 0.0]
        if rebar is not None:
            c = [parameters.eta * rebar[0], parameters.eta * rebar[1]]
        network = parameters.network if parameters.network is not None else self.callable
        if network is not None:
            for i, value in enumerate(soft):
                flat = value.reshape(batch + (-1,))
                c[i] = c[i] + network(flat).reshape(batch)
        if not torch.is_tensor(c[0]):
            raise ValueError("RELAXELBO: no control variate (neither REBAR's nor a network)")
        return c[0], c[1]

    def _rebar_costs(self, step, pair, soft):
        """
        The cost of every site at its relaxed values (the model run at soft
        values, with gradients), in one batched replay: ``{name: (f(σ(z)), f(σ(z_tilde)))}``.
        """
        names = list(soft)
        num_dims = batch_dims(pair)
        total = 2 * len(names)
        trace = pair.raw_guide_trace.copy()
        for i, name in enumerate(names):
            site = trace.nodes[name]
            fn = site["fn"]
            hard = site["value"]
            batch = fn.batch_shape
            shape = (1,) * (num_dims - len(batch)) + hard.shape
            rows = hard.reshape(shape).unsqueeze(0).expand((total,) + shape).to(soft[name][0].dtype)
            rows = rows.clone() if not rows.requires_grad else rows
            relaxed = torch.stack([soft[name][0].reshape(shape), soft[name][1].reshape(shape)])
            rows = torch.cat([rows[: 2 * i], relaxed, rows[2 * i + 2 :]])
            # a fresh site: the memoized log-densities of the hard value must not be reused
            fresh = {k: v for k, v in site.items() if k not in _MEMOIZED}
            trace.nodes[name] = dict(fresh, value=rows, fn=_LinearSite(fn, rows))
        self._check_structure(step, pair, names)
        linear = _LinearModel(set(names))
        try:
            model_trace, guide_trace = get_importance_traces(
                num_dims, linear(pair.model), None, step.args, step.kwargs, guide_trace=trace
            )
        except (RuntimeError, IndexError, TypeError) as e:
            Replay(step)._raise_broadcast_error(e, total, names, num_dims)
        groups = cost_terms(model_trace, guide_trace, detach=False)
        costs = {}
        for i, name in enumerate(names):
            batch = pair.guide_trace.nodes[name]["fn"].batch_shape
            padded = (total,) + (1,) * (num_dims - len(batch)) + batch
            cost = broadcast_cost(
                cost_to_frames(groups, guide_trace.nodes[name], widened=step.widened(name)), padded
            ).reshape((total,) + batch)
            costs[name] = (cost[2 * i], cost[2 * i + 1])
        step.evaluations += total * pair.num_particles
        return costs

    def _check_structure(self, step, pair, names):
        # the first step of each model and guide: a no-grad replay (two rows of the hard values) checks that no
        # guide site depends on a relaxed site (c would depend on b) and that the model broadcasts over the
        # replay dim (see pyro_discrete.replay)
        if not step.elbo._replay_checks.done(step):
            evaluations = step.evaluations
            Replay(step)(pair, {n: torch.stack([pair.guide_trace.nodes[n]["value"]] * 2) for n in names})
            step.evaluations = evaluations


class RELAXELBO(DiscreteELBO):
    r"""
    RELAX [1] and REBAR [2]: for every Bernoulli, Categorical or
    OneHotCategorical guide site (``.to_event`` included), a relaxed sample
    :math:`z` (logistic / Gumbel-perturbed logits), the hard sample
    :math:`b = H(z)` as the site's value, and a relaxed sample :math:`\tilde z`
    drawn from :math:`p(z\mid b)` with fresh noise; the gradient with respect
    to the site's logits is

    .. math::

        \hat g = \big[f(b) - c_\phi(\tilde z)\big]\,\nabla\log q(b)
                 + \nabla c_\phi(z) - \nabla c_\phi(\tilde z),

    unbiased for any differentiable :math:`c_\phi`, where :math:`f` is the cost
    the site influences. The control variate is

    * ``"rebar"``: :math:`c(z) = \eta\, f(\sigma_\lambda(z))`, the cost at the
      relaxation :math:`\sigma_\lambda` (a sigmoid or softmax at temperature
      :math:`\lambda`): the model is run at soft values (guide and prior
      scored by their log-densities extended linearly), in one batched replay
      with gradients -- two evaluations per site and sample;
    * an ``nn.Module`` (or callable) :math:`r_\rho` of :math:`\sigma_\lambda(z)`
      flattened per plate element (RELAX with a network only; works for
      Categorical index sites too);
    * both (``control_variate="rebar"`` and ``network=module``):
      :math:`\eta f(\sigma_\lambda(z)) + r_\rho(\sigma_\lambda(z))`, the paper's
      best variant.

    :math:`\eta`, :math:`\log\lambda` and :math:`\rho` learn by minimizing
    :math:`\operatorname{mean}(\hat g^2)` (the single-sample variance of the
    logit-gradient, by a second backward pass), through
    :class:`~pyro.infer.SVI` or a torch optimizer over
    ``elbo(model, guide).parameters()`` alike; that objective never reaches
    the model's or guide's parameters (see :mod:`~pyro_discrete.auxiliary`).
    The guide's parameters get :math:`\hat g` through the logits; the model's
    the ordinary pathwise gradient at :math:`b`. A guide site that depends on
    a relaxed site is an error.

    :param control_variate: ``"rebar"``, an ``nn.Module`` or a callable, or
        ``None`` with ``network``.
    :param network: a module added to REBAR's control variate.
    :param float temperature: initial :math:`\lambda`.
    :param bool learn_temperature: learn :math:`\log\lambda`.
    :param float eta: initial :math:`\eta`.
    :param str name: prefix of the control variate's parameters in Pyro's
        param store (two ELBOs with one name share them).

    **References**

    [1] `Backpropagation through the Void: Optimizing Control Variates for
    Black-Box Gradient Estimation`, Will Grathwohl, Dami Choi, Yuhuai Wu,
    Geoffrey Roeder, David Duvenaud (ICLR 2018)

    [2] `REBAR: Low-variance, Unbiased Gradient Estimates for Discrete Latent
    Variable Models`, George Tucker, Andriy Mnih, Chris J. Maddison, Dieterich
    Lawson, Jascha Sohl-Dickstein (NeurIPS 2017)
    """

    def __init__(
        self,
        num_particles=1,
        control_variate="rebar",
        network=None,
        temperature=0.5,
        learn_temperature=True,
        eta=1.0,
        name="relax_control",
        **kwargs,
    ):
        rebar = control_variate == "rebar"
        if not rebar:
            if control_variate is not None and network is not None:
                raise EstimatorError(self, "give the network as control_variate or network, not both")
            network = control_variate if control_variate is not None else network
            if network is None:
                raise EstimatorError(self, "control_variate must be 'rebar', a module or a callable")
        if not temperature > 0:
            raise EstimatorError(self, "temperature must be positive, got {}".format(temperature))
        super().__init__(
            num_particles=num_particles,
            sampler=RELAXSampler,
            surrogate=RELAXSurrogate(rebar, network, temperature, learn_temperature, eta, name),
            **kwargs,
        )

    @property
    def temperature(self):
        """The current (learned) temperature."""
        return self.surrogate.auxiliary.module.log_temperature.exp().item()
