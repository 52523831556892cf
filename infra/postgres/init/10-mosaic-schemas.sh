#!/bin/sh
# One schema and one login role per Mosaic service, in the database $POSTGRES_DB.
#
# The official Postgres image runs this once, on first start with an empty data
# directory (mounted at /docker-entrypoint-initdb.d/). It is idempotent, so an
# operator can also run it by hand against an existing server (docs/SETUP.md):
#
#   PGHOST=db.example PGUSER=postgres POSTGRES_DB=mosaic \
#   MOSAIC_DB_SECRETS_DIR=/path/to/secrets sh infra/postgres/init/10-mosaic-schemas.sh
#
# For each service (schema: role)  ca: mosaic_ca, grants: mosaic_grants,
# enrollment: mosaic_enrollment, resources: mosaic_resources, gateway: mosaic_gateway
#   * the role logs in with the password in $MOSAIC_DB_SECRETS_DIR/db_password_<schema>
#     (a compose secret; never in this file or in the image);
#   * the role owns its schema, and its search_path is that schema;
#   * it may CONNECT and CREATE on the database: each service runs
#     `CREATE SCHEMA IF NOT EXISTS <schema>` at start-up, and Postgres checks the
#     database CREATE privilege before it looks whether the schema exists;
#   * it has no privilege on the other services' schemas (they belong to other roles),
#     so one service's credentials cannot read another service's tables.
# PUBLIC loses CONNECT on the database: only these roles (and superusers) get in.
set -eu

SECRETS_DIR="${MOSAIC_DB_SECRETS_DIR:-/run/secrets}"
DB="${POSTGRES_DB:-mosaic}"
SCHEMAS="${MOSAIC_DB_SCHEMAS:-ca grants enrollment resources gateway}"

# The image's entrypoint connects over the local socket as $POSTGRES_USER.
if [ -n "${POSTGRES_USER:-}" ]; then
    PGUSER="${PGUSER:-$POSTGRES_USER}"
    export PGUSER
fi

for schema in $SCHEMAS; do
    file="$SECRETS_DIR/db_password_$schema"
    if [ ! -s "$file" ]; then
        echo "10-mosaic-schemas: missing password file $file for schema $schema" >&2
        exit 1
    fi
done

psql -v ON_ERROR_STOP=1 --no-psqlrc --dbname "$DB" --set=db="$DB" <<'SQL'
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
SQL

for schema in $SCHEMAS; do
    role="mosaic_$schema"
    # psql reads the password itself (a backquoted command drops the trailing newline)
    # and quotes it (:'password'), so any character is safe. Only the file's path is on
    # a command line (psql's and cat's): the password never is, where `ps` would show it.
    psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet --dbname "$DB" \
        --set=db="$DB" --set=role="$role" --set=schema="$schema" \
        --set=password_file="$SECRETS_DIR/db_password_$schema" <<'SQL'
\set password `cat :'password_file'`
SELECT NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') AS role_missing \gset
\if :role_missing
CREATE ROLE :"role" LOGIN PASSWORD :'password';
\else
ALTER ROLE :"role" LOGIN PASSWORD :'password';
\endif
GRANT CONNECT, CREATE ON DATABASE :"db" TO :"role";
CREATE SCHEMA IF NOT EXISTS :"schema" AUTHORIZATION :"role";
ALTER SCHEMA :"schema" OWNER TO :"role";
ALTER ROLE :"role" IN DATABASE :"db" SET search_path = :"schema";
SQL
    echo "10-mosaic-schemas: role $role owns schema $schema in database $DB" >&2
done
