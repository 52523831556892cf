"""Imports every command module so its commands are registered (one line per area)."""
