# SPDX-License-Identifier: Apache-2.0
"""
pyro_discrete: gradient estimators for discrete latent variables in Pyro.

Each estimator is an :class:`pyro.infer.ELBO` that consumes an ordinary
model/guide pair::

    svi = pyro.infer.SVI(model, guide, optim, loss=VarGradELBO(num_particles=8))

:data:`pyro_discrete.registry.REGISTRY` lists them with what each can do.
"""

from . import diagnostics, registry
from .arms import ARMSELBO
from .arsm import ARSMELBO, CoupledDisARMELBO
from .baselines import LeaveOneOutBaseline, MovingAverageBaseline, NoBaseline
from .broadcast import broadcastable
from .carms import CARMSELBO
from .elbo import DiscreteELBO, Surrogate
from .expect import ExpectELBO
from .indecater import IndeCateRELBO
from .per_site import config_estimator
from .relax import RELAXELBO
from .relaxed import RelaxedConcreteELBO, exponential_decay
from .rodeo import RODEOELBO
from .samplers import Sampler
from .score import TraceScoreELBO
from .sum_and_sample import SumAndSampleELBO
from .unordered_set import UnorderedSetELBO
from .vargrad import VarGradELBO
from .vimco import VIMCOELBO

__version__ = "0.2.0"

__all__ = [
    "ARMSELBO",
    "ARSMELBO",
    "CARMSELBO",
    "CoupledDisARMELBO",
    "DiscreteELBO",
    "ExpectELBO",
    "IndeCateRELBO",
    "LeaveOneOutBaseline",
    "MovingAverageBaseline",
    "NoBaseline",
    "RELAXELBO",
    "RODEOELBO",
    "RelaxedConcreteELBO",
    "Sampler",
    "SumAndSampleELBO",
    "Surrogate",
    "TraceScoreELBO",
    "UnorderedSetELBO",
    "VIMCOELBO",
    "VarGradELBO",
    "broadcastable",
    "config_estimator",
    "diagnostics",
    "exponential_decay",
    "registry",
]
