from __future__ import annotations

import zlib

import numpy as np
import pytest

from tests.conftest import BASE_SEED


@pytest.fixture
def rng(request):
    """A generator seeded from the run's base seed and the test's id (printed on failure)."""
    seed = (BASE_SEED + zlib.crc32(request.node.nodeid.encode())) % 2**32
    request.node.user_properties.append(("seed", seed))
    print(f"seed={seed} (LORA_TEST_SEED={BASE_SEED})")
    return np.random.default_rng(seed)
