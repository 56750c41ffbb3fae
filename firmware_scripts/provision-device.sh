#!/usr/bin/env bash
# Make one device's identity: id, key pair, CSR (or certificate), MQTT credentials and
# the pinned fleet signing key, in a folder that install.sh / build-overlay.sh consume.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$HERE/lib.sh"

usage() {
    cat <<'EOF'
Usage: provision-device.sh --out DIR --fleet-key FILE [options]

Create (or complete) a device identity folder. Existing keys, ids and passwords are
kept: re-running with the same arguments changes nothing; --force makes new ones.

Files written to DIR:
  device-id            the device id (also the MQTT user name and the certificate CN)
  device.key           private key, mode 0600 (EC P-256 by default, or Ed25519)
  device.pub           its public key
  device.csr           certificate signing request (CN=<device id>, O=<org>)
  device.crt           certificate: given with --cert, or signed here with --ca-key
  ca.crt               the CA that signs device and broker certificates (--ca-cert)
  fleet-signing.pub    the fleet's manifest signing key (Ed25519), pinned on the device
  fleet-signing.pub.sha256   its fingerprint, to compare out of band
  mqtt-username        the MQTT user name (= device id: the broker ACL's %u)
  mqtt-password        random MQTT password, mode 0600
  mosquitto-passwd     "user:hash" line for the broker's password_file (when
                       mosquitto_passwd is installed); goes to the broker, not the device

Options:
  --out DIR            identity folder (created 0700)
  --fleet-key FILE     the fleet's Ed25519 public key (PEM), from `edge-fleet keys`
  --device-id ID       device id (letters, digits, '_', '.', '-'; default: jetson-<random>)
  --key-type TYPE      ec (P-256, default: every TLS stack and secure element takes it)
                       or ed25519
  --org NAME           certificate organisation (default: edge-fleet)
  --ca-cert FILE       CA certificate to install as ca.crt
  --ca-key FILE        sign the CSR here with this CA key (needs --ca-cert); for labs
                       and small fleets, a real fleet CA signs the CSR offline instead
  --cert FILE          a certificate the fleet CA issued for this device's CSR
  --days N             validity of a certificate signed here (default 825)
  --force              replace existing keys, id and password
  --dry-run            print what would be made, write nothing
  -h, --help           this help

Exit status: 0 ok, 1 failure, 2 bad usage, 3 missing prerequisite.
EOF
}

OUT=""
FLEET_KEY=""
DEVICE_ID=""
KEY_TYPE=ec
ORG=edge-fleet
CA_CERT=""
CA_KEY=""
CERT=""
DAYS=825
FORCE=0
ID_PATTERN='^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'

parse_args() {
    while [[ $# -gt 0 ]]; do
        case $1 in
            --out) need_arg "$1" $#; OUT=$2; shift ;;
            --fleet-key) need_arg "$1" $#; FLEET_KEY=$2; shift ;;
            --device-id) need_arg "$1" $#; DEVICE_ID=$2; shift ;;
            --key-type) need_arg "$1" $#; KEY_TYPE=$2; shift ;;
            --org) need_arg "$1" $#; ORG=$2; shift ;;
            --ca-cert) need_arg "$1" $#; CA_CERT=$2; shift ;;
            --ca-key) need_arg "$1" $#; CA_KEY=$2; shift ;;
            --cert) need_arg "$1" $#; CERT=$2; shift ;;
            --days) need_arg "$1" $#; DAYS=$2; shift ;;
            --force) FORCE=1 ;;
            --dry-run) DRY_RUN=1 ;;
            -h | --help) usage; exit 0 ;;
            *) usage_error "unknown option: $1" ;;
        esac
        shift
    done
    [[ -n $OUT ]] || usage_error "--out DIR is required"
    [[ -n $FLEET_KEY ]] || usage_error "--fleet-key FILE is required (the fleet's public key)"
    [[ -f $FLEET_KEY ]] || usage_error "--fleet-key $FLEET_KEY: no such file"
    [[ -z $DEVICE_ID || $DEVICE_ID =~ $ID_PATTERN ]] ||
        usage_error "--device-id '$DEVICE_ID': use 1-64 letters, digits, '_', '.', '-'"
    [[ $KEY_TYPE == ec || $KEY_TYPE == ed25519 ]] ||
        usage_error "--key-type must be ec or ed25519, not '$KEY_TYPE'"
    [[ $ORG =~ ^[A-Za-z0-9][A-Za-z0-9\ ._-]{0,63}$ ]] ||
        usage_error "--org '$ORG': use letters, digits, spaces, '.', '_', '-'"
    [[ $DAYS =~ ^[1-9][0-9]{0,4}$ ]] || usage_error "--days must be a positive number of days"
    [[ -z $CA_KEY || -n $CA_CERT ]] || usage_error "--ca-key needs --ca-cert"
    [[ -z $CA_KEY || -z $CERT ]] || usage_error "give --cert or --ca-key, not both"
    local f
    for f in "$CA_CERT" "$CA_KEY" "$CERT"; do
        [[ -z $f || -f $f ]] || usage_error "$f: no such file"
    done
}

