"""Imports every command module so its commands are registered (one line per area)."""

from mosaic.cli import commands_resources  # noqa: F401
