"""Advice the CLI composes for the operator, checked as text (no instance needed)."""

from __future__ import annotations

from mosaic.cli.main import stop_orphans_advice


def test_stop_advice_quotes_each_kill_command_once() -> None:
    """The INSTANCE_RUNNING advice after `up` was killed read
    "`kill 25058` (federation-gateway)`, then `kill ...": a backtick after each service
    name but the last, so nothing could be copied as written."""
    advice = stop_orphans_advice([("federation-gateway", 25058), ("ca-service", 25054)])
    assert advice == "`kill 25058` (federation-gateway), then `kill 25054` (ca-service)"
    assert stop_orphans_advice([("ca-service", 7)]) == "`kill 7` (ca-service)"
    assert stop_orphans_advice([]) == "each `mosaic serve` process of this home"
