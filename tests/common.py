# SPDX-License-Identifier: Apache-2.0
"""
Model families and a statistical harness shared by the estimator tests.

Every family is a :class:`Family` with a model, a guide, their arguments, the
model's plate nesting and, where Pyro's own exact :class:`TraceEnum_ELBO`
applies, an equivalent model/guide written with one site per latent.

Gradient draws are made in batches with :mod:`pyro_discrete.statistics` (the
module :mod:`pyro_discrete.diagnostics` uses): the model and guide are run
inside an outer plate of ``D`` copies, so one pass computes the sum of ``D``
independent copies of the estimator; ``B`` passes give ``B`` independent batch
means, whose spread gives the standard error of the overall mean of ``B·D``
draws.
"""

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import constraints

from pyro_discrete.elbo import Step
from pyro_discrete.statistics import bias_z, draw_statistics, draws_plate


# ----------------------------------------------------------------------
# model families
# ----------------------------------------------------------------------
@dataclass
class Family:
    name: str
    model: Callable
    guide: Callable
    args: tuple
    max_plate_nesting: int
    # exact reference: "expect" (ExpectELBO on this model), "enum" (TraceEnum_ELBO
    # on the separate-site model below), or "sampled" (ExpectELBO with many draws,
    # for families with continuous latents)
    reference: str = "expect"
    separate_model: Optional[Callable] = None
    separate_guide: Optional[Callable] = None
    # arguments of the full-data version (no subsampling) for exact references
    exact_args: Optional[tuple] = None
    init: Callable = field(default=lambda: None)
    # the kinds of its guide sites, and whether a guide site depends on a discrete one
    kinds: frozenset = frozenset()
    discrete_dependency: bool = False
    discrete_sites: int = 1
    # a Bernoulli (categorical) guide site depends on another sampled guide site: its distribution differs
    # between particles, which estimators that couple the particles' draws of such sites refuse
    bernoulli_parent: bool = False
    categorical_parent: bool = False
    # every discrete guide site in the same plates (what a set drawn across sites needs)
    discrete_same_plates: bool = True


def coupled_kinds(entry):
    """The site kinds a registry entry draws coupled across particles (none for most)."""
    return getattr(entry.make().surrogate, "coupled_kinds", frozenset()) if entry.coupled_particles else frozenset()


def refuses_coupled_parent(entry, structure):
    """Whether the entry couples a kind of site that has a sampled parent in ``structure`` (a family or structure)."""
    kinds = coupled_kinds(entry)
    return (structure.bernoulli_parent and "bernoulli" in kinds) or (
        structure.categorical_parent and bool({"categorical", "onehot"} & kinds)
    )


def applicable(entry, family):
    """Whether a registry entry takes every guide site of the family."""
    return (
        family.kinds <= entry.site_kinds
        and (entry.guide_dependencies or not family.discrete_dependency)
        and not refuses_coupled_parent(entry, family)
        and (entry.cost != "set" or family.discrete_same_plates)
        and (not entry.single_site or family.discrete_sites <= 1)
    )


def _local_categorical(subsample_size=3):
    """A local categorical in a subsampled data plate; model parameter ``loc``."""
    data = torch.tensor([-1.5, 0.3, 1.2, 2.0, -0.4, 0.9])
    N = len(data)

    def model(data, subsample_size):
        loc = pyro.param("loc", torch.tensor([-1.0, 0.0, 1.5]))
        with pyro.plate("data", N, subsample_size=subsample_size) as idx:
            z = pyro.sample("z", dist.Categorical(logits=torch.tensor([0.2, -0.3, 0.1])))
            pyro.sample("x", dist.Normal(loc[z], 0.8), obs=data[idx])

    def guide(data, subsample_size):
        logits = pyro.param("z_logits", torch.linspace(-1, 1, N * 3).reshape(N, 3).sin())
        with pyro.plate("data", N, subsample_size=subsample_size) as idx:
            pyro.sample("z", dist.Categorical(logits=logits[idx]))

    return Family(
        "local_categorical_subsampled",
        model,
        guide,
        (data, subsample_size),
        1,
        reference="enum",
        separate_model=model,
        separate_guide=guide,
        exact_args=(data, None),
        kinds=frozenset(["categorical"]),
    )


