# SPDX-License-Identifier: Apache-2.0
"""
Per-site estimator annotations (``infer={"estimator": ...}``,
:func:`pyro_discrete.config_estimator`): read by every registered ELBO, never
silently ignored. A site annotated with the ELBO's own method runs as without
the annotation, draw for draw; another method (a per-site mix, not dispatched
yet) or an unknown name is an error naming the sites.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_discrete import TraceScoreELBO, VarGradELBO, config_estimator
from pyro_discrete.errors import EstimatorError
from pyro_discrete.registry import REGISTRY

DATA = torch.tensor([0.3, -0.8, 1.4])


def model():
    loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
    with pyro.plate("data", 3):
        z = pyro.sample("z", dist.OneHotCategorical(logits=torch.zeros(3)))
        b = pyro.sample("b", dist.Bernoulli(0.4))
        pyro.sample("x", dist.Normal(loc + (z * torch.tensor([-1.0, 0.0, 1.0])).sum(-1) + b, 1.0), obs=DATA)


def guide():
    pyro.sample("loc", dist.Normal(pyro.param("m", torch.tensor(0.1)), 0.9))
    with pyro.plate("data", 3):
        pyro.sample("z", dist.OneHotCategorical(logits=pyro.param("q", torch.zeros(3, 3) + 0.1)))
        pyro.sample("b", dist.Bernoulli(logits=pyro.param("r", torch.zeros(3))))


def _grads(elbo, guide_fn, seed=0):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    loss = elbo.differentiable_loss(model, guide_fn)
    params = {n: pyro.param(n).unconstrained() for n in ("m", "q", "r")}
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return loss.detach(), [torch.zeros_like(p) if g is None else g for p, g in zip(params.values(), grads)]


def test_config_estimator_annotates_discrete_sites_only():
    trace = pyro.poutine.trace(config_estimator(guide, "loo")).get_trace()
    assert trace.nodes["z"]["infer"]["estimator"] == "loo" and trace.nodes["b"]["infer"]["estimator"] == "loo"
    assert "estimator" not in trace.nodes["loc"]["infer"]
    trace = pyro.poutine.trace(config_estimator(guide, {"b": "arsm"})).get_trace()
    assert "estimator" not in trace.nodes["z"]["infer"] and trace.nodes["b"]["infer"]["estimator"] == "arsm"
    with pytest.raises(ValueError, match="not a registered estimator"):
        config_estimator(guide, "disarm2")


def _taking():
    from pyro_discrete.registry import takes
    from pyro_discrete.structure import analyze

    structure = analyze(model, guide)
    return [n for n, e in REGISTRY.items() if takes(e, structure, left_dims=True)]


@pytest.mark.parametrize("name", _taking())
def test_the_elbos_own_method_on_every_site_is_the_same_estimator_draw_for_draw(name):
    entry = REGISTRY[name]
    plain = _grads(entry.make(max_plate_nesting=2), guide)
    annotated = _grads(entry.make(max_plate_nesting=2), config_estimator(guide, name))
    assert torch.equal(plain[0], annotated[0])
    for a, b in zip(plain[1], annotated[1]):
        assert torch.equal(a, b)


def test_an_elbo_instance_as_the_annotation():
    plain = _grads(VarGradELBO(4, max_plate_nesting=2), guide)
    annotated = _grads(VarGradELBO(4, max_plate_nesting=2), config_estimator(guide, VarGradELBO(4)))
    for a, b in zip(plain[1], annotated[1]):
        assert torch.equal(a, b)


def test_a_per_site_mix_is_an_error_naming_the_sites():
    # before: the annotation was ignored without a word, and every site got leave-one-out
    mixed = config_estimator(guide, {"b": "arsm", "z": "loo"})
    pyro.clear_param_store()
    with pytest.raises(EstimatorError) as info:
        TraceScoreELBO(4, max_plate_nesting=2).differentiable_loss(model, mixed)
    error = info.value
    assert error.requirement == "one_estimator_per_model" and error.sites == ("b",)
    assert set(error.alternatives) <= {"arsm"}


def test_a_moving_average_annotation_is_not_leave_one_out():
    with pytest.raises(EstimatorError) as info:
        TraceScoreELBO(4, max_plate_nesting=2).loss(model, config_estimator(guide, "moving_average"))
    assert info.value.requirement == "one_estimator_per_model" and set(info.value.sites) == {"z", "b"}


def test_an_unknown_annotation_is_an_error():
    def annotated():
        pyro.sample("loc", dist.Normal(pyro.param("m", torch.tensor(0.1)), 0.9))
        with pyro.plate("data", 3):
            pyro.sample(
                "z", dist.OneHotCategorical(logits=pyro.param("q", torch.zeros(3, 3))), infer={"estimator": "disarm2"}
            )
            pyro.sample("b", dist.Bernoulli(logits=pyro.param("r", torch.zeros(3))))

    with pytest.raises(EstimatorError) as info:
        TraceScoreELBO(max_plate_nesting=1).loss(model, annotated)
    assert info.value.requirement == "registered_estimator" and info.value.sites == ("z",)
