"""The scope of a federation grant: which resources a peer may read, and which rows of them.

A scope is written as JSON (DESIGN.md, "Scope")::

    {"resources": ["tasks", "notes"],
     "excluded_resources": ["credentials"],
     "filters": {"tasks": {"include_teams": ["<team uuid>"], "include_personal": true}},
     "max_rows_per_query": 100}

:func:`parse_scope` is the only way in from untrusted input: it reports every problem at
once, each with the path of the offending value, and returns a normalised :class:`Scope`.
Normalised means lists sorted, team ids lowercased, and defaults filled in (every granted
resource has a filter), so two scopes that grant the same access compare equal and
serialise to the same :meth:`Scope.to_json` text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

from mosaic.text import key_path

__all__ = [
    "DEFAULT_MAX_ROWS_PER_QUERY",
    "MAX_ROWS_PER_QUERY_LIMIT",
    "RESOURCES",
    "SENSITIVE_RESOURCES",
    "ResourceFilter",
    "Scope",
    "ScopeError",
    "ScopeProblem",
    "parse_scope",
]

RESOURCES: tuple[str, ...] = ("tasks", "notes", "memory", "credentials", "api_keys")
SENSITIVE_RESOURCES: frozenset[str] = frozenset({"credentials", "api_keys"})
DEFAULT_MAX_ROWS_PER_QUERY = 100
MAX_ROWS_PER_QUERY_LIMIT = 10_000
# Teams one filter may include: what resource-service accepts in one visibility
# (resource_service.domain.MAX_TEAMS), so that every valid grant can be served.
MAX_TEAMS_PER_FILTER = 1000

_TOP_LEVEL_KEYS = ("excluded_resources", "filters", "max_rows_per_query", "resources")
_FILTER_KEYS = ("include_personal", "include_teams")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


@dataclass(frozen=True)
class ScopeProblem:
    """One thing wrong with a scope: where (``"resources[2]"``, ``""`` for the whole) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path or '<root>'}: {self.message}"


class ScopeError(ValueError):
    """A scope was refused; ``problems`` lists every reason, each with its path."""

    reason = "INVALID_SCOPE"

    def __init__(self, problems: Iterable[ScopeProblem]) -> None:
        self.problems = tuple(problems)
        listed = "; ".join(str(problem) for problem in self.problems)
        super().__init__(f"invalid scope: {listed}")

    @property
    def violations(self) -> tuple[tuple[str, str], ...]:
        """The problems as ``(field, description)`` pairs, as ``google.rpc.BadRequest`` wants."""
        return tuple((problem.path, problem.message) for problem in self.problems)


@dataclass(frozen=True)
class ResourceFilter:
    """Which rows of one resource are visible: the subject's personal rows, and these teams'."""

    include_teams: tuple[str, ...] = ()
    include_personal: bool = True


