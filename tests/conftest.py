# SPDX-License-Identifier: Apache-2.0
import os
import sys

import pyro
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(autouse=True)
def pyro_defaults():
    """float64 and validation on, a fresh param store and a fixed seed, as Pyro's own tests."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    with pyro.validation_enabled(True):
        yield
    torch.set_default_dtype(dtype)
    pyro.clear_param_store()
