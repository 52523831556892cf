"""Imports every command module so its commands are registered (one line per area)."""

from mosaic.cli import commands_grants, commands_resources, commands_seal  # noqa: F401
