"""The `mosaic` command line."""

import os
import sys

# With --json, stdout must hold one JSON document, even when the command line is incomplete
# and Typer shows the help: its rich help prints itself to stdout, plain help is returned
# as text (main.run puts it in the error document). Typer reads this once, when imported.
if "--json" in sys.argv[1:]:
    os.environ.setdefault("TYPER_USE_RICH", "0")
