"""Mosaic Federation: shared library for the federation services."""

__version__ = "0.1.0"
