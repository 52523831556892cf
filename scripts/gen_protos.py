"""Regenerate the Python code for protos/ into libs/ (one command, reproducible).

With --check, generate into a temporary tree and fail if it differs from what is
committed: CI uses this to catch generated code that drifted from the protos.
"""

from __future__ import annotations

import argparse
import filecmp
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
PACKAGE_DIR = Path("mosaic/federation/v1")
OUT = ROOT / "libs"


def generate(out_root: Path) -> None:
    protos = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / PACKAGE_DIR).glob("*.proto"))
    plugin = Path(sys.executable).parent / "protoc-gen-mypy"
    grpc_plugin = Path(sys.executable).parent / "protoc-gen-mypy_grpc"
    target = out_root / PACKAGE_DIR
    if target.exists():
        for old in target.glob("*_pb2*.py*"):
            old.unlink()
    target.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--plugin=protoc-gen-mypy={plugin}",
        f"--mypy_out={out_root}",
        f"--plugin=protoc-gen-mypy_grpc={grpc_plugin}",
        f"--mypy_grpc_out={out_root}",
        *protos,
    ]
    # protoc-gen-mypy announces every file it writes; keep CI logs quiet unless it fails.
    done = subprocess.run(cmd, cwd=PROTOS, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(done.returncode)
    for pkg in (Path("mosaic/federation"), PACKAGE_DIR):
        (out_root / pkg / "__init__.py").touch()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed code drifted")
    args = parser.parse_args()
    if not args.check:
        generate(OUT)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = Path(tmp) / PACKAGE_DIR
        committed = OUT / PACKAGE_DIR
        names = sorted(
            {p.name for p in fresh.glob("*_pb2*")} | {p.name for p in committed.glob("*_pb2*")}
        )
        drift = [
            n
            for n in names
            if not (fresh / n).exists()
            or not (committed / n).exists()
            or not filecmp.cmp(fresh / n, committed / n, shallow=False)
        ]
        if drift:
            print("generated code drifted from protos/: " + ", ".join(drift), file=sys.stderr)
            print("remediation: run `make proto` and commit the result", file=sys.stderr)
            return 1
    print("generated code matches protos/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