# The fleet key must be an Ed25519 public key: a wrong file here would make every
# signed update fail on the device, so it is refused now.
pin_fleet_key() {
    local text
    text=$(openssl pkey -pubin -in "$FLEET_KEY" -noout -text 2>/dev/null) ||
        die "--fleet-key $FLEET_KEY is not a PEM public key"
    [[ $text == *ED25519* ]] || die "--fleet-key $FLEET_KEY is not an Ed25519 public key"
    local pem fpr tmp
    pem=$(openssl pkey -pubin -in "$FLEET_KEY" -outform PEM)
    fpr=$(openssl pkey -pubin -in "$FLEET_KEY" -outform DER | sha256sum | cut -d' ' -f1)
    tmp=$(mktemp)
    printf '%s\n' "$pem" >"$tmp"
    install_file "$tmp" "$OUT/fleet-signing.pub" 0644
    printf '%s  fleet-signing.pub (sha256 of the DER public key)\n' "$fpr" >"$tmp"
    install_file "$tmp" "$OUT/fleet-signing.pub.sha256" 0644
    rm -f "$tmp"
}

write_device_id() {
    local existing=""
    [[ -f $OUT/device-id ]] && existing=$(<"$OUT/device-id")
    if [[ -n $existing && $FORCE == 0 ]]; then
        [[ -z $DEVICE_ID || $DEVICE_ID == "$existing" ]] ||
            die "$OUT already belongs to device '$existing', not '$DEVICE_ID' (use --force)"
        DEVICE_ID=$existing
        return 0
    fi
    [[ -n $DEVICE_ID ]] || DEVICE_ID="jetson-$(openssl rand -hex 4)"
    write_text "$OUT/device-id" 0644 "$DEVICE_ID"
}

# write_text FILE MODE TEXT: a one-line file, created with MODE from the start.
write_text() {
    if [[ $DRY_RUN == 1 ]]; then printf 'would: write %s (mode %s)\n' "$1" "$2"; return 0; fi
    (umask 077 && printf '%s\n' "$3" >"$1.tmp")
    chmod "$2" "$1.tmp"
    mv -f "$1.tmp" "$1"
}

make_key() {
    if [[ -f $OUT/device.key && $FORCE == 0 ]]; then
        openssl pkey -in "$OUT/device.key" -noout 2>/dev/null ||
            die "$OUT/device.key exists but is not a private key (use --force to replace)"
        [[ $(stat -c '%a' "$OUT/device.key") == 600 ]] || run chmod 0600 "$OUT/device.key"
        return 0
    fi
    local algo=(-algorithm EC -pkeyopt ec_paramgen_curve:P-256)
    [[ $KEY_TYPE == ed25519 ]] && algo=(-algorithm ED25519)
    if [[ $DRY_RUN == 1 ]]; then
        printf 'would: %s\n' "$(quote_cmd openssl genpkey "${algo[@]}" -out "$OUT/device.key")"
        return 0
    fi
    (umask 077 && openssl genpkey "${algo[@]}" -out "$OUT/device.key.tmp" 2>/dev/null)
    mv -f "$OUT/device.key.tmp" "$OUT/device.key"
    rm -f "$OUT/device.pub" "$OUT/device.csr" "$OUT/device.crt"
}

make_csr() {
    [[ $DRY_RUN == 1 ]] && { printf 'would: make device.pub, device.csr\n'; return 0; }
    local tmp
    tmp=$(mktemp)
    openssl pkey -in "$OUT/device.key" -pubout -out "$tmp"
    install_file "$tmp" "$OUT/device.pub" 0644
    rm -f "$tmp"
    local subject="/O=$ORG/CN=$DEVICE_ID"
    if [[ -f $OUT/device.csr ]] &&
        openssl req -in "$OUT/device.csr" -noout -verify 2>/dev/null &&
        [[ $(openssl req -in "$OUT/device.csr" -noout -pubkey) == $(<"$OUT/device.pub") ]] &&
        [[ $(openssl req -in "$OUT/device.csr" -noout -subject -nameopt RFC2253) == \
            "subject=CN=$DEVICE_ID,O=$ORG" ]]; then
        return 0
    fi
    openssl req -new -key "$OUT/device.key" -subj "$subject" -out "$OUT/device.csr.tmp"
    chmod 0644 "$OUT/device.csr.tmp"
    mv -f "$OUT/device.csr.tmp" "$OUT/device.csr"
}