@dataclass(frozen=True)
class Scope:
    """A validated, normalised grant scope; building one from bad values raises ScopeError."""

    resources: tuple[str, ...]
    excluded_resources: tuple[str, ...] = ()
    filters: Mapping[str, ResourceFilter] = field(default_factory=lambda: MappingProxyType({}))
    max_rows_per_query: int = DEFAULT_MAX_ROWS_PER_QUERY

    def __post_init__(self) -> None:
        # Validating here, not only in parse_scope, means no code path can hold a Scope
        # that breaks the rules (dataclasses.replace and direct construction included).
        problems: list[ScopeProblem] = []
        fields = _check_scope(_fields_as_raw(self), problems)
        if problems or fields is None:
            raise ScopeError(problems)
        object.__setattr__(self, "resources", fields.resources)
        object.__setattr__(self, "excluded_resources", fields.excluded_resources)
        object.__setattr__(self, "filters", fields.filters)
        object.__setattr__(self, "max_rows_per_query", fields.max_rows_per_query)

    def __hash__(self) -> int:
        # MappingProxyType is not hashable; hash its (sorted, immutable) items instead.
        return hash(
            (
                self.resources,
                self.excluded_resources,
                tuple(self.filters.items()),
                self.max_rows_per_query,
            )
        )

    @property
    def sensitive_resources(self) -> frozenset[str]:
        """The granted resources that need ``--allow-sensitive`` (credentials, api_keys)."""
        return frozenset(self.resources) & SENSITIVE_RESOURCES

    def allows(self, resource: str) -> bool:
        """Return whether the scope grants ``resource`` (listed and not excluded)."""
        return resource in self.resources and resource not in self.excluded_resources

    def filter_for(self, resource: str) -> ResourceFilter:
        """Return the row filter of a granted ``resource``; raises ``ValueError`` if not granted."""
        if not self.allows(resource):
            # Handing out a default filter for an ungranted resource would invite callers
            # to show rows they must not; fail closed instead.
            raise ValueError("resource is not granted by this scope")
        return self.filters.get(resource, ResourceFilter())

    def row_visible(
        self,
        *,
        subject_user_id: str,
        resource: str,
        owner_user_id: str,
        team_id: str | None,
    ) -> bool:
        """Return whether a row may be shown under this scope.

        It may iff the resource is granted, the row belongs to the subject user, and either
        it has no team and ``include_personal`` holds, or its team is in ``include_teams``.

        ``team_id`` of ``None`` or ``""`` (proto3's unset string) means a personal row. Ids
        in UUID form are compared case-insensitively; anything else must match exactly.
        """
        if not self.allows(resource) or not subject_user_id:
            return False
        if _canonical_id(owner_user_id) != _canonical_id(subject_user_id):
            return False
        row_filter = self.filter_for(resource)
        if not team_id:
            return row_filter.include_personal
        return _canonical_id(team_id) in row_filter.include_teams

    def to_dict(self) -> dict[str, Any]:
        """Return the scope as plain JSON-ready data with every default written out."""
        return {
            "resources": list(self.resources),
            "excluded_resources": list(self.excluded_resources),
            "filters": {
                resource: {
                    "include_teams": list(row_filter.include_teams),
                    "include_personal": row_filter.include_personal,
                }
                for resource, row_filter in self.filters.items()
            },
            "max_rows_per_query": self.max_rows_per_query,
        }

    def to_json(self) -> str:
        """Return canonical JSON (sorted keys, no spaces) that ``parse_scope`` reads back equal."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)


def parse_scope(value: str | bytes | Mapping[str, Any]) -> Scope:
    """Return the :class:`Scope` that ``value`` (JSON text or decoded JSON) describes.

    Raises :class:`ScopeError` listing every problem found, and nothing else, whatever
    ``value`` holds.
    """
    problems: list[ScopeProblem] = []
    if isinstance(value, str | bytes | bytearray):
        try:
            decoded = _decode_json(value)
        except _InvalidJSON as exc:
            raise ScopeError([ScopeProblem("", f"invalid JSON: {exc}")]) from None
    else:
        decoded = value
    fields = _check_scope(decoded, problems)
    if problems or fields is None:
        raise ScopeError(problems)
    return Scope(
        resources=fields.resources,
        excluded_resources=fields.excluded_resources,
        filters=fields.filters,
        max_rows_per_query=fields.max_rows_per_query,
    )


class _InvalidJSON(Exception):
    pass


class _JSONObject(dict[str, Any]):
    """A decoded JSON object that remembers keys written more than once (json keeps the last)."""

    duplicate_keys: tuple[str, ...] = ()

    @classmethod
    def from_pairs(cls, pairs: list[tuple[str, Any]]) -> _JSONObject:
        obj = cls(pairs)
        if len(obj) != len(pairs):
            seen: set[str] = set()
            duplicates: list[str] = []
            for key, _ in pairs:
                if key in seen and key not in duplicates:
                    duplicates.append(key)
                seen.add(key)
            obj.duplicate_keys = tuple(duplicates)
        return obj


def _reject_constant(name: str) -> Any:
    raise _InvalidJSON(f"{name} is not a JSON value")


def _decode_json(text: str | bytes | bytearray) -> Any:
    try:
        return json.loads(
            text, object_pairs_hook=_JSONObject.from_pairs, parse_constant=_reject_constant
        )
    except json.JSONDecodeError as exc:
        raise _InvalidJSON(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except UnicodeDecodeError:
        raise _InvalidJSON("the text is not valid UTF-8, UTF-16 or UTF-32") from None
    except RecursionError:
        raise _InvalidJSON("values are nested too deeply") from None
    except ValueError:
        # What is left is Python refusing an integer with thousands of digits.
        raise _InvalidJSON("a number is too long") from None


class _Fields(NamedTuple):
    resources: tuple[str, ...]
    excluded_resources: tuple[str, ...]
    filters: Mapping[str, ResourceFilter]
    max_rows_per_query: int


def _fields_as_raw(scope: Scope) -> dict[str, Any]:
    """The fields of a directly constructed Scope in the JSON shape the checker reads."""
    filters: Any = scope.filters
    if isinstance(filters, Mapping):
        filters = {
            resource: (
                {
                    "include_teams": _list_or_self(row_filter.include_teams),
                    "include_personal": row_filter.include_personal,
                }
                if isinstance(row_filter, ResourceFilter)
                else row_filter
            )
            for resource, row_filter in filters.items()
        }
    return {
        "resources": _list_or_self(scope.resources),
        "excluded_resources": _list_or_self(scope.excluded_resources),
        "filters": filters,
        "max_rows_per_query": scope.max_rows_per_query,
    }


def _list_or_self(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _check_scope(value: Any, problems: list[ScopeProblem]) -> _Fields | None:
    """Append every problem of ``value`` to ``problems``; return the normalised fields if none."""
    if not isinstance(value, Mapping):
        problems.append(ScopeProblem("", "must be a JSON object"))
        return None
    _check_keys(value, "", _TOP_LEVEL_KEYS, problems)

    if "resources" in value:
        resources = _check_resource_list(value["resources"], "resources", problems)
        if resources is not None and not value["resources"]:
            problems.append(ScopeProblem("resources", "must list at least one resource"))
    else:
        resources = None
        problems.append(ScopeProblem("resources", "is required"))

    excluded: dict[int, str] | None = {}
    if "excluded_resources" in value:
        excluded = _check_resource_list(value["excluded_resources"], "excluded_resources", problems)
    granted = set((resources or {}).values())
    for index, name in (excluded or {}).items():
        if name in granted:
            problems.append(
                ScopeProblem(
                    f"excluded_resources[{index}]",
                    "is also listed in resources; a resource is either granted or excluded",
                )
            )

    filters: dict[str, ResourceFilter] = {}
    if "filters" in value:
        # Only check membership when resources itself was readable, to avoid a second
        # problem per filter that merely repeats "resources is wrong".
        filters = _check_filters(
            value["filters"], granted if resources is not None else None, problems
        )

    max_rows = DEFAULT_MAX_ROWS_PER_QUERY
    if "max_rows_per_query" in value:
        raw_max_rows = value["max_rows_per_query"]
        # bool is an int subclass in Python, but true is not a row count.
        if isinstance(raw_max_rows, bool) or not isinstance(raw_max_rows, int):
            problems.append(ScopeProblem("max_rows_per_query", "must be an integer"))
        elif not 1 <= raw_max_rows <= MAX_ROWS_PER_QUERY_LIMIT:
            problems.append(
                ScopeProblem(
                    "max_rows_per_query", f"must be between 1 and {MAX_ROWS_PER_QUERY_LIMIT}"
                )
            )
        else:
            max_rows = raw_max_rows

    if problems or resources is None or excluded is None:
        return None
    ordered = tuple(sorted(granted))
    return _Fields(
        resources=ordered,
        excluded_resources=tuple(sorted(excluded.values())),
        filters=MappingProxyType({name: filters.get(name, ResourceFilter()) for name in ordered}),
        max_rows_per_query=max_rows,
    )


def _check_keys(
    obj: Mapping[Any, Any], path: str, allowed: tuple[str, ...], problems: list[ScopeProblem]
) -> None:
    for key in getattr(obj, "duplicate_keys", ()):
        problems.append(ScopeProblem(key_path(path, key), "appears more than once"))
    for key in obj:
        if not isinstance(key, str):
            problems.append(ScopeProblem(path, "object keys must be strings"))
        elif key not in allowed:
            problems.append(
                ScopeProblem(key_path(path, key), f"unknown key; allowed: {', '.join(allowed)}")
            )


def _check_resource_list(
    value: Any, path: str, problems: list[ScopeProblem]
) -> dict[int, str] | None:
    """Return the valid, first-seen entries by index, or None when ``value`` is not a list."""
    if not isinstance(value, list | tuple):
        problems.append(ScopeProblem(path, "must be a list of resource names"))
        return None
    first_index: dict[str, int] = {}
    entries: dict[int, str] = {}
    for index, name in enumerate(value):
        item_path = f"{path}[{index}]"
        if not isinstance(name, str):
            problems.append(ScopeProblem(item_path, "must be a string"))
        elif name not in RESOURCES:
            problems.append(
                ScopeProblem(item_path, f"unknown resource; allowed: {', '.join(RESOURCES)}")
            )
        elif name in first_index:
            problems.append(ScopeProblem(item_path, f"duplicates {path}[{first_index[name]}]"))
        else:
            first_index[name] = index
            entries[index] = name
    return entries


def _check_filters(
    value: Any, granted: set[str] | None, problems: list[ScopeProblem]
) -> dict[str, ResourceFilter]:
    if not isinstance(value, Mapping):
        problems.append(ScopeProblem("filters", "must be an object keyed by resource"))
        return {}
    for key in getattr(value, "duplicate_keys", ()):
        problems.append(ScopeProblem(key_path("filters", key), "appears more than once"))
    filters: dict[str, ResourceFilter] = {}
    for resource, raw_filter in value.items():
        if not isinstance(resource, str):
            problems.append(ScopeProblem("filters", "object keys must be strings"))
            continue
        path = key_path("filters", resource)
        if resource not in RESOURCES:
            problems.append(
                ScopeProblem(path, f"unknown resource; allowed: {', '.join(RESOURCES)}")
            )
        elif granted is not None and resource not in granted:
            problems.append(ScopeProblem(path, "filters a resource not listed in resources"))
        row_filter = _check_filter(raw_filter, path, problems)
        if row_filter is not None:
            filters[resource] = row_filter
    return filters


def _check_filter(value: Any, path: str, problems: list[ScopeProblem]) -> ResourceFilter | None:
    if not isinstance(value, Mapping):
        problems.append(ScopeProblem(path, "must be an object"))
        return None
    _check_keys(value, path, _FILTER_KEYS, problems)
    valid = True

    teams: list[str] = []
    if "include_teams" in value:
        teams_path = f"{path}.include_teams"
        raw_teams = value["include_teams"]
        if not isinstance(raw_teams, list | tuple):
            problems.append(ScopeProblem(teams_path, "must be a list of team UUIDs"))
            valid = False
        elif len(raw_teams) > MAX_TEAMS_PER_FILTER:
            problems.append(ScopeProblem(teams_path, f"more than {MAX_TEAMS_PER_FILTER} teams"))
            valid = False
        else:
            first_index: dict[str, int] = {}
            for index, team in enumerate(raw_teams):
                item_path = f"{teams_path}[{index}]"
                if not isinstance(team, str) or not _UUID.fullmatch(team):
                    problems.append(
                        ScopeProblem(item_path, "must be a UUID (8-4-4-4-12 hex digits)")
                    )
                    valid = False
                    continue
                canonical = team.lower()
                if canonical in first_index:
                    problems.append(
                        ScopeProblem(
                            item_path, f"duplicates {teams_path}[{first_index[canonical]}]"
                        )
                    )
                    valid = False
                else:
                    first_index[canonical] = index
                    teams.append(canonical)

    include_personal = True
    if "include_personal" in value:
        raw_personal = value["include_personal"]
        if not isinstance(raw_personal, bool):
            problems.append(ScopeProblem(f"{path}.include_personal", "must be true or false"))
            valid = False
        else:
            include_personal = raw_personal

    if not valid:
        return None
    return ResourceFilter(include_teams=tuple(sorted(teams)), include_personal=include_personal)


def _canonical_id(value: str) -> str:
    if isinstance(value, str) and _UUID.fullmatch(value):
        return value.lower()
    return value
