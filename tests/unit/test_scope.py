"""Grant scope: every rule of DESIGN.md "Scope", each tried alone, together, and at random."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mosaic.scope import (
    DEFAULT_MAX_ROWS_PER_QUERY,
    MAX_ROWS_PER_QUERY_LIMIT,
    RESOURCES,
    SENSITIVE_RESOURCES,
    ResourceFilter,
    Scope,
    ScopeError,
    ScopeProblem,
    parse_scope,
)

TEAM = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
OTHER_TEAM = "6fa459ea-ee8a-3ca4-894e-db77e160355e"
USER = "7b0e5c2a-0d5e-4f7c-9d55-3f2a1c9e8b10"
OTHER_USER = "00000000-0000-4000-8000-000000000001"

# The DESIGN.md example, with a real UUID where it says "<team uuid>".
DESIGN_EXAMPLE = f"""
{{"resources": ["tasks", "notes"],
 "excluded_resources": ["credentials"],
 "filters": {{"tasks": {{"include_teams": ["{TEAM}"], "include_personal": true}}}},
 "max_rows_per_query": 100}}
"""


def design_example() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DESIGN_EXAMPLE)
    return loaded


def problem_paths(value: Any) -> list[str]:
    with pytest.raises(ScopeError) as caught:
        parse_scope(value)
    assert caught.value.problems, "a ScopeError must carry at least one problem"
    return [problem.path for problem in caught.value.problems]


def assert_invariants(scope: Scope) -> None:
    """Everything a Scope promises, whichever way it was built."""
    assert isinstance(scope.resources, tuple) and scope.resources
    assert set(scope.resources) <= set(RESOURCES)
    assert list(scope.resources) == sorted(set(scope.resources))
    assert isinstance(scope.excluded_resources, tuple)
    assert set(scope.excluded_resources) <= set(RESOURCES)
    assert list(scope.excluded_resources) == sorted(set(scope.excluded_resources))
    assert not set(scope.resources) & set(scope.excluded_resources)
    assert set(scope.filters) == set(scope.resources)
    for row_filter in scope.filters.values():
        assert isinstance(row_filter, ResourceFilter)
        assert isinstance(row_filter.include_personal, bool)
        assert isinstance(row_filter.include_teams, tuple)
        assert list(row_filter.include_teams) == sorted(set(row_filter.include_teams))
        for team in row_filter.include_teams:
            assert str(uuid.UUID(team)) == team
    assert type(scope.max_rows_per_query) is int
    assert 1 <= scope.max_rows_per_query <= MAX_ROWS_PER_QUERY_LIMIT
    assert scope.sensitive_resources == set(scope.resources) & SENSITIVE_RESOURCES
    assert parse_scope(scope.to_json()) == scope
    hash(scope)


# --- the example and the defaults ----------------------------------------------------------


def test_design_example_parses() -> None:
    scope = parse_scope(DESIGN_EXAMPLE)
    assert scope.resources == ("notes", "tasks")
    assert scope.excluded_resources == ("credentials",)
    assert scope.filter_for("tasks") == ResourceFilter(include_teams=(TEAM,), include_personal=True)
    assert scope.filter_for("notes") == ResourceFilter()
    assert scope.max_rows_per_query == 100
    assert scope.allows("tasks") and scope.allows("notes")
    assert not scope.allows("credentials") and not scope.allows("memory")
    assert scope.sensitive_resources == frozenset()
    assert_invariants(scope)


def test_text_bytes_and_mapping_inputs_agree() -> None:
    scope = parse_scope(DESIGN_EXAMPLE)
    assert parse_scope(DESIGN_EXAMPLE.encode()) == scope
    assert parse_scope(design_example()) == scope


def test_only_resources_is_required_and_defaults_are_filled_in() -> None:
    scope = parse_scope({"resources": ["memory"]})
    assert scope.excluded_resources == ()
    assert scope.filter_for("memory") == ResourceFilter(include_teams=(), include_personal=True)
    assert scope.max_rows_per_query == DEFAULT_MAX_ROWS_PER_QUERY == 100


def test_include_personal_defaults_to_true() -> None:
    scope = parse_scope({"resources": ["tasks"], "filters": {"tasks": {"include_teams": [TEAM]}}})
    assert scope.filter_for("tasks").include_personal is True


@pytest.mark.parametrize("rows", [1, 10_000])
def test_row_cap_bounds_are_inclusive(rows: int) -> None:
    assert (
        parse_scope({"resources": ["tasks"], "max_rows_per_query": rows}).max_rows_per_query == rows
    )


def test_team_ids_are_normalised_to_lowercase() -> None:
    scope = parse_scope(
        {"resources": ["tasks"], "filters": {"tasks": {"include_teams": [TEAM.upper()]}}}
    )
    assert scope.filter_for("tasks").include_teams == (TEAM,)


def test_sensitive_resources_are_reported() -> None:
    scope = parse_scope({"resources": ["tasks", "api_keys", "credentials"]})
    assert scope.sensitive_resources == {"api_keys", "credentials"}


# --- each rule alone -----------------------------------------------------------------------

_DELETE = object()


def _with(**changes: Any) -> dict[str, Any]:
    scope = design_example()
    for key, value in changes.items():
        if value is _DELETE:
            scope.pop(key, None)
        else:
            scope[key] = value
    return scope


def _with_filter(**changes: Any) -> dict[str, Any]:
    scope = design_example()
    scope["filters"]["tasks"].update(changes)
    return scope


SINGLE_VIOLATIONS: dict[str, tuple[Any, str]] = {
    "not an object": ([], ""),
    "json string": ('"tasks"', ""),
    "json null": ("null", ""),
    "unknown top-level key": (_with(frobnicate=1), "frobnicate"),
    "unknown key with odd characters": (_with(**{"max rows": 5}), '["max rows"]'),
    "resources missing": (_with(resources=_DELETE, filters=_DELETE), "resources"),
    "resources not a list": (_with(resources="tasks", filters=_DELETE), "resources"),
    "resources null": (_with(resources=None, filters=_DELETE), "resources"),
    "resources empty": (_with(resources=[], filters=_DELETE), "resources"),
    "resource unknown": (_with(resources=["tasks", "calendar"]), "resources[1]"),
    "resource not a string": (_with(resources=["tasks", 3]), "resources[1]"),
    "resource wrong case": (_with(resources=["tasks", "Notes"]), "resources[1]"),
    "resource duplicated": (_with(resources=["tasks", "notes", "tasks"]), "resources[2]"),
    "excluded not a list": (_with(excluded_resources="credentials"), "excluded_resources"),
    "excluded unknown": (_with(excluded_resources=["secrets"]), "excluded_resources[0]"),
    "excluded duplicated": (
        _with(excluded_resources=["credentials", "api_keys", "credentials"]),
        "excluded_resources[2]",
    ),
    "excluded intersects": (
        _with(excluded_resources=["credentials", "notes"]),
        "excluded_resources[1]",
    ),
    "filters not an object": (_with(filters=["tasks"]), "filters"),
    "filter for ungranted resource": (
        _with(filters={"memory": {"include_personal": False}}),
        "filters.memory",
    ),
    "filter for excluded resource": (_with(filters={"credentials": {}}), "filters.credentials"),
    "filter for unknown resource": (_with(filters={"calendar": {}}), "filters.calendar"),
    "filter not an object": (_with(filters={"tasks": True}), "filters.tasks"),
    "filter unknown key": (_with_filter(include_archived=True), "filters.tasks.include_archived"),
    "include_teams not a list": (_with_filter(include_teams=TEAM), "filters.tasks.include_teams"),
    "include_teams entry not a uuid": (
        _with_filter(include_teams=[TEAM, "engineering"]),
        "filters.tasks.include_teams[1]",
    ),
    "include_teams entry not a string": (
        _with_filter(include_teams=[7]),
        "filters.tasks.include_teams[0]",
    ),
    "include_teams entry braced uuid": (
        _with_filter(include_teams=["{" + TEAM + "}"]),
        "filters.tasks.include_teams[0]",
    ),
    "include_teams entry with newline": (
        _with_filter(include_teams=[TEAM + "\n"]),
        "filters.tasks.include_teams[0]",
    ),
    "include_teams duplicated across case": (
        _with_filter(include_teams=[TEAM, OTHER_TEAM, TEAM.upper()]),
        "filters.tasks.include_teams[2]",
    ),
    "include_personal not a bool": (
        _with_filter(include_personal="yes"),
        "filters.tasks.include_personal",
    ),
    "include_personal an int": (_with_filter(include_personal=1), "filters.tasks.include_personal"),
    "row cap zero": (_with(max_rows_per_query=0), "max_rows_per_query"),
    "row cap negative": (_with(max_rows_per_query=-5), "max_rows_per_query"),
    "row cap too big": (_with(max_rows_per_query=10_001), "max_rows_per_query"),
    "row cap huge": (_with(max_rows_per_query=10**400), "max_rows_per_query"),
    "row cap bool": (_with(max_rows_per_query=True), "max_rows_per_query"),
    "row cap float": (_with(max_rows_per_query=100.0), "max_rows_per_query"),
    "row cap string": (_with(max_rows_per_query="100"), "max_rows_per_query"),
    "row cap null": (_with(max_rows_per_query=None), "max_rows_per_query"),
    "row cap nan": (_with(max_rows_per_query=math.nan), "max_rows_per_query"),
    "row cap infinity": (_with(max_rows_per_query=math.inf), "max_rows_per_query"),
}


@pytest.mark.parametrize(
    ("value", "path"), list(SINGLE_VIOLATIONS.values()), ids=list(SINGLE_VIOLATIONS)
)
def test_each_rule_alone_reports_one_problem_at_its_path(value: Any, path: str) -> None:
    assert problem_paths(value) == [path]


# NaN and Infinity are not JSON; the invalid-JSON tests cover them as text.
AS_JSON_TEXT = {
    name: case
    for name, case in SINGLE_VIOLATIONS.items()
    if isinstance(case[0], dict)
    and not any(isinstance(v, float) and not math.isfinite(v) for v in case[0].values())
}


@pytest.mark.parametrize(("value", "path"), list(AS_JSON_TEXT.values()), ids=list(AS_JSON_TEXT))
def test_each_rule_alone_as_json_text(value: dict[str, Any], path: str) -> None:
    assert problem_paths(json.dumps(value)) == [path]


def test_several_problems_are_all_reported() -> None:
    value = {
        "resources": ["tasks", "tasks", "calendar", 1],
        "excluded_resources": ["tasks"],
        "filters": {
            "notes": {"include_teams": ["nope"], "include_personal": 1, "colour": "red"},
        },
        "max_rows_per_query": 0,
        "frobnicate": True,
    }
    assert sorted(problem_paths(value)) == sorted(
        [
            "resources[1]",
            "resources[2]",
            "resources[3]",
            "excluded_resources[0]",
            "filters.notes",
            "filters.notes.include_teams[0]",
            "filters.notes.include_personal",
            "filters.notes.colour",
            "max_rows_per_query",
            "frobnicate",
        ]
    )


def test_error_text_lists_every_problem_as_path_and_message() -> None:
    with pytest.raises(ScopeError) as caught:
        parse_scope({"resources": ["calendar"], "max_rows_per_query": 0, "x": 1})
    error = caught.value
    assert isinstance(error, ValueError)
    assert len(error.problems) == 3
    for problem in error.problems:
        assert f"{problem.path}: {problem.message}" in str(error)
    assert error.violations == tuple((p.path, p.message) for p in error.problems)
    root = ScopeError([ScopeProblem("", "must be a JSON object")])
    assert "must be a JSON object" in str(root)


# --- malformed JSON text -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        '{"resources": ["tasks"],}',
        "{'resources': ['tasks']}",
        '{"resources": ["tasks"]} trailing',
        '{"resources": ["tasks"], "max_rows_per_query": NaN}',
        '{"resources": ["tasks"], "max_rows_per_query": Infinity}',
        '{"resources": ["tasks"], "max_rows_per_query": -Infinity}',
        '{"resources": ["tasks"], "max_rows_per_query": ' + "9" * 5000 + "}",
        "[" * 100_000 + "]" * 100_000,
        b"\xff\xfe\x00garbage",
    ],
    ids=[
        "empty",
        "unterminated",
        "trailing-comma",
        "single-quotes",
        "trailing-text",
        "nan",
        "infinity",
        "minus-infinity",
        "5000-digit-number",
        "deep-nesting",
        "bad-bytes",
    ],
)
def test_invalid_json_is_one_problem_at_the_root(text: str | bytes) -> None:
    with pytest.raises(ScopeError) as caught:
        parse_scope(text)
    assert [p.path for p in caught.value.problems] == [""]
    assert caught.value.problems[0].message.startswith("invalid JSON")


def test_invalid_json_names_the_position() -> None:
    with pytest.raises(ScopeError) as caught:
        parse_scope('{"resources":\n  ["tasks",]}')
    assert "line 2 column" in caught.value.problems[0].message


def test_huge_float_is_not_an_integer() -> None:
    assert problem_paths('{"resources": ["tasks"], "max_rows_per_query": 1e999}') == [
        "max_rows_per_query"
    ]


def test_duplicate_json_keys_are_refused_not_last_one_wins() -> None:
    text = '{"resources": ["tasks"], "resources": ["credentials"]}'
    assert problem_paths(text) == ["resources"]
    text = (
        '{"resources": ["tasks"],'
        ' "filters": {"tasks": {"include_personal": true, "include_personal": false}}}'
    )
    assert problem_paths(text) == ["filters.tasks.include_personal"]


@pytest.mark.parametrize("value", [None, 42, 1.5, ["tasks"], {1: "tasks"}, object()])
def test_non_mapping_or_odd_input_raises_scope_error(value: Any) -> None:
    with pytest.raises(ScopeError):
        parse_scope(value)


@pytest.mark.parametrize("key", ["k" * 10_000 + " ", "k" * 10_000], ids=["quoted", "plain"])
def test_huge_key_is_truncated_in_the_path(key: str) -> None:
    """A key made only of letters was echoed whole (only other keys were cut)."""
    [path] = problem_paths({"resources": ["tasks"], key: 1})
    assert path == '["' + "k" * 64 + '..."]'


# --- row visibility ------------------------------------------------------------------------


def _scope_with_tasks_filter(**task_filter: Any) -> Scope:
    return parse_scope({"resources": ["tasks", "notes"], "filters": {"tasks": task_filter}})


@pytest.mark.parametrize(
    ("task_filter", "resource", "owner", "team", "visible"),
    [
        # Another user's row is never visible, whatever the filter says.
        ({"include_teams": [TEAM]}, "tasks", OTHER_USER, None, False),
        ({"include_teams": [TEAM]}, "tasks", OTHER_USER, TEAM, False),
        # Personal rows follow include_personal.
        ({"include_personal": True}, "tasks", USER, None, True),
        ({"include_personal": False}, "tasks", USER, None, False),
        ({"include_personal": False}, "tasks", USER, "", False),
        ({"include_personal": True}, "tasks", USER, "", True),
        # Team rows need their team included.
        ({"include_teams": [TEAM]}, "tasks", USER, TEAM, True),
        ({"include_teams": [TEAM]}, "tasks", USER, TEAM.upper(), True),
        ({"include_teams": [TEAM]}, "tasks", USER, OTHER_TEAM, False),
        ({"include_teams": [TEAM], "include_personal": False}, "tasks", USER, TEAM, True),
        ({"include_teams": [TEAM], "include_personal": False}, "tasks", USER, None, False),
        ({"include_teams": [], "include_personal": True}, "tasks", USER, TEAM, False),
        # No filter given (notes): personal rows visible, team rows not.
        ({}, "notes", USER, None, True),
        ({}, "notes", USER, TEAM, False),
        ({}, "notes", OTHER_USER, None, False),
        # Resources not granted show nothing.
        ({}, "memory", USER, None, False),
        ({}, "credentials", USER, None, False),
        ({}, "Tasks", USER, None, False),
    ],
)
def test_row_visibility(
    task_filter: dict[str, Any], resource: str, owner: str, team: str | None, visible: bool
) -> None:
    scope = _scope_with_tasks_filter(**task_filter)
    assert (
        scope.row_visible(
            subject_user_id=USER, resource=resource, owner_user_id=owner, team_id=team
        )
        is visible
    )


def test_user_ids_compare_as_uuids() -> None:
    scope = parse_scope({"resources": ["tasks"]})
    assert scope.row_visible(
        subject_user_id=USER, resource="tasks", owner_user_id=USER.upper(), team_id=None
    )


def test_empty_subject_sees_nothing() -> None:
    scope = parse_scope({"resources": ["tasks"]})
    assert not scope.row_visible(
        subject_user_id="", resource="tasks", owner_user_id="", team_id=None
    )


def test_filter_for_an_ungranted_resource_fails_closed() -> None:
    scope = parse_scope(DESIGN_EXAMPLE)
    with pytest.raises(ValueError):
        scope.filter_for("credentials")
    with pytest.raises(ValueError):
        scope.filter_for("memory")


# --- the Scope value -----------------------------------------------------------------------


def test_to_json_is_canonical_with_defaults_explicit() -> None:
    scope = parse_scope({"resources": ["tasks", "notes"]})
    assert scope.to_json() == (
        '{"excluded_resources":[],"filters":{"notes":{"include_personal":true,"include_teams":[]},'
        '"tasks":{"include_personal":true,"include_teams":[]}},"max_rows_per_query":100,'
        '"resources":["notes","tasks"]}'
    )


def test_equivalent_scopes_are_equal_and_serialise_identically() -> None:
    a = parse_scope(
        {
            "resources": ["tasks", "notes"],
            "filters": {"tasks": {"include_teams": [OTHER_TEAM, TEAM.upper()]}},
        }
    )
    b = parse_scope(
        {
            "resources": ["notes", "tasks"],
            "excluded_resources": [],
            "filters": {"notes": {}, "tasks": {"include_teams": [TEAM, OTHER_TEAM]}},
            "max_rows_per_query": 100,
        }
    )
    assert a == b
    assert hash(a) == hash(b)
    assert a.to_json() == b.to_json()


def test_scope_is_immutable() -> None:
    scope = parse_scope(DESIGN_EXAMPLE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        scope.max_rows_per_query = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        scope.filters["memory"] = ResourceFilter()  # type: ignore[index]
    scope.to_dict()["resources"].append("credentials")
    assert scope.resources == ("notes", "tasks")


def test_direct_construction_validates_and_normalises() -> None:
    scope = Scope(resources=("tasks", "notes"))
    assert scope == parse_scope({"resources": ["notes", "tasks"]})
    with pytest.raises(ScopeError):
        Scope(resources=())
    with pytest.raises(ScopeError):
        Scope(resources=("tasks",), excluded_resources=("tasks",))
    with pytest.raises(ScopeError):
        Scope(resources=("tasks",), filters={"tasks": ResourceFilter(include_teams=("x",))})
    with pytest.raises(ScopeError):
        dataclasses.replace(scope, max_rows_per_query=0)


# --- properties ----------------------------------------------------------------------------

team_ids = st.uuids().map(str)


@st.composite
def valid_scope_values(draw: st.DrawFn) -> dict[str, Any]:
    """Scope documents as an operator may write them: any order, optional keys, any case."""
    resources = draw(st.lists(st.sampled_from(RESOURCES), min_size=1, unique=True))
    value: dict[str, Any] = {"resources": resources}
    if draw(st.booleans()):
        others = [r for r in RESOURCES if r not in resources]
        value["excluded_resources"] = (
            draw(st.lists(st.sampled_from(others), unique=True)) if others else []
        )
    if draw(st.booleans()):
        filters: dict[str, Any] = {}
        for resource in draw(st.lists(st.sampled_from(resources), unique=True)):
            row_filter: dict[str, Any] = {}
            if draw(st.booleans()):
                teams = draw(st.lists(team_ids, unique=True, max_size=4))
                row_filter["include_teams"] = [
                    t.upper() if draw(st.booleans()) else t for t in teams
                ]
            if draw(st.booleans()):
                row_filter["include_personal"] = draw(st.booleans())
            filters[resource] = row_filter
        value["filters"] = filters
    if draw(st.booleans()):
        value["max_rows_per_query"] = draw(st.integers(1, MAX_ROWS_PER_QUERY_LIMIT))
    return value


@settings(max_examples=300)
@given(value=valid_scope_values())
def test_valid_scopes_round_trip(value: dict[str, Any]) -> None:
    scope = parse_scope(value)
    assert_invariants(scope)
    assert parse_scope(scope.to_json()) == scope
    assert parse_scope(scope.to_dict()) == scope
    assert parse_scope(json.dumps(value)) == scope
    assert parse_scope(scope.to_json()).to_json() == scope.to_json()
    assert set(scope.resources) == set(value["resources"])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)

# Near-miss documents: the real key names with arbitrary values, so that random input
# reaches the deeper checks instead of stopping at "unknown key".
near_miss_filters = st.dictionaries(
    st.sampled_from(RESOURCES) | st.text(max_size=10),
    st.fixed_dictionaries(
        {},
        optional={
            "include_teams": st.lists(team_ids | json_values, max_size=3) | json_values,
            "include_personal": st.booleans() | json_values,
        },
    )
    | json_values,
    max_size=3,
)
near_miss_scopes = st.fixed_dictionaries(
    {},
    optional={
        "resources": st.lists(st.sampled_from(RESOURCES) | json_values, max_size=6) | json_values,
        "excluded_resources": st.lists(st.sampled_from(RESOURCES) | json_values, max_size=3)
        | json_values,
        "filters": near_miss_filters | json_values,
        "max_rows_per_query": st.integers(-5, MAX_ROWS_PER_QUERY_LIMIT + 5) | json_values,
    },
)


def _parse_or_refuse(value: Any) -> Scope | None:
    try:
        scope = parse_scope(value)
    except ScopeError as error:
        assert error.problems
        assert all(isinstance(p.path, str) and p.message for p in error.problems)
        return None
    assert_invariants(scope)
    return scope


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(value=json_values | near_miss_scopes)
def test_arbitrary_input_gives_a_valid_scope_or_scope_error(value: Any) -> None:
    from_mapping = _parse_or_refuse(value)
    from_text = _parse_or_refuse(json.dumps(value))
    assert from_mapping == from_text


@settings(max_examples=300)
@given(text=st.text(max_size=200) | st.binary(max_size=200))
def test_arbitrary_text_gives_a_valid_scope_or_scope_error(text: str | bytes) -> None:
    _parse_or_refuse(text)


def _add_unknown_key(draw: st.DrawFn, value: dict[str, Any]) -> str:
    key = draw(
        st.from_regex(r"[a-z_][a-z0-9_]{0,20}", fullmatch=True).filter(
            lambda k: k not in {"resources", "excluded_resources", "filters", "max_rows_per_query"}
        )
    )
    value[key] = draw(json_values)
    return key


def _duplicate_resource(draw: st.DrawFn, value: dict[str, Any]) -> str:
    value["resources"].append(draw(st.sampled_from(value["resources"])))
    return f"resources[{len(value['resources']) - 1}]"


def _row_cap_out_of_range(draw: st.DrawFn, value: dict[str, Any]) -> str:
    value["max_rows_per_query"] = draw(
        st.integers(max_value=0)
        | st.integers(min_value=MAX_ROWS_PER_QUERY_LIMIT + 1)
        | st.booleans()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=5)
    )
    return "max_rows_per_query"


def _exclude_a_granted_resource(draw: st.DrawFn, value: dict[str, Any]) -> str:
    excluded = value.setdefault("excluded_resources", [])
    excluded.append(draw(st.sampled_from(value["resources"])))
    return f"excluded_resources[{len(excluded) - 1}]"


def _unknown_key_in_filter(draw: st.DrawFn, value: dict[str, Any]) -> str:
    resource = draw(st.sampled_from(value["resources"]))
    value.setdefault("filters", {}).setdefault(resource, {})["include_archived"] = True
    return f"filters.{resource}.include_archived"


def _filter_for_ungranted_resource(draw: st.DrawFn, value: dict[str, Any]) -> str:
    others = [r for r in RESOURCES if r not in value["resources"]]
    resource = draw(st.sampled_from(others)) if others else "calendar"
    value.setdefault("filters", {})[resource] = {}
    return f"filters.{resource}"


def _bad_team_id(draw: st.DrawFn, value: dict[str, Any]) -> str:
    resource = draw(st.sampled_from(value["resources"]))
    teams = value.setdefault("filters", {}).setdefault(resource, {}).setdefault("include_teams", [])
    teams.append(draw(st.text(max_size=40).filter(lambda t: t.strip() != t or len(t) != 36)))
    return f"filters.{resource}.include_teams[{len(teams) - 1}]"


MUTATIONS: list[Callable[[st.DrawFn, dict[str, Any]], str]] = [
    _add_unknown_key,
    _duplicate_resource,
    _row_cap_out_of_range,
    _exclude_a_granted_resource,
    _unknown_key_in_filter,
    _filter_for_ungranted_resource,
    _bad_team_id,
]


@st.composite
def mutated_scopes(draw: st.DrawFn) -> tuple[dict[str, Any], list[str]]:
    value = copy.deepcopy(draw(valid_scope_values()))
    mutations = draw(st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=3))
    return value, [mutate(draw, value) for mutate in mutations]


@settings(max_examples=500)
@given(case=mutated_scopes())
def test_mutated_scopes_never_pass(case: tuple[dict[str, Any], list[str]]) -> None:
    value, expected_paths = case
    paths = problem_paths(value)
    for path in expected_paths:
        assert path in paths


def test_a_filter_with_more_teams_than_resource_service_accepts_is_refused() -> None:
    """resource-service refuses a visibility of more than 1000 teams: a grant holding one
    could never be served, so the scope is refused when the grant is made."""
    teams = [str(uuid.uuid4()) for _ in range(1001)]
    scope = {"resources": ["tasks"], "filters": {"tasks": {"include_teams": teams}}}
    assert problem_paths(json.dumps(scope)) == ["filters.tasks.include_teams"]
    scope["filters"]["tasks"]["include_teams"] = teams[:1000]  # type: ignore[index]
    assert len(parse_scope(json.dumps(scope)).filter_for("tasks").include_teams) == 1000