def _global_bernoulli_local_categorical():
    """A global Bernoulli whose value changes the guide of a local categorical."""
    data = torch.tensor([0.0, 1.0, 2.0, -1.0, 0.5])
    N = len(data)

    def model(data):
        loc = pyro.param("loc", torch.tensor([-1.0, 0.0, 1.0]))
        shift = pyro.param("shift", torch.tensor(0.7))
        g = pyro.sample("g", dist.Bernoulli(0.4))
        with pyro.plate("data", N):
            z = pyro.sample("z", dist.Categorical(logits=torch.zeros(3)))
            pyro.sample("x", dist.Normal(loc[z] + shift * g, 1.0), obs=data)

    def guide(data):
        g_logit = pyro.param("g_logit", torch.tensor(0.3))
        z_logits = pyro.param("z_logits", torch.linspace(-1, 1, 2 * N * 3).reshape(2, N, 3).cos())
        g = pyro.sample("g", dist.Bernoulli(logits=g_logit))
        with pyro.plate("data", N):
            pyro.sample("z", dist.Categorical(logits=z_logits[0] + g.unsqueeze(-1) * (z_logits[1] - z_logits[0])))

    return Family(
        "global_bernoulli_local_categorical",
        model,
        guide,
        (data,),
        1,
        reference="enum",
        separate_model=model,
        separate_guide=guide,
        kinds=frozenset(["bernoulli", "categorical"]),
        discrete_dependency=True,
        categorical_parent=True,
        discrete_same_plates=False,
        discrete_sites=2,
    )


K, C, D_OBS = 2, 3, 5


def _decoder_params():
    w1 = pyro.param("dec_w1", torch.linspace(-1, 1, K * C * 4).reshape(K * C, 4).sin() * 1.5)
    w2 = pyro.param("dec_w2", torch.linspace(-1, 1, 4 * D_OBS).reshape(4, D_OBS).cos())
    return w1, w2


def _decode(z_flat):
    w1, w2 = _decoder_params()
    return torch.tanh(z_flat @ w1) @ w2


def _to_event_onehot():
    """K one-hot latents in one ``.to_event(1)`` site, nonlinear decoder."""
    x = torch.tensor([[1.0, 0, 1, 1, 0], [0, 0, 1, 0, 1], [1, 1, 1, 0, 0], [0, 1, 0, 0, 0]])
    B = x.shape[0]

    def model(x):
        prior = pyro.param("prior_logits", torch.tensor([[0.1, -0.2, 0.3], [0.0, 0.4, -0.1]]))
        with pyro.plate("data", B):
            z = pyro.sample("z", dist.OneHotCategorical(logits=prior).to_event(1))
            logits = _decode(z.reshape(z.shape[:-2] + (K * C,)))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(x):
        q = pyro.param("q_logits", torch.linspace(-2, 2, B * K * C).reshape(B, K, C).sin())
        with pyro.plate("data", B):
            pyro.sample("z", dist.OneHotCategorical(logits=q).to_event(1))

    def separate_model(x):
        prior = pyro.param("prior_logits", torch.tensor([[0.1, -0.2, 0.3], [0.0, 0.4, -0.1]]))
        with pyro.plate("data", B):
            zs = [pyro.sample("z_{}".format(k), dist.OneHotCategorical(logits=prior[k])) for k in range(K)]
            zs = torch.broadcast_tensors(*zs)
            logits = _decode(torch.cat(zs, -1))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def separate_guide(x):
        q = pyro.param("q_logits", torch.linspace(-2, 2, B * K * C).reshape(B, K, C).sin())
        with pyro.plate("data", B):
            for k in range(K):
                pyro.sample("z_{}".format(k), dist.OneHotCategorical(logits=q[:, k]))

    return Family(
        "to_event_onehot",
        model,
        guide,
        (x,),
        1,
        reference="enum",
        separate_model=separate_model,
        separate_guide=separate_guide,
        kinds=frozenset(["onehot"]),
    )


