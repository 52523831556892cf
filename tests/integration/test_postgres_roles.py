"""infra/postgres/init/10-mosaic-schemas.sh against a real Postgres: one login role per
service owning its schema and nothing else, idempotent, and no password on a command line.

The compose file runs this script in the postgres container; SETUP.md tells operators to
run it by hand against an existing server. Here it runs by hand, with `psql` wrapped so
every command line it is started with is recorded.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
from pathlib import Path

import asyncpg
import pytest

from tests.support.postgres import PostgresServer, find_initdb

pytestmark = pytest.mark.slow

SCRIPT = (
    Path(__file__).resolve().parents[2] / "infra" / "postgres" / "init" / "10-mosaic-schemas.sh"
)
SCHEMAS = ("ca", "grants")
# Characters a shell or SQL would trip on, so quoting is exercised for real.
PASSWORDS = {"ca": "c4 'q\" $HOME `x` ;--", "grants": "g-\\n%s&|*"}


def _run_script(server: PostgresServer, db: str, secrets: Path, bin_dir: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PG")},
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PGHOST": server.host,
        "PGPORT": str(server.port),
        "PGUSER": server.user,
        "PGPASSWORD": server.password,
        "POSTGRES_DB": db,
        "MOSAIC_DB_SECRETS_DIR": str(secrets),
        "MOSAIC_DB_SCHEMAS": " ".join(SCHEMAS),
    }
    proc = subprocess.run(
        ["sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr


def _psql_recorder(bin_dir: Path) -> None:
    bin_dir.mkdir()
    real = find_initdb().parent / "psql"
    wrapper = bin_dir / "psql"
    wrapper.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{bin_dir}/argv.log"\nexec "{real}" "$@"\n'
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)


def _write_passwords(secrets: Path, passwords: dict[str, str]) -> None:
    secrets.mkdir(exist_ok=True)
    for schema, password in passwords.items():
        (secrets / f"db_password_{schema}").write_text(password + "\n")


async def _as_role(server: PostgresServer, db: str, schema: str, password: str) -> list[str]:
    """As mosaic_<schema>: make a table in its own schema, then try the others'."""
    conn = await asyncpg.connect(
        host=server.host,
        port=server.port,
        user=f"mosaic_{schema}",
        password=password,
        database=db,
    )
    try:
        assert await conn.fetchval("SHOW search_path") == schema
        await conn.execute("CREATE TABLE IF NOT EXISTS mine (id int)")  # lands in its schema
        assert await conn.fetchval("SELECT to_regclass($1)::text", f"{schema}.mine")
        denied = []
        for other in SCHEMAS:
            if other == schema:
                continue
            try:
                await conn.fetch(f"SELECT * FROM {other}.mine")  # noqa: S608 - our own names
            except asyncpg.InsufficientPrivilegeError:
                denied.append(other)
        return denied
    finally:
        await conn.close()


def test_one_role_per_schema_idempotent_and_no_password_on_a_command_line(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    db = "mosaic_roles"
    postgres_server.create_database(db)
    bin_dir = tmp_path / "bin"
    _psql_recorder(bin_dir)
    secrets = tmp_path / "secrets"
    _write_passwords(secrets, PASSWORDS)

    _run_script(postgres_server, db, secrets, bin_dir)
    assert asyncio.run(_as_role(postgres_server, db, "grants", PASSWORDS["grants"])) == ["ca"]
    assert asyncio.run(_as_role(postgres_server, db, "ca", PASSWORDS["ca"])) == ["grants"]

    # Run again with a new password for one role: the role is updated, nothing breaks.
    rotated = {**PASSWORDS, "ca": "rotated-" + PASSWORDS["ca"]}
    _write_passwords(secrets, rotated)
    _run_script(postgres_server, db, secrets, bin_dir)
    assert asyncio.run(_as_role(postgres_server, db, "ca", rotated["ca"])) == ["grants"]
    with pytest.raises(asyncpg.InvalidPasswordError):
        asyncio.run(_as_role(postgres_server, db, "ca", PASSWORDS["ca"]))

    # Every command line psql was started with, one per line (the wrapper's log).
    argv = (bin_dir / "argv.log").read_text()
    assert argv.count("\n") == 2 * (1 + len(SCHEMAS))
    for password in (*PASSWORDS.values(), *rotated.values()):
        assert password not in argv
        assert password.split()[0] not in argv
