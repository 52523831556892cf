# One image for every Mosaic Federation service and the `mosaic` CLI.
#
#   docker build -t mosaic-federation:local .
#   docker run --rm mosaic-federation:local --help
#
# The image holds no secret and no instance: the instance home (configuration, seal
# secret, keys) is a volume made at run time by `mosaic init` (docker-compose.federated.yml
# runs it as the one-shot `mosaic-init` service); database passwords come from files.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- builder: the project and its pinned dependencies in a venv --------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY libs ./libs
COPY services ./services
# Not editable: the code (generated protos and migrations included) goes into the venv,
# so the final stage needs nothing from /src. Versions are pinned by constraints.txt.
RUN /opt/venv/bin/pip install --no-cache-dir -c constraints.txt . \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib

# ---- final: the venv, a non-root user, nothing else ---------------------------------------
FROM ${PYTHON_IMAGE}

RUN groupadd --system --gid 10001 mosaic \
    && useradd --system --uid 10001 --gid mosaic --home-dir /var/lib/mosaic \
        --no-create-home --shell /usr/sbin/nologin mosaic \
    && mkdir -p /var/lib/mosaic \
    && chown mosaic:mosaic /var/lib/mosaic \
    && chmod 0700 /var/lib/mosaic

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MOSAIC_HOME=/var/lib/mosaic

# Numeric, so the runtime can check it is not root without reading /etc/passwd.
USER 10001:10001
WORKDIR /var/lib/mosaic

# federation (mTLS) and enrollment (server TLS) listeners with the default port base 7400;
# the admin listener (7440) is loopback-only inside the gateway container.
EXPOSE 7443 7444

# MOSAIC_SERVICE names the service this container runs (compose sets it, and also
# declares the same check per service). Exit 0 only when it answers SERVING.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/bin/sh", "-c", "exec mosaic gateway health \"${MOSAIC_SERVICE:-federation-gateway}\""]

# MOSAIC_DB_PASSWORD_FILE (optional): a file holding this service's Postgres password,
# handed to asyncpg as PGPASSWORD so the password is never part of MOSAIC_DB_URL.
ENTRYPOINT ["/bin/sh", "-c", "if [ -n \"${MOSAIC_DB_PASSWORD_FILE:-}\" ]; then PGPASSWORD=\"$(cat \"$MOSAIC_DB_PASSWORD_FILE\")\" || exit 1; export PGPASSWORD; fi; exec mosaic \"$@\"", "mosaic"]
CMD ["--help"]