def _bernoulli_vector():
    """A Bernoulli vector ``.to_event(1)`` site with a nonlinear likelihood."""
    x = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.2, -0.3], [0.0, 0.8, 1.1]])
    B, L = x.shape[0], 4

    def model(x):
        w = pyro.param("w", torch.linspace(-1, 1, L * 3).reshape(L, 3).sin() * 2)
        with pyro.plate("data", B):
            b = pyro.sample("b", dist.Bernoulli(torch.full((L,), 0.4)).to_event(1))
            pyro.sample("x", dist.Normal(torch.sin(b @ w) * 1.5, 0.7).to_event(1), obs=x)

    def guide(x):
        q = pyro.param("b_logits", torch.linspace(-1.5, 1.5, B * L).reshape(B, L).cos())
        with pyro.plate("data", B):
            pyro.sample("b", dist.Bernoulli(logits=q).to_event(1))

    return Family("bernoulli_vector", model, guide, (x,), 1, reference="expect", kinds=frozenset(["bernoulli"]))


def _continuous_global_discrete_local():
    """A continuous global latent (reparameterized) with discrete locals depending on it."""
    data = torch.tensor([0.3, -1.2, 1.8, 0.9])
    N = len(data)

    def model(data):
        scale = pyro.param("obs_scale", torch.tensor(0.9), constraint=constraints.positive)
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("data", N):
            z = pyro.sample("z", dist.Bernoulli(logits=w))
            pyro.sample("x", dist.Normal(2.0 * z - 1.0 + 0.5 * w, scale), obs=data)

    def guide(data):
        mu = pyro.param("w_loc", torch.tensor(0.2))
        sd = pyro.param("w_scale", torch.tensor(0.6), constraint=constraints.positive)
        a = pyro.param("z_a", torch.tensor([0.1, -0.4, 0.8, 0.3]))
        c = pyro.param("z_c", torch.tensor(0.5))
        w = pyro.sample("w", dist.Normal(mu, sd))
        with pyro.plate("data", N):
            pyro.sample("z", dist.Bernoulli(logits=a + c * w))

    return Family(
        "continuous_global_discrete_local",
        model,
        guide,
        (data,),
        1,
        reference="sampled",
        kinds=frozenset(["continuous", "bernoulli"]),
        bernoulli_parent=True,
    )


class Encoder(nn.Module):
    def __init__(self, d_in, k, c, hidden=8):
        super().__init__()
        self.k, self.c = k, c
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, k * c))

    def forward(self, x):
        return self.net(x).reshape(x.shape[:-1] + (self.k, self.c))


class Decoder(nn.Module):
    def __init__(self, k, c, d_out, hidden=8):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(k * c, hidden), nn.Tanh(), nn.Linear(hidden, d_out))

    def forward(self, z):
        return self.net(z.reshape(z.shape[:-2] + (-1,)))


def _amortized_vae():
    """A small amortized VAE: nn encoder/decoder registered with ``pyro.module``."""
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(6, 7, generator=gen) < 0.4).to(torch.get_default_dtype())
    k, c = 2, 3
    torch.manual_seed(1)
    encoder, decoder = Encoder(7, k, c), Decoder(k, c, 7)
    for p in list(encoder.parameters()) + list(decoder.parameters()):
        p.data.mul_(2.0)

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.OneHotCategorical(logits=x.new_zeros(k, c)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.OneHotCategorical(logits=encoder(x)).to_event(1))

    return Family("amortized_vae", model, guide, (x,), 1, reference="expect", kinds=frozenset(["onehot"]))


