# SPDX-License-Identifier: Apache-2.0
import pyro
import pytest
import torch
from pyro.infer import SVI
from pyro.optim import Adam

from pyro_discrete import TraceScoreELBO, VarGradELBO

from common import (
    assert_loss_methods_agree,
    check_unbiased,
    first_traces,
    gradient_draws,
    init_params,
    make_family,
    reference,
)
from tutorial_vae import make_tutorial_vae


@pytest.mark.slow
def test_unbiased_log_variance_for_continuous_sites():
    family = make_family("continuous_global_discrete_local")
    init_params(family)
    ref = reference(family)
    stats = gradient_draws(VarGradELBO(num_particles=4, continuous="log_variance"), family)
    check_unbiased(stats, ref, what="VarGradELBO(continuous='log_variance')")


@pytest.mark.parametrize(
    "family_name", ["amortized_vae", "global_bernoulli_local_categorical", "to_event_onehot", "bernoulli_vector"]
)
@pytest.mark.parametrize("num_particles", [2, 8])
def test_equals_leave_one_out_sample_for_sample(family_name, num_particles):
    # Richter et al.: with the same draws and a purely discrete guide, the
    # log-variance gradient is the leave-one-out score-function gradient
    family = make_family(family_name)
    params = init_params(family)
    grads = []
    for elbo in (VarGradELBO(num_particles=num_particles), TraceScoreELBO(num_particles=num_particles, baseline="loo")):
        pyro.set_rng_seed(11)
        loss = elbo.differentiable_loss(family.model, family.guide, *family.args)
        grads.append((loss.item(), torch.autograd.grad(loss, list(params.values()))))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-12)
    for a, b in zip(grads[0][1], grads[1][1]):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)
    assert any(g.abs().max() > 1e-3 for g in grads[0][1])


def test_log_variance_mode_detaches_continuous_samples():
    family = make_family("continuous_global_discrete_local")
    init_params(family)
    elbo = VarGradELBO(num_particles=3, continuous="log_variance")
    model_trace, guide_trace = first_traces(elbo, family.model, family.guide, family.args)
    assert not guide_trace.nodes["w"]["value"].requires_grad
    assert [n for n, s in guide_trace.nodes.items() if s["type"] == "sample"] == ["w", "z"]
    # the downstream guide site has no graph through w's value
    z_logits = guide_trace.nodes["z"]["fn"].logits
    (grad_w,) = torch.autograd.grad(z_logits.sum(), [pyro.param("w_loc").unconstrained()], allow_unused=True)
    assert grad_w is None
    pathwise = VarGradELBO(num_particles=3)
    _, guide_trace = first_traces(pathwise, family.model, family.guide, family.args)
    assert guide_trace.nodes["w"]["value"].requires_grad


@pytest.mark.slow
def test_variance_table_on_amortized_vae():
    family = make_family("amortized_vae")
    init_params(family)
    rows = []
    for particles in (4, 16):
        for name, elbo in [
            ("VarGradELBO", VarGradELBO(num_particles=particles)),
            ("TraceScoreELBO(loo)", TraceScoreELBO(num_particles=particles, baseline="loo")),
            ("TraceScoreELBO(None)", TraceScoreELBO(num_particles=particles, baseline=None)),
        ]:
            rows.append((name, particles, gradient_draws(elbo, family, 40, 25).total_variance()))
    print("\ntotal gradient variance (sum over parameters), amortized VAE")
    print("| estimator | particles | total variance |\n|---|---|---|")
    for name, particles, var in rows:
        print("| {} | {} | {:.4g} |".format(name, particles, var))
    var = {(n, p): v for n, p, v in rows}
    for p in (4, 16):
        assert var[("VarGradELBO", p)] == pytest.approx(var[("TraceScoreELBO(loo)", p)], rel=1e-6)
        assert var[("VarGradELBO", p)] < var[("TraceScoreELBO(None)", p)]


def test_loss_methods_agree():
    family = make_family("amortized_vae")
    init_params(family)
    assert_loss_methods_agree(lambda: VarGradELBO(num_particles=4), family, seed=5)


def test_errors():
    with pytest.raises(ValueError, match=r"VarGradELBO: .*num_particles >= 2.*num_particles=1"):
        VarGradELBO(num_particles=1)
    with pytest.raises(ValueError, match="VarGradELBO: continuous must be"):
        VarGradELBO(num_particles=4, continuous="reinforce")


def test_svi_trains_tutorial_vae():
    torch.set_default_dtype(torch.float32)
    model, guide, batches = make_tutorial_vae(num_batches=8)
    svi = SVI(model, guide, Adam({"lr": 1e-3}), loss=VarGradELBO(num_particles=8))
    losses = [svi.step(batches[i % len(batches)]) / 64 for i in range(100)]
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    print("\nVarGradELBO on the tutorial VAE: -ELBO per data point {:.1f} -> {:.1f}".format(first, last))
    assert last < 0.8 * first
