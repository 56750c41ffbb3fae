#!/usr/bin/env bash
# Stage the edge agent, its units, config, the device identity and the fleet trust
# anchors into a Linux_for_Tegra BSP's rootfs (or any root folder) before flashing.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$HERE/lib.sh"

usage() {
    cat <<'EOF'
Usage: build-overlay.sh (--bsp DIR | --root DIR) --config FILE --identity DIR
                        (--wheelhouse DIR | --wheel FILE... | --venv DIR) [options]

Stage into DIR/rootfs (--bsp, a Linux_for_Tegra folder) or into a root folder (--root):
the agent (wheels, built into /opt/edge-agent/venv on first boot by
edge-agent-firstboot.service, or a ready aarch64 venv), the systemd units, the config,
the device identity and the pinned fleet keys from provision-device.sh. Staging is the
same code as install.sh --root, so a flashed device and an installed one are identical.
Re-running with the same inputs changes nothing.

  --bsp DIR          Linux_for_Tegra folder (its rootfs/ after apply_binaries.sh)
  --root DIR         stage into this root instead (a mounted image, a test folder)
  --board NAME       also check that the BSP has NAME.conf (catch a wrong BSP early)
  --config FILE      agent config (YAML)
  --identity DIR     the device's folder from provision-device.sh
  --wheelhouse DIR   the agent wheel and its dependencies built for aarch64 /
                     Python 3.10 (pip download --platform manylinux2014_aarch64 ...)
  --wheel FILE       one wheel (repeatable)
  --venv DIR         a virtualenv built on a Jetson (or an arm64 container), copied as is
  --tune-conf FILE   power mode settings for tune.sh
  --dry-run          print what would change, change nothing
  -h, --help         this help

Exit status: 0 ok, 1 failure, 2 bad usage, 3 missing BSP, board or tool.
EOF
}

BSP=""
ROOT=""
BOARD=""
PASS=()

parse_args() {
    local has_agent=0 has_config=0 has_identity=0
    while [[ $# -gt 0 ]]; do
        case $1 in
            --bsp) need_arg "$1" $#; BSP=$2; shift ;;
            --root) need_arg "$1" $#; ROOT=$2; shift ;;
            --board) need_arg "$1" $#; BOARD=$2; shift ;;
            --wheel | --wheelhouse | --venv)
                need_arg "$1" $#; PASS+=("$1" "$2"); has_agent=1; shift ;;
            --config) need_arg "$1" $#; PASS+=("$1" "$2"); has_config=1; shift ;;
            --identity) need_arg "$1" $#; PASS+=("$1" "$2"); has_identity=1; shift ;;
            --tune-conf) need_arg "$1" $#; PASS+=("$1" "$2"); shift ;;
            --dry-run) DRY_RUN=1; PASS+=("$1") ;;
            -h | --help) usage; exit 0 ;;
            *) usage_error "unknown option: $1" ;;
        esac
        shift
    done
    [[ -n $BSP || -n $ROOT ]] || usage_error "give --bsp DIR (Linux_for_Tegra) or --root DIR"
    [[ -z $BSP || -z $ROOT ]] || usage_error "give --bsp or --root, not both"
    [[ -z $BOARD || -n $BSP ]] || usage_error "--board needs --bsp"
    [[ $has_agent == 1 ]] || usage_error "give the agent: --wheelhouse, --wheel or --venv"
    [[ $has_config == 1 ]] || usage_error "--config FILE is required"
    [[ $has_identity == 1 ]] || usage_error "--identity DIR is required (provision-device.sh)"
}

check_bsp() {
    [[ -d $BSP ]] || die "BSP folder $BSP does not exist (unpack Jetson_Linux_*.tbz2)" "$EXIT_PREREQ"
    [[ -x $BSP/flash.sh ]] ||
        die "$BSP is not a Linux_for_Tegra folder: no executable flash.sh in it" "$EXIT_PREREQ"
    if [[ -n $BOARD && ! -f $BSP/$BOARD.conf ]]; then
        die "board '$BOARD' unknown to this BSP: no $BSP/$BOARD.conf" "$EXIT_PREREQ"
    fi
    [[ -d $BSP/rootfs/etc ]] ||
        die "$BSP/rootfs is empty: unpack the sample rootfs into it first" "$EXIT_PREREQ"
    [[ -f $BSP/rootfs/etc/nv_tegra_release ]] ||
        die "$BSP/rootfs has no /etc/nv_tegra_release: run 'sudo ./apply_binaries.sh'" \
            "in $BSP first" "$EXIT_PREREQ"
    ROOT=$BSP/rootfs
}

main() {
    parse_args "$@"
    if [[ -n $BSP ]]; then
        check_bsp
    else
        [[ -d $ROOT ]] || die "root folder $ROOT does not exist" "$EXIT_PREREQ"
    fi
    "$HERE/install.sh" --root "$ROOT" "${PASS[@]}"
    if [[ $DRY_RUN == 0 ]]; then
        log "staged into $ROOT; next: flash.sh --bsp ${BSP:-<Linux_for_Tegra>} --board ... --storage ..."
    fi
}

main "$@"
