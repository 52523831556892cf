"""Imports every command module so its commands are registered (one line per area)."""

import mosaic.cli.commands_health  # noqa: F401
from mosaic.cli import commands_grants, commands_resources, commands_seal  # noqa: F401