FAMILY_BUILDERS = {
    "local_categorical_subsampled": _local_categorical,
    "global_bernoulli_local_categorical": _global_bernoulli_local_categorical,
    "to_event_onehot": _to_event_onehot,
    "bernoulli_vector": _bernoulli_vector,
    "continuous_global_discrete_local": _continuous_global_discrete_local,
    "amortized_vae": _amortized_vae,
}


def make_family(name):
    return FAMILY_BUILDERS[name]()


# ----------------------------------------------------------------------
# statistical harness
# ----------------------------------------------------------------------
def _params():
    store = pyro.get_param_store()
    return {name: store.get_param(name).unconstrained() for name in sorted(store.keys())}


def init_params(family):
    """Create the family's parameters deterministically (runs guide and model once)."""
    pyro.get_param_store().clear()
    pyro.set_rng_seed(123)
    pyro.poutine.block(family.guide)(*family.args)
    pyro.poutine.block(family.model)(*family.args)
    return _params()


def gradient_draws(elbo, family, num_batches=50, draws_per_batch=40, seed=0, args=None, warmup=0):
    """
    ``num_batches * draws_per_batch`` independent draws of ``elbo``'s gradient
    (with respect to every parameter, unconstrained) and loss, through
    ``differentiable_loss`` (so the estimator's state advances as in
    training), without changing any parameter. Returns a
    :class:`~pyro_discrete.statistics.DrawStatistics`.
    """
    args = family.args if args is None else args
    dim = -(family.max_plate_nesting + 1)
    model = draws_plate(family.model, draws_per_batch, dim)
    guide = draws_plate(family.guide, draws_per_batch, dim)
    params = _params()
    names = list(params)
    pyro.set_rng_seed(seed)
    for _ in range(warmup):
        elbo.differentiable_loss(model, guide, *args)
    batches = []
    for _ in range(num_batches):
        loss = elbo.differentiable_loss(model, guide, *args)
        grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
        grads = [torch.zeros_like(params[n]) if g is None else g for n, g in zip(names, grads)]
        batches.append((loss.item(), grads))
    return draw_statistics(batches, names, draws_per_batch)


def first_traces(elbo, model, guide, args=(), kwargs=None, for_gradient=True):
    """``(model_trace, guide_trace)`` of the first particle set that ``elbo`` draws (no gradient step)."""
    step = Step(elbo, model, guide, tuple(args), kwargs or {}, False)
    pair = elbo._draw(step, for_gradient).pairs[0]
    return pair.model_trace, pair.guide_trace


def exact_gradient(family, elbo=None):
    """
    The exact loss and gradient: Pyro's TraceEnum_ELBO on the separate-site
    model when the family has one, else ExpectELBO on the model itself.
    """
    from pyro.infer import TraceEnum_ELBO, config_enumerate

    from pyro_discrete import ExpectELBO

    args = family.exact_args or family.args
    params = _params()
    names = list(params)
    if family.reference == "enum":
        elbo = TraceEnum_ELBO(max_plate_nesting=family.max_plate_nesting)
        loss = elbo.differentiable_loss(
            family.separate_model, config_enumerate(family.separate_guide, "parallel"), *args
        )
    else:
        elbo = elbo or ExpectELBO()
        loss = elbo.differentiable_loss(family.model, family.guide, *args)
    g = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
    return loss.item(), {n: (torch.zeros_like(params[n]) if gi is None else gi) for n, gi in zip(names, g)}


def reference(family, num_batches=50, draws_per_batch=400):
    """``(loss, loss_se, grads, grad_ses)`` of the family's exact reference."""
    from pyro_discrete import ExpectELBO

    if family.reference == "sampled":
        stats = gradient_draws(ExpectELBO(), family, num_batches, draws_per_batch, seed=99)
        return stats.loss, stats.loss_se, stats.mean, stats.se
    loss, grads = exact_gradient(family)
    return loss, 0.0, grads, {n: torch.zeros_like(g) for n, g in grads.items()}


