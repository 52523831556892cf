#!/bin/sh
# First-boot init + start for the smallstep/step-ca container (Mosaic Federation).
#
# Idempotent: when $STEPPATH/config/ca.json exists it only starts step-ca.
# Otherwise it runs `step ca init` non-interactively, adds the JWK provisioner
# `mosaic-fed` whose X.509 template writes the grant OIDs
# (templates/federation.tpl), removes the bootstrap provisioner that `step ca init`
# insists on creating (so mosaic-fed is the only way to get a certificate), and
# then execs step-ca.
#
# NOTE: not exercised in this repository's CI (no Docker engine, no `step` CLI);
# the flags follow the step CLI reference for `step ca init` and
# `step ca provisioner add` (offline mode, editing ca.json).
#
# Environment (all optional):
#   STEPPATH                      default /home/step (the image's default)
#   MOSAIC_STEPCA_PASSWORD_FILE   file holding the password for the CA keys and the
#                                 provisioner key (e.g. a compose secret);
#                                 default /run/secrets/stepca_password
#   MOSAIC_STEPCA_PASSWORD        used only when the password file does not exist
#   MOSAIC_STEPCA_NAME            default "Mosaic Federation CA"
#   MOSAIC_STEPCA_DNS_NAMES       comma-separated, default "step-ca,localhost,127.0.0.1"
#                                 (the ca-service token audience must use one of them)
#   MOSAIC_STEPCA_ADDRESS         default ":9000"
#   MOSAIC_STEPCA_PROVISIONER     default "mosaic-fed"
#   MOSAIC_STEPCA_TEMPLATE        default /mosaic/step-ca/templates/federation.tpl
#                                 (mount infra/step-ca/templates there)
#   MOSAIC_STEPCA_EXPORT_DIR      when set (docker-compose.federated.yml: $STEPPATH/export),
#                                 every start copies what `mosaic init --ca step-ca` needs
#                                 into this directory, world-readable: root_ca.crt and
#                                 ca.json. Neither is secret on its own: the provisioner key
#                                 in ca.json (encryptedKey) is a JWE under the password, and
#                                 the CA keys stay in $STEPPATH/secrets (0700, this user).
#                                 $STEPPATH becomes 0711 so another user can reach the export
#                                 directory without listing anything else. The mosaic-init
#                                 container mounts this volume read-only, decrypts the
#                                 provisioner key with the same password and seals it into
#                                 the instance home (docs/SETUP.md, "step-ca").
set -eu

STEPPATH="${STEPPATH:-/home/step}"
export STEPPATH
CONFIG="$STEPPATH/config/ca.json"
PASSWORD_FILE="${MOSAIC_STEPCA_PASSWORD_FILE:-/run/secrets/stepca_password}"
NAME="${MOSAIC_STEPCA_NAME:-Mosaic Federation CA}"
DNS_NAMES="${MOSAIC_STEPCA_DNS_NAMES:-step-ca,localhost,127.0.0.1}"
ADDRESS="${MOSAIC_STEPCA_ADDRESS:-:9000}"
PROVISIONER="${MOSAIC_STEPCA_PROVISIONER:-mosaic-fed}"
TEMPLATE_SRC="${MOSAIC_STEPCA_TEMPLATE:-/mosaic/step-ca/templates/federation.tpl}"
BOOTSTRAP_PROVISIONER="bootstrap-unused"

umask 077

if [ ! -f "$PASSWORD_FILE" ]; then
    if [ -n "${MOSAIC_STEPCA_PASSWORD:-}" ]; then
        mkdir -p "$STEPPATH/secrets"
        PASSWORD_FILE="$STEPPATH/secrets/password"
        printf '%s\n' "$MOSAIC_STEPCA_PASSWORD" > "$PASSWORD_FILE"
        chmod 600 "$PASSWORD_FILE"
    else
        echo "init.sh: no password: mount a secret at $PASSWORD_FILE" \
             "(or set MOSAIC_STEPCA_PASSWORD_FILE / MOSAIC_STEPCA_PASSWORD)" >&2
        exit 1
    fi
fi

case "$(head -n 1 "$PASSWORD_FILE")" in
    CHANGE-ME*)
        echo "init.sh: $PASSWORD_FILE still holds the placeholder from password.txt.example;" \
             "write a random password there (openssl rand -hex 32)" >&2
        exit 1
        ;;
esac

if [ ! -f "$CONFIG" ]; then
    if [ ! -f "$TEMPLATE_SRC" ]; then
        echo "init.sh: X.509 template $TEMPLATE_SRC not found (mount infra/step-ca/templates)" >&2
        exit 1
    fi
    echo "init.sh: initializing a new CA in $STEPPATH" >&2
    mkdir -p "$STEPPATH/templates"
    cp "$TEMPLATE_SRC" "$STEPPATH/templates/federation.tpl"

    # --dns is repeatable; pass one flag per name.
    set -- --name "$NAME" --address "$ADDRESS" \
        --provisioner "$BOOTSTRAP_PROVISIONER" \
        --password-file "$PASSWORD_FILE" \
        --provisioner-password-file "$PASSWORD_FILE" \
        --deployment-type standalone
    OLD_IFS="$IFS"; IFS=','
    for dns in $DNS_NAMES; do
        set -- "$@" --dns "$dns"
    done
    IFS="$OLD_IFS"
    step ca init "$@"

    # The federation provisioner: new EC P-256 JWK key (encrypted in ca.json with the
    # password), the Mosaic template, default claims (max certificate lifetime 24h).
    step ca provisioner add "$PROVISIONER" --type JWK --create \
        --password-file "$PASSWORD_FILE" \
        --x509-template "$STEPPATH/templates/federation.tpl" \
        --ca-config "$CONFIG"

    # step ca init always creates a first provisioner with the default template
    # (no grant OIDs); leave only mosaic-fed able to issue.
    step ca provisioner remove "$BOOTSTRAP_PROVISIONER" --ca-config "$CONFIG"

    echo "init.sh: root fingerprint (SHA-256):" \
         "$(step certificate fingerprint "$STEPPATH/certs/root_ca.crt")" >&2
fi

if [ -n "${MOSAIC_STEPCA_EXPORT_DIR:-}" ]; then
    mkdir -p "$MOSAIC_STEPCA_EXPORT_DIR"
    chmod 711 "$STEPPATH"
    chmod 755 "$MOSAIC_STEPCA_EXPORT_DIR"
    for pair in "certs/root_ca.crt:root_ca.crt" "config/ca.json:ca.json"; do
        src="$STEPPATH/${pair%%:*}"
        dest="$MOSAIC_STEPCA_EXPORT_DIR/${pair#*:}"
        cp "$src" "$dest.tmp"
        chmod 644 "$dest.tmp"
        mv -f "$dest.tmp" "$dest"
    done
    echo "init.sh: exported root_ca.crt and ca.json to $MOSAIC_STEPCA_EXPORT_DIR" >&2
fi

exec step-ca --password-file "$PASSWORD_FILE" "$CONFIG"
