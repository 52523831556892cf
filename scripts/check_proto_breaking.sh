#!/usr/bin/env bash
# proto-breaking: `buf breaking` (rules FILE, protos/buf.yaml) against the first published
# protos, so no change ever removes, renumbers or retypes a field, enum value, RPC or file
# that a gateway of an older release may still send or expect. Peer gateways upgrade
# independently, and the services of one instance restart one at a time.
#
# The baseline is a commit of this repository: a clone without it (a shallow one) fails
# here with a message rather than skipping the check.
#
#   bash scripts/check_proto_breaking.sh BUF_BINARY
set -euo pipefail

buf="$(realpath "$1")"
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# "Protos v1 for all five services": the first protos any gateway spoke.
BASELINE=78816ceceb3b433d094965c34db6585fcfcf5b01

if ! git cat-file -e "${BASELINE}^{commit}" 2>/dev/null; then
    echo "proto-breaking: baseline commit ${BASELINE:0:7} is not in this clone;" \
        "clone the whole history (not --depth) to check wire compatibility" >&2
    exit 1
fi
cd protos
"$buf" breaking --against "../.git#ref=${BASELINE},subdir=protos"
echo "proto-breaking: ok (no breaking change since ${BASELINE:0:7})"