install_cert() {
    [[ -n $CA_CERT ]] && install_file "$CA_CERT" "$OUT/ca.crt" 0644
    if [[ -n $CERT ]]; then
        check_cert_matches "$CERT"
        install_file "$CERT" "$OUT/device.crt" 0644
    elif [[ -n $CA_KEY ]]; then
        sign_here
    fi
    if [[ -f $OUT/device.crt && -f $OUT/ca.crt && $DRY_RUN == 0 ]]; then
        openssl verify -CAfile "$OUT/ca.crt" "$OUT/device.crt" >/dev/null ||
            die "$OUT/device.crt does not verify against $OUT/ca.crt"
    fi
}

check_cert_matches() {
    [[ $DRY_RUN == 1 ]] && return 0
    [[ $(openssl x509 -in "$1" -noout -pubkey) == $(<"$OUT/device.pub") ]] ||
        die "--cert $1 was not issued for this device's key ($OUT/device.pub)"
}

# Signed once: an existing certificate for this key, subject and CA is kept.
sign_here() {
    [[ $DRY_RUN == 1 ]] && { printf 'would: sign device.csr with %s\n' "$CA_KEY"; return 0; }
    if [[ -f $OUT/device.crt ]] &&
        [[ $(openssl x509 -in "$OUT/device.crt" -noout -pubkey) == $(<"$OUT/device.pub") ]] &&
        openssl verify -CAfile "$CA_CERT" "$OUT/device.crt" >/dev/null 2>&1; then
        return 0
    fi
    local ext
    ext=$(mktemp)
    printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
        "extendedKeyUsage=clientAuth" >"$ext"
    openssl x509 -req -in "$OUT/device.csr" -CA "$CA_CERT" -CAkey "$CA_KEY" \
        -CAcreateserial -CAserial "$OUT/.ca.srl" -days "$DAYS" -extfile "$ext" \
        -out "$OUT/device.crt.tmp" 2>/dev/null || die "signing with $CA_KEY failed"
    rm -f "$ext"
    chmod 0644 "$OUT/device.crt.tmp"
    mv -f "$OUT/device.crt.tmp" "$OUT/device.crt"
}

make_mqtt_credentials() {
    write_if_changed "$OUT/mqtt-username" 0644 "$DEVICE_ID"
    if [[ ! -f $OUT/mqtt-password || $FORCE == 1 ]]; then
        write_text "$OUT/mqtt-password" 0600 "$(openssl rand -base64 33 | tr '+/' '-_')"
        run rm -f "$OUT/mosquitto-passwd"
    fi
    [[ $(stat -c '%a' "$OUT/mqtt-password" 2>/dev/null || echo 600) == 600 ]] ||
        run chmod 0600 "$OUT/mqtt-password"
    if [[ -f $OUT/mosquitto-passwd || $DRY_RUN == 1 ]]; then return 0; fi
    if ! command -v mosquitto_passwd >/dev/null 2>&1; then
        warn "mosquitto_passwd not installed: add $DEVICE_ID to the broker's password file by hand"
        return 0
    fi
    (umask 077 && : >"$OUT/mosquitto-passwd.tmp")
    # -b puts the password on mosquitto_passwd's command line for a moment; it has no
    # stdin mode, and this runs on the provisioning host, not on a shared machine.
    mosquitto_passwd -b "$OUT/mosquitto-passwd.tmp" "$DEVICE_ID" "$(<"$OUT/mqtt-password")"
    mv -f "$OUT/mosquitto-passwd.tmp" "$OUT/mosquitto-passwd"
}

write_if_changed() {
    [[ -f $1 && $(<"$1") == "$3" ]] && return 0
    write_text "$@"
}

main() {
    parse_args "$@"
    need_cmd openssl "install openssl (keys, CSR, certificates)"
    ensure_dir "$OUT" 0700
    pin_fleet_key
    write_device_id
    make_key
    make_csr
    install_cert
    make_mqtt_credentials
    if [[ $DRY_RUN == 1 ]]; then
        log "dry run: nothing written"
    else
        log "device $DEVICE_ID provisioned in $OUT"
        [[ -f $OUT/device.crt ]] ||
            log "next: have the fleet CA sign $OUT/device.csr, then re-run with --cert FILE"
    fi
}

main "$@"
