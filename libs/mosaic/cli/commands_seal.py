"""`mosaic seal rotate`: move everything sealed at rest to the current seal secret.

Rotation, as the operator runs it on the host that holds the instance home:

1. ``mosaic seal rotate --generate`` moves ``secrets/seal.key`` to
   ``secrets/seal.previous.key`` and writes a new secret to ``secrets/seal.key``
   (or do both by hand).
2. Restart the services: they seal under the new secret and still open the old one.
3. ``mosaic seal rotate`` re-seals every sealed column through the gateway's RotateSeal
   (grants-service refuses if it still runs with the old secret), and re-seals the sealed
   files of the home (the federation CA keys, the step-ca provisioner key) right here in
   the CLI process, since they are files in the home rather than rows in a service's
   database.
4. Remove ``secrets/seal.previous.key`` and restart the services.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from mosaic.cli.admin import call_admin, load_or_fail
from mosaic.cli.instance import STEPCA_KEY_FILE, stepca_key_context
from mosaic.cli.output import emit, fail, fields, state
from mosaic.config import ConfigError, InstanceConfig
from mosaic.federation.v1 import gateway_pb2
from mosaic.pki import write_private
from mosaic.sealing import Sealer, SealError, generate_secret

seal_app = typer.Typer(
    help="The instance seal secret and what is sealed with it.", no_args_is_help=True
)


@seal_app.command("rotate")
def rotate(
    ctx: typer.Context,
    generate: Annotated[
        bool,
        typer.Option(
            "--generate",
            help="Only step 1: keep the current secret as the previous one and write a new one.",
        ),
    ] = False,
) -> None:
    """Re-seal everything under the current secret so the previous one can be removed."""
    from mosaic.runtime import load_sealer  # imported here: it pulls in the database stack

    config = load_or_fail(ctx, state(ctx).home)
    if generate:
        _generate(ctx, config)
        return
    try:
        sealer = load_sealer(config)
    except ConfigError as exc:
        fail(ctx, "CONFIG", exc.message, exc.remediation)
    reply = call_admin(
        ctx,
        config,
        lambda stub, md: stub.RotateSeal(gateway_pb2.RotateSealRequest(), metadata=md),
        if_interrupted="the gateway may have re-sealed some rows, and the home's files were "
        "not re-sealed: run `mosaic seal rotate` again (re-sealing twice is harmless) and keep "
        "the previous secret until it succeeds",
    )
    try:
        files = reseal_home_files(config, sealer)
    except SealError as exc:
        needs = f" (it was sealed under key id {exc.key_id})" if exc.key_id else ""
        fail(
            ctx,
            exc.reason,
            "a sealed file of the instance home cannot be opened with the configured "
            f"secrets{needs}",
            f"put the secret it was sealed under back as {config.previous_seal_secret_file}, "
            "restart the services, then run `mosaic seal rotate` again",
        )
    previous = config.previous_seal_secret_file
    doc: dict[str, Any] = {
        "resealed": {**dict(reply.resealed), "files": files},
        "key_id": sealer.key_id,
        "previous_seal_secret_file": str(previous) if previous.exists() else None,
        "next_step": (
            f"remove {previous} and restart the services" if previous.exists() else "none"
        ),
    }

    def human() -> None:
        fields(
            "seal rotated",
            {
                **{f"re-sealed ({name})": count for name, count in doc["resealed"].items()},
                "current key id": sealer.key_id,
            },
        )
        if previous.exists():
            typer.echo(
                f"nothing needs the previous secret any more: remove {previous} "
                "and restart the services"
            )

    emit(ctx, doc, human)


def reseal_home_files(config: InstanceConfig, sealer: Sealer) -> int:
    """Re-seal the sealed files of the home under the current secret; return how many changed."""
    from ca_service.keys import reseal_files

    changed = reseal_files(config, sealer)
    path = config.secrets_dir / STEPCA_KEY_FILE
    if path.is_file():
        blob = path.read_bytes()
        if sealer.needs_reseal(blob):
            _replace_private(path, sealer.reseal(blob, stepca_key_context()))
            changed += 1
    return changed


def _generate(ctx: typer.Context, config: InstanceConfig) -> None:
    from mosaic.runtime import load_sealer

    current, previous = config.seal_secret_file, config.previous_seal_secret_file

    def in_progress() -> NoReturn:
        fail(
            ctx,
            "SEAL_ROTATION_IN_PROGRESS",
            f"a previous seal secret is still configured at {previous}",
            f"finish that rotation first: restart the services, run `mosaic seal rotate`, "
            f"then remove {previous}",
        )

    if previous.exists():
        in_progress()
    try:
        old = load_sealer(config)
    except ConfigError as exc:
        fail(ctx, "CONFIG", exc.message, exc.remediation)
    # The previous file appears whole and exclusively: a complete copy is written aside,
    # then hard-linked into place, which fails if the file exists. Of two --generate runs
    # at once the second is refused here instead of moving the first one's new secret over
    # the original (the only secret that opens what is sealed now), and a crash never
    # leaves a half-written previous secret.
    staged = previous.with_name(f".{previous.name}.{os.getpid()}.staged")
    write_private(staged, current.read_bytes())
    try:
        os.link(staged, previous)
    except FileExistsError:
        in_progress()
    finally:
        staged.unlink(missing_ok=True)
    _replace_private(current, generate_secret().encode() + b"\n")
    new = load_sealer(config)
    doc = {
        "seal_secret_file": str(current),
        "previous_seal_secret_file": str(previous),
        "key_id": new.key_id,
        "previous_key_id": old.key_id,
        "next_steps": [
            "restart the services (they load both secrets)",
            "run `mosaic seal rotate`",
            f"remove {previous} and restart the services",
        ],
    }

    def human() -> None:
        fields("new seal secret written", {k: v for k, v in doc.items() if k != "next_steps"})
        for number, step in enumerate(doc["next_steps"], start=1):
            typer.echo(f"{number}. {step}")

    emit(ctx, doc, human)


def _replace_private(path: Path, data: bytes) -> None:
    """Write a secret file atomically: a crash leaves the old content or the new, never half."""
    staging = path.with_name(path.name + ".new")
    write_private(staging, data)
    os.replace(staging, path)
