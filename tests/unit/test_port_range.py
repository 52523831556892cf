"""Where `mosaic demo`, the benchmarks and the tests look for free port blocks:
MOSAIC_PORT_RANGE when set (each test worker gets its own share), else 20000-32700."""

from __future__ import annotations

import pytest

from mosaic.config import PORT_RANGE_ENV, ConfigError, find_free_port_base
from tests.support.instances import worker_port_range


def test_a_base_comes_from_the_range_set(monkeypatch: pytest.MonkeyPatch) -> None:
    # Above every worker's share, so no earlier test of this process handed these out.
    monkeypatch.setenv(PORT_RANGE_ENV, "32700-33000")
    bases = {find_free_port_base() for _ in range(2)}
    assert bases <= {32700, 32800, 32900} and len(bases) == 2


@pytest.mark.parametrize("value", ["30000", "x-y", "500-40000", "30000-30050", "30000-70000"])
def test_a_range_that_is_not_one_says_what_to_set(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(PORT_RANGE_ENV, value)
    with pytest.raises(ConfigError) as refused:
        find_free_port_base()
    assert PORT_RANGE_ENV in refused.value.message and refused.value.remediation


def test_test_workers_share_the_range_without_overlap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    shares = []
    for worker in ("gw0", "gw1"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        shares.append(worker_port_range())
    (low0, high0), (low1, high1) = shares
    assert high0 <= low1 and high1 <= 32700 and (high0 - low0) // 100 >= 100
