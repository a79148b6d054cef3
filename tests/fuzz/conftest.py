"""Fixtures of the fuzz tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from functions._core.model import keys
from tests.fakes.settings import make_settings


@pytest.fixture(scope="package", autouse=True)
def cheap_keys() -> Iterator[None]:
    """One real RSA key for every example: generating one per accepted domain.created (~80 ms) would dominate."""
    pool = keys.generate("pool", make_settings().dkim.key_size)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            keys, "generate", lambda selector, bits: keys.KeyPair(selector, pool.public_b64, pool.private_pem)
        )
        yield
