# SPDX-License-Identifier: Apache-2.0
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI
from pyro.optim import Adam

from pyro_discrete import ARSMELBO, TraceScoreELBO

from common import (
    Family,
    assert_loss_methods_agree,
    check_unbiased,
    first_traces,
    gradient_draws,
    init_params,
    make_family,
    poisson_model_guide,
    reference,
)
from tutorial_vae import make_tutorial_vae


@pytest.mark.slow
def test_unbiased_with_vectorized_particles():
    family = make_family("amortized_vae")
    init_params(family)
    stats = gradient_draws(ARSMELBO(num_particles=3), family)
    check_unbiased(stats, reference(family), what="ARSMELBO(num_particles=3)")


def _onehot_model(num_latents, num_categories, calls=None):
    x = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])

    def model():
        if calls is not None:
            calls.append(1)
        w = pyro.param("w", torch.linspace(-1, 1, num_latents * num_categories * 3).reshape(-1, 3))
        with pyro.plate("data", 2):
            z = pyro.sample("z", dist.OneHotCategorical(logits=torch.zeros(num_latents, num_categories)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=torch.tanh(z.flatten(-2) @ w)).to_event(1), obs=x)

    def guide():
        q = pyro.param("q", torch.zeros(2, num_latents, num_categories))
        with pyro.plate("data", 2):
            pyro.sample("z", dist.OneHotCategorical(logits=q).to_event(1))

    return model, guide


@pytest.mark.parametrize("num_latents", [1, 2, 5])
@pytest.mark.parametrize("num_categories", [3, 10])
def test_evaluations_do_not_grow_with_latents(num_latents, num_categories):
    calls = []
    model, guide = _onehot_model(num_latents, num_categories, calls)
    elbo = ARSMELBO(num_particles=2, max_plate_nesting=1)
    elbo.differentiable_loss(model, guide)  # the first step also analyzes the structure (pyro_discrete.structure)
    calls.clear()
    elbo.differentiable_loss(model, guide)
    # the swaps are shared by the K latents: C(C-1)/2 + 1 evaluations per particle
    assert elbo.num_evaluations == 2 * (num_categories * (num_categories - 1) // 2 + 1)
    # and the pseudo-actions are evaluated in ONE batched replay of the model
    assert len(calls) == 2


def test_pseudo_actions_share_swaps_and_match_true_action():
    from pyro_discrete.arsm import _pseudo_actions

    torch.manual_seed(0)
    logits = torch.randn(4, 3, 6)  # batch 4, 3 latents, 6 categories
    e = torch.empty_like(logits).exponential_()
    pi = e / e.sum(-1, keepdim=True)
    rows = _pseudo_actions("categorical", pi, logits)
    assert rows.shape == (15, 4, 3)
    true = (pi.log() - logits).argmin(-1)
    # a swap of two categories that are both more expensive than the argmin keeps the action
    for row, (j, m) in zip(rows, torch.triu_indices(6, 6, 1).t().tolist()):
        same = (true != j) & (true != m)
        swapped_pi = pi.clone()
        swapped_pi[..., [j, m]] = pi[..., [m, j]]
        assert torch.equal(row, (swapped_pi.log() - logits).argmin(-1))
        assert torch.equal(row[same & (true == row)], true[same & (true == row)])


def test_samples_have_the_right_distribution():
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])

    def model():
        with pyro.plate("n", 20000):
            pyro.sample("z", dist.Categorical(probs))
            pyro.sample("b", dist.Bernoulli(0.3))

    elbo = ARSMELBO(max_plate_nesting=1)
    _, guide_trace = first_traces(elbo, model, model, ())
    counts = torch.bincount(guide_trace.nodes["z"]["value"], minlength=4).double() / 20000
    assert torch.allclose(counts, probs, atol=0.015)
    assert guide_trace.nodes["b"]["value"].mean().item() == pytest.approx(0.3, abs=0.015)


def test_error_guide_dependency_names_sites():
    family = make_family("global_bernoulli_local_categorical")
    init_params(family)
    with pytest.raises(NotImplementedError) as info:
        ARSMELBO().differentiable_loss(family.model, family.guide, *family.args)
    error = info.value
    assert (error.estimator, error.sites, error.requirement) == ("ARSMELBO", ("g", "z"), "no_guide_dependencies")
    assert {"score", "loo", "vargrad"} <= set(error.alternatives)


def test_error_unsupported_site():
    model, guide = poisson_model_guide()
    with pytest.raises(NotImplementedError, match=r"ARSMELBO: guide site 'n' \(Poisson\)") as info:
        ARSMELBO().loss(model, guide)
    assert info.value.requirement == "site_kind" and info.value.sites == ("n",)
    assert "loo" in info.value.alternatives and "arsm" not in info.value.alternatives


def test_errors_in_options():
    with pytest.raises(ValueError, match="ARSMELBO: binary must be"):
        ARSMELBO(binary="rebar")


def test_loss_methods_agree():
    family = make_family("amortized_vae")
    init_params(family)
    assert_loss_methods_agree(lambda: ARSMELBO(num_particles=2), family, seed=4)


# ----------------------------------------------------------------------
# toys: E_q[f(z)] written as a model whose prior is the guide's distribution
# (detached), so that log q - log p = 0 and the cost is exactly f(z)
# ----------------------------------------------------------------------
def _toy_categorical(num_categories=30, reward_scale=30):
    def f(z):
        return 0.5 + (z + 1.0) / (num_categories * reward_scale)

    def model():
        theta = pyro.param("theta", torch.zeros(num_categories)).detach()
        z = pyro.sample("z", dist.Categorical(logits=theta))
        pyro.factor("f", -f(z.to(theta.dtype)))

    def guide():
        pyro.sample("z", dist.Categorical(logits=pyro.param("theta", torch.zeros(num_categories))))

    return Family("arsm_toy", model, guide, (), 0)