def check_unbiased(stats, ref, num_se=5.0, what=""):
    """
    Assert that every gradient element and the loss lie within ``num_se``
    standard errors of the reference. Returns the largest z-score seen.
    """
    ref_loss, ref_loss_se, ref_grads, ref_ses = ref
    worst = 0.0
    failures = []
    for n, mean in stats.mean.items():
        z = bias_z(mean, stats.se[n], ref_grads[n], ref_ses[n])
        worst = max(worst, z.max().item() if z.numel() else 0.0)
        if (z > num_se).any():
            i = int(z.flatten().argmax())
            se = (stats.se[n] ** 2 + ref_ses[n] ** 2).sqrt()
            failures.append(
                "{}[{}]: mean {:.5g} vs exact {:.5g} (se {:.3g})".format(
                    n, i, mean.flatten()[i].item(), ref_grads[n].flatten()[i].item(), se.flatten()[i].item()
                )
            )
    loss_se = math.sqrt(stats.loss_se**2 + ref_loss_se**2)
    if abs(stats.loss - ref_loss) > num_se * loss_se + 1e-8 * (1 + abs(ref_loss)):
        failures.append("loss: mean {:.6g} vs exact {:.6g} (se {:.3g})".format(stats.loss, ref_loss, loss_se))
    assert not failures, "{} biased beyond {} standard errors over {} draws: {}".format(
        what, num_se, stats.num_draws, "; ".join(failures)
    )
    return worst


def assert_loss_methods_agree(make_elbo, family, seed=3, check_loss=True):
    """
    ``loss``, ``differentiable_loss``, ``loss_and_grads`` and the ``__call__``
    module give the same value under the same seed, and ``differentiable_loss``
    and ``loss_and_grads`` the same gradients (``check_loss=False``: ``loss``
    is not compared, for estimators whose ``loss`` is another objective).
    """
    params = _params()
    pyro.set_rng_seed(seed)
    loss = make_elbo().loss(family.model, family.guide, *family.args)
    pyro.set_rng_seed(seed)
    dloss = make_elbo().differentiable_loss(family.model, family.guide, *family.args)
    dgrads = torch.autograd.grad(dloss, list(params.values()))
    pyro.set_rng_seed(seed)
    lg = make_elbo().loss_and_grads(family.model, family.guide, *family.args)
    pyro.set_rng_seed(seed)
    module_loss = make_elbo()(family.model, family.guide)(*family.args)
    assert isinstance(loss, float) and isinstance(lg, float)
    if check_loss:
        assert abs(loss - dloss.item()) <= 1e-10 * (1 + abs(loss))
    assert abs(lg - dloss.item()) <= 1e-10 * (1 + abs(lg))
    assert abs(lg - module_loss.item()) <= 1e-10 * (1 + abs(lg))
    for p, g in zip(params.values(), dgrads):
        assert torch.allclose(p.grad, g, atol=1e-10)


def poisson_model_guide():
    """A model/guide pair whose only latent is a Poisson site (neither enumerable nor reparameterizable)."""

    def model():
        pyro.sample("n", dist.Poisson(3.0))

    def guide():
        pyro.sample("n", dist.Poisson(pyro.param("rate", torch.tensor(2.0))))

    return model, guide


def enrollment_gaps(items, names):
    """
    For every collected test marked ``registry_check`` (parametrized over
    ``estimator``), the registered names it does not cover: ``{test id: [names]}``.
    """
    seen = {}
    for item in items:
        if item.get_closest_marker("registry_check") is None:
            continue
        params = getattr(getattr(item, "callspec", None), "params", {})
        seen.setdefault(item.nodeid.split("[")[0], set()).add(params.get("estimator"))
    return {test: sorted(set(names) - covered) for test, covered in seen.items() if set(names) - covered}
