#!/usr/bin/env bash
# Ensure the Debian packages the test suite and the step-ca build need.
#
#   infra/scripts/ensure-system-deps.sh [COMPONENT...]
#
# Components (no arguments = all of them):
#   postgres  -> postgresql  (checks /usr/lib/postgresql/<ver>/bin/initdb; initdb is
#                             deliberately NOT on PATH on Debian, and we leave it that way)
#   redis     -> redis-server
#   go        -> golang-go
#   stepca    -> golang-github-smallstep-certificates-dev (+ golang-go to build it)
#   compose   -> docker-compose (validates compose files without a Docker engine)
#   npm       -> npm           (installs the pinned `buf` for `make lint`: ensure-buf.sh)
#
# Idempotent and fast: when everything asked for is present, no apt command runs.
# When something is missing: as root, `apt-get update` once and install it; otherwise
# print exactly what to install and exit 1.
set -euo pipefail

ALL_COMPONENTS=(postgres redis go stepca compose npm)
STEPCA_SRC=/usr/share/gocode/src/github.com/smallstep/certificates

usage() {
    echo "usage: $0 [postgres|redis|go|stepca|compose|npm ...]   (no arguments = all)" >&2
}

# check_<component> returns 0 when the component is present.
check_postgres() { compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; }
check_redis() { command -v redis-server >/dev/null 2>&1; }
check_go() { command -v go >/dev/null 2>&1; }
check_stepca() { [[ -d "$STEPCA_SRC" ]]; }
check_compose() { command -v docker-compose >/dev/null 2>&1; }
check_npm() { command -v npm >/dev/null 2>&1; }

package_for() {
    case "$1" in
        postgres) echo postgresql ;;
        redis) echo redis-server ;;
        go) echo golang-go ;;
        stepca) echo golang-github-smallstep-certificates-dev ;;
        compose) echo docker-compose ;;
        npm) echo npm ;;
    esac
}

normalize() {
    case "$1" in
        postgres | postgresql | pg) echo postgres ;;
        redis | redis-server | valkey) echo redis ;;
        go | golang | golang-go) echo go ;;
        stepca | step-ca | smallstep) echo stepca ;;
        compose | docker-compose) echo compose ;;
        npm | node | buf) echo npm ;;
        -h | --help) usage; exit 0 ;;
        *) echo "ensure-system-deps: unknown component '$1'" >&2; usage; exit 2 ;;
    esac
}

requested=()
if (($# == 0)); then
    requested=("${ALL_COMPONENTS[@]}")
else
    for arg in "$@"; do
        requested+=("$(normalize "$arg")")
    done
fi
# Building step-ca from the packaged sources needs the Go toolchain.
for c in "${requested[@]}"; do
    if [[ $c == stepca ]]; then requested+=(go); fi
done

missing_components=()
missing_packages=()
for c in "${requested[@]}"; do
    if ! "check_$c"; then
        pkg=$(package_for "$c")
        # de-duplicate (a component may be listed twice)
        if [[ " ${missing_packages[*]-} " != *" $pkg "* ]]; then
            missing_components+=("$c")
            missing_packages+=("$pkg")
        fi
    fi
done

if ((${#missing_packages[@]} == 0)); then
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    {
        echo "ensure-system-deps: missing: ${missing_components[*]}"
        echo "Install as root with:"
        echo "  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing_packages[*]}"
    } >&2
    exit 1
fi

echo "ensure-system-deps: installing ${missing_packages[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >&2
apt-get install -y -q --no-install-recommends "${missing_packages[@]}" >&2

still_missing=()
for c in "${missing_components[@]}"; do
    if ! "check_$c"; then still_missing+=("$c"); fi
done
if ((${#still_missing[@]} > 0)); then
    echo "ensure-system-deps: still missing after install: ${still_missing[*]}" >&2
    exit 1
fi
echo "ensure-system-deps: ok" >&2
