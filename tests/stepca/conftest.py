"""A real step-ca for the tests of this folder, one per test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.stepca import StepCAServer


@pytest.fixture(scope="module")
def stepca() -> Iterator[StepCAServer]:
    server = StepCAServer().start_or_skip()
    try:
        yield server
    finally:
        server.stop()
