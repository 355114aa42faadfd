# SPDX-License-Identifier: Apache-2.0
"""
``auto.refine``: the per-site specs measured on the user's model and data,
the lowest variance at equal time chosen, refusals reported.
"""

import pyro
import pyro.distributions as dist
import torch

from pyro_discrete import TraceScoreELBO, config_estimator
from pyro_discrete.auto import Refinement, refine
from pyro_discrete.errors import EstimatorError

DATA = torch.tensor([0.4, -1.1, 2.0, 0.3])


def model(x):
    with pyro.plate("data", 4):
        a = pyro.sample("a", dist.Categorical(logits=torch.zeros(3)))
        b = pyro.sample("b", dist.Bernoulli(0.3 + 0.3 * (a == 2).to(x.dtype)))
        pyro.sample("x", dist.Normal(torch.tensor([-1.0, 0.0, 1.0])[a] + b, 1.0), obs=x)


def guide(x):
    qa = pyro.param("qa", torch.zeros(4, 3))
    qb = pyro.param("qb", torch.zeros(4))
    with pyro.plate("data", 4):
        a = pyro.sample("a", dist.Categorical(logits=qa))
        pyro.sample("b", dist.Bernoulli(logits=qb + 0.5 * (a == 1).to(x.dtype)))  # b depends on a


def test_refine_measures_every_candidate_and_picks_the_lowest_variance_at_equal_time():
    pyro.clear_param_store()
    elbo = TraceScoreELBO(num_particles=4, max_plate_nesting=1)
    result = refine(elbo, model, guide, DATA, num_draws=30)
    assert isinstance(result, Refinement)
    rows = {r["candidate"]: r for r in result.rows}
    assert set(rows) == {"auto", "loo", "arsm", "coupled_disarm", "arms", "carms"}
    measured = [r for r in result.rows if r["refused"] is None]
    assert result.best == min(measured, key=lambda r: r["score"])["candidate"]
    # 'auto' enumerates both sites here (12 joint values per element): no variance, so it is chosen
    assert rows["auto"]["methods"] == {"a": "expect", "b": "expect"} and result.best == "auto"
    # a replaying method on the site that b depends on is refused, with the reason
    assert isinstance(rows["arsm"]["refused"], EstimatorError) and "a" in rows["arsm"]["refused"].sites
    assert "refused" in str(result) and "chosen" in str(result)
    # the choice applies as a spec
    assert torch.isfinite(torch.tensor(elbo.loss(model, config_estimator(guide, result.best), DATA)))


def test_refine_without_a_runnable_candidate_raises_the_first_refusal():
    pyro.clear_param_store()
    elbo = TraceScoreELBO(num_particles=4, max_plate_nesting=1)
    try:
        refine(elbo, model, guide, DATA, candidates=("arsm",), num_draws=5)
    except EstimatorError as error:
        assert "a" in error.sites
    else:
        raise AssertionError("no error")
