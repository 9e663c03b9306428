import numpy as np
import pytest
import torch


@pytest.fixture
def gen() -> torch.Generator:
    """A private, seeded torch generator (tests never touch the global RNG)."""
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def nprng() -> np.random.Generator:
    return np.random.default_rng(1234)