def _toy_bernoulli(t=0.499):
    def model():
        a = pyro.param("alpha", torch.tensor(0.0)).detach()
        b = pyro.sample("b", dist.Bernoulli(logits=a))
        pyro.factor("f", -((b - t) ** 2))

    def guide():
        pyro.sample("b", dist.Bernoulli(logits=pyro.param("alpha", torch.tensor(0.0))))

    return Family("rebar_toy", model, guide, (), 0)


def _exact_toy_gradient(family):
    from pyro_discrete import ExpectELBO

    params = init_params(family)
    loss = ExpectELBO().differentiable_loss(family.model, family.guide)
    return {n: g for n, g in zip(params, torch.autograd.grad(loss, list(params.values())))}


@pytest.mark.slow
def test_arsm_toy_variance_table():
    family = _toy_categorical()
    exact = _exact_toy_gradient(family)
    evaluations = 30 * 29 // 2 + 1  # ARSM's evaluations for one sample of a 30-way latent
    rows = []
    for name, elbo in [
        ("ARSMELBO", ARSMELBO()),
        ("TraceScoreELBO(loo)", TraceScoreELBO(num_particles=evaluations, baseline="loo")),
        ("TraceScoreELBO(None)", TraceScoreELBO(num_particles=evaluations, baseline=None)),
    ]:
        init_params(family)
        stats = gradient_draws(elbo, family, num_batches=20, draws_per_batch=10)
        bias = (stats.mean["theta"] - exact["theta"]).abs() / stats.se["theta"].clamp(min=1e-30)
        rows.append((name, evaluations, stats.total_variance(), bias.max().item()))
    print(
        "\nARSM toy, f(z) = 0.5 + (z+1)/(C*R), C = R = 30, theta = 0; exact |grad| = {:.3g}".format(
            exact["theta"].norm().item()
        )
    )
    print("| estimator | f evaluations per draw | total gradient variance | max |bias|/se |\n|---|---|---|---|")
    for row in rows:
        print("| {} | {} | {:.3g} | {:.2f} |".format(*row))
    var = {r[0]: r[2] for r in rows}
    assert var["ARSMELBO"] < var["TraceScoreELBO(None)"]
    assert all(r[3] < 5 for r in rows)


@pytest.mark.slow
def test_rebar_toy_variance_table():
    family = _toy_bernoulli(0.499)
    exact = _exact_toy_gradient(family)
    rows = []
    for name, elbo in [
        ("ARSMELBO(binary='disarm')", ARSMELBO(binary="disarm")),
        ("ARSMELBO(binary='arm')", ARSMELBO(binary="arm")),
        ("TraceScoreELBO(loo)", TraceScoreELBO(num_particles=2, baseline="loo")),
        ("TraceScoreELBO(None)", TraceScoreELBO(num_particles=2, baseline=None)),
    ]:
        init_params(family)
        stats = gradient_draws(elbo, family, num_batches=50, draws_per_batch=200)
        # DisARM is exact (zero variance) for one Bernoulli at alpha = 0: compare
        # within 5 standard errors or, where the standard error is 0, to 1e-12
        err = (stats.mean["alpha"] - exact["alpha"]).abs().item()
        bias = (
            err / stats.se["alpha"].item()
            if stats.se["alpha"].item() > 1e-12
            else (0.0 if err < 1e-12 else float("inf"))
        )
        rows.append((name, 2, stats.variance["alpha"].item(), bias))
    print("\nREBAR toy, E[(b - 0.499)^2], alpha = 0; exact gradient {:.3g}".format(exact["alpha"].item()))
    print("| estimator | f evaluations per draw | gradient variance | |bias|/se |\n|---|---|---|---|")
    for row in rows:
        print("| {} | {} | {:.3g} | {:.2f} |".format(*row))
    var = {r[0]: r[2] for r in rows}
    assert var["ARSMELBO(binary='disarm')"] <= var["ARSMELBO(binary='arm')"]
    assert all(r[3] < 5 for r in rows)


def test_svi_trains_tutorial_vae():
    torch.set_default_dtype(torch.float32)
    model, guide, batches = make_tutorial_vae(num_batches=4)
    svi = SVI(model, guide, Adam({"lr": 1e-3}), loss=ARSMELBO())
    losses = [svi.step(batches[i % len(batches)]) / 64 for i in range(40)]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


@pytest.mark.parametrize("kind", ["bernoulli", "categorical2", "categorical3"])
def test_error_guide_dependency_on_binary_site(kind):
    # a continuous guide site depending on an ARSM/DisARM site with ONE pseudo-action
    # (binary, or 2 categories) once gave the wrong sign of the gradient, silently
    def site_dist(q):
        if kind == "bernoulli":
            return dist.Bernoulli(logits=q)
        num = 2 if kind == "categorical2" else 3
        return dist.Categorical(logits=torch.stack([torch.zeros(()), q] + [torch.zeros(())] * (num - 2)))

    def model():
        y = pyro.sample("y", site_dist(torch.tensor(0.0)))
        pyro.sample("z", dist.Normal(y.to(torch.get_default_dtype()), 1.0))

    def guide():
        y = pyro.sample("y", site_dist(pyro.param("q", torch.tensor(0.0))))
        pyro.sample("z", dist.Normal(2.0 * y.to(torch.get_default_dtype()), 1.0))

    for binary in ("disarm", "arm"):
        with pytest.raises(NotImplementedError, match=r"ARSMELBO: guide site 'z' depends on .*'y'"):
            ARSMELBO(binary=binary).differentiable_loss(model, guide)
