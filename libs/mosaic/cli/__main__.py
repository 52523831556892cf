"""`python -m mosaic.cli`: the same as the `mosaic` console script."""

from mosaic.cli.main import run

run()
