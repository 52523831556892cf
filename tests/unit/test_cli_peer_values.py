"""The CLI shows values that a peer gateway or a service of another release may send, and
that no release of ours sends: a row's updated_at that is not a valid time, an enum value
added later. No traceback, exit 0, and --json still prints its one JSON document.

The admin API is faked (the commands' call_admin answers from the test): making a real
gateway relay such a value would need a peer of another release."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf import timestamp_pb2
from typer.testing import CliRunner

from mosaic.cli import commands_grants, commands_query
from mosaic.cli.main import app
from mosaic.federation.v1 import common_pb2, gateway_pb2, grants_pb2

VALID = timestamp_pb2.Timestamp(seconds=1_793_520_000)  # 2026-11-01T08:00:00Z
NOT_A_TIME = {
    "past-9999": timestamp_pb2.Timestamp(seconds=253_402_300_800),  # 10000-01-01T00:00:00Z
    "before-year-1": timestamp_pb2.Timestamp(seconds=-62_135_596_801),
    "negative-nanos": timestamp_pb2.Timestamp(seconds=1, nanos=-1),
}


class FakeAdmin:
    """FederationAdmin's stub: each method answers the reply given for it."""

    def __init__(self, **replies: Any) -> None:
        self._replies = replies

    def __getattr__(self, method: str) -> Any:
        return lambda request, **_: self._replies[method]


def _answering(monkeypatch: pytest.MonkeyPatch, admin: FakeAdmin, *modules: Any) -> None:
    for module in modules:
        monkeypatch.setattr(module, "load_or_fail", lambda ctx, home: None)
        monkeypatch.setattr(
            module, "call_admin", lambda ctx, config, action, **_: action(admin, ())
        )


def _row(row_id: str, updated_at: timestamp_pb2.Timestamp) -> common_pb2.ResourceItem:
    return common_pb2.ResourceItem(id=row_id, resource="tasks", title="t", updated_at=updated_at)


def _list_reply(updated_at: timestamp_pb2.Timestamp) -> FakeAdmin:
    """A list of a valid row and one dated ``updated_at``; a get of the latter."""
    rows = [_row("r-valid", VALID), _row("r-odd", updated_at)]
    return FakeAdmin(
        Query=gateway_pb2.QueryResponse(
            list=gateway_pb2.ListResponse(items=rows), request_id="b-1", fetched_at=VALID
        )
    )


def _get_reply(updated_at: timestamp_pb2.Timestamp) -> FakeAdmin:
    return FakeAdmin(
        Query=gateway_pb2.QueryResponse(
            get=gateway_pb2.GetResponse(item=_row("r-odd", updated_at)),
            request_id="b-1",
            fetched_at=VALID,
        )
    )


@pytest.mark.parametrize("updated_at", NOT_A_TIME.values(), ids=NOT_A_TIME.keys())
def test_a_row_dated_outside_what_a_time_can_be_is_null_in_json(
    monkeypatch: pytest.MonkeyPatch, updated_at: timestamp_pb2.Timestamp
) -> None:
    _answering(monkeypatch, _list_reply(updated_at), commands_query)
    result = CliRunner().invoke(app, ["--json", "federation", "query", "b", "list", "tasks"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [i["updated_at"] for i in doc["items"]] == ["2026-11-01T08:00:00Z", None]
    assert doc["fetched_at"] == "2026-11-01T08:00:00Z"


@pytest.mark.parametrize("verb", ["list", "get"])
def test_a_row_dated_outside_what_a_time_can_be_reads_as_such_in_the_table(
    monkeypatch: pytest.MonkeyPatch, verb: str
) -> None:
    past_9999 = NOT_A_TIME["past-9999"]
    admin = _list_reply(past_9999) if verb == "list" else _get_reply(past_9999)
    _answering(monkeypatch, admin, commands_query)
    args = ["federation", "query", "b", verb, "tasks"] + (["r-odd"] if verb == "get" else [])
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "invalid time (seconds=253402300800, nanos=0)" in result.stdout


def test_grant_and_peer_enum_values_added_later_read_as_unknown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A newer grants-service's grant status, peer state or direction: shown by number,
    in the JSON document and in the table."""
    admin = FakeAdmin(
        ListGrants=grants_pb2.ListGrantsResponse(
            grants=[grants_pb2.Grant(id="g-1", status=grants_pb2.GrantStatus.ValueType(7))]
        ),
        ListPeers=grants_pb2.ListPeersResponse(
            peers=[
                grants_pb2.Peer(
                    id="p-1",
                    name="b",
                    direction=grants_pb2.PeerDirection.ValueType(5),
                    state=grants_pb2.PeerState.ValueType(9),
                )
            ]
        ),
    )
    _answering(monkeypatch, admin, commands_grants)
    grants = CliRunner().invoke(app, ["--json", "federation", "grant", "list"])
    assert grants.exit_code == 0, grants.output
    assert json.loads(grants.stdout)["grants"][0]["status"] == "unknown (7)"
    peers = CliRunner().invoke(app, ["--json", "federation", "peer", "list"])
    assert peers.exit_code == 0, peers.output
    peer = json.loads(peers.stdout)["peers"][0]
    assert (peer["direction"], peer["state"]) == ("unknown (5)", "unknown (9)")
    table = CliRunner().invoke(app, ["federation", "peer", "list"])
    assert table.exit_code == 0, table.output
    assert "unknown (5)" in table.stdout and "unknown (9)" in table.stdout
