"""The `mosaic` command line."""

import os
import sys

# gRPC core logs through its own logger, unstructured, to stderr: an `I… Handshake failed`
# line for every TLS connection to the federation port without a client certificate,
# in the middle of the services' JSON lines. Every `mosaic` process (and so every
# service `serve` or `up` starts, which inherit it) runs with GRPC_VERBOSITY=ERROR
# unless the operator set it. gRPC reads it once, when grpc is first imported, so it is
# set here, in the package every entry point (the console script, `python -m
# mosaic.cli`) imports before main.py imports grpc; set later it has no effect.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

# With --json, stdout must hold one JSON document, even when the command line is incomplete
# and Typer shows the help: its rich help prints itself to stdout, plain help is returned
# as text (main.run puts it in the error document). Typer reads this once, when imported.
if "--json" in sys.argv[1:]:
    os.environ.setdefault("TYPER_USE_RICH", "0")
