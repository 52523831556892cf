"""Imports every command module so its commands are registered (one line per area)."""

from mosaic.cli import (  # noqa: F401
    commands_enroll,
    commands_grants,
    commands_health,
    commands_query,
    commands_resources,
    commands_seal,
    demo,
)
