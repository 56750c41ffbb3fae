#!/usr/bin/env bash
# Flash a Jetson in recovery mode with NVIDIA's own tools (flash.sh or
# tools/kernel_flash/l4t_initrd_flash.sh) from a Linux_for_Tegra BSP folder.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$HERE/lib.sh"

usage() {
    cat <<'EOF'
Usage: flash.sh --bsp DIR --board NAME --storage DEV [options] [-- NVIDIA-ARGS...]

Flash a Jetson held in recovery mode (USB-C to the host; `lsusb` shows 0955:xxxx
"NVIDIA Corp. APX") with the L4T BSP in DIR (the Linux_for_Tegra folder, after
`sudo ./apply_binaries.sh` and, for the agent, after build-overlay.sh).

  --bsp DIR        the Linux_for_Tegra folder
  --board NAME     board config, as DIR/NAME.conf: jetson-orin-nano-devkit,
                   jetson-agx-orin-devkit, ...
  --storage DEV    where the root file system goes:
                     nvme0n1p1  NVMe SSD (initrd flash; QSPI bootloader included)
                     mmcblk0p1  on-module eMMC (AGX Orin)
                     internal   the board's default internal storage
  --method M       auto (default: initrd for NVMe, flash.sh otherwise), initrd, legacy
  --no-usb-check   do not look for a device in recovery mode with lsusb first
  --dry-run        print the NVIDIA command and the folder it runs in, run nothing
  -h, --help       this help
  -- ARGS          passed to NVIDIA's script as they are (before the board name)

The commands are the ones NVIDIA's JetPack 6 quick start gives, e.g. for NVMe:
  sudo ./tools/kernel_flash/l4t_initrd_flash.sh --external-device nvme0n1p1 \
    -c tools/kernel_flash/flash_l4t_t234_nvme.xml \
    -p "-c bootloader/generic/cfg/flash_t234_qspi.xml" --showlogs --network usb0 \
    jetson-orin-nano-devkit internal

Exit status: 0 ok, 1 failure, 2 bad usage, 3 missing BSP, board or tool.
EOF
}

BSP=""
BOARD=""
STORAGE=""
METHOD=auto
USB_CHECK=1
EXTRA=()
NVME_XML=tools/kernel_flash/flash_l4t_t234_nvme.xml
QSPI_XML=bootloader/generic/cfg/flash_t234_qspi.xml
INITRD=tools/kernel_flash/l4t_initrd_flash.sh

parse_args() {
    while [[ $# -gt 0 ]]; do
        case $1 in
            --bsp) need_arg "$1" $#; BSP=$2; shift ;;
            --board) need_arg "$1" $#; BOARD=$2; shift ;;
            --storage) need_arg "$1" $#; STORAGE=$2; shift ;;
            --method) need_arg "$1" $#; METHOD=$2; shift ;;
            --no-usb-check) USB_CHECK=0 ;;
            --dry-run) DRY_RUN=1 ;;
            -h | --help) usage; exit 0 ;;
            --) shift; EXTRA=("$@"); break ;;
            *) usage_error "unknown option: $1" ;;
        esac
        shift
    done
    [[ -n $BSP ]] || usage_error "--bsp DIR (the Linux_for_Tegra folder) is required"
    [[ -n $BOARD ]] || usage_error "--board NAME is required (e.g. jetson-orin-nano-devkit)"
    [[ -n $STORAGE ]] || usage_error "--storage is required (nvme0n1p1, mmcblk0p1 or internal)"
    case $STORAGE in
        nvme0n1p1 | mmcblk0p1 | internal) ;;
        *) usage_error "--storage '$STORAGE' is not one of nvme0n1p1, mmcblk0p1, internal" ;;
    esac
    case $METHOD in
        auto) [[ $STORAGE == nvme0n1p1 ]] && METHOD=initrd || METHOD=legacy ;;
        initrd) ;;
        legacy)
            [[ $STORAGE != nvme0n1p1 ]] ||
                usage_error "NVMe needs the initrd flash (--method initrd or auto)"
            ;;
        *) usage_error "--method must be auto, initrd or legacy, not '$METHOD'" ;;
    esac
}

check_bsp() {
    [[ -d $BSP ]] || die "BSP folder $BSP does not exist (unpack Jetson_Linux_*.tbz2)" "$EXIT_PREREQ"
    BSP=$(cd "$BSP" && pwd)
    [[ -x $BSP/flash.sh ]] ||
        die "$BSP is not a Linux_for_Tegra folder: no executable flash.sh in it" "$EXIT_PREREQ"
    if [[ ! -f $BSP/$BOARD.conf ]]; then
        local boards
        boards=$(cd "$BSP" && find . -maxdepth 1 -name 'jetson-*.conf' -printf '%f\n' |
            sed 's/\.conf$//' | LC_ALL=C sort | paste -sd' ')
        die "board '$BOARD' unknown to this BSP (no $BOARD.conf); boards here: ${boards:-none}" \
            "$EXIT_PREREQ"
    fi
    [[ -f $BSP/rootfs/etc/nv_tegra_release ]] ||
        die "$BSP/rootfs is not prepared: unpack the sample rootfs into it and run" \
            "'sudo ./apply_binaries.sh' in $BSP" "$EXIT_PREREQ"
    if [[ $METHOD == initrd ]]; then
        [[ -x $BSP/$INITRD ]] || die "$BSP/$INITRD missing or not executable" "$EXIT_PREREQ"
    fi
    if [[ $STORAGE == nvme0n1p1 ]]; then
        [[ -f $BSP/$NVME_XML ]] || die "$BSP/$NVME_XML missing (BSP older than r35?)" "$EXIT_PREREQ"
        [[ -f $BSP/$QSPI_XML ]] || die "$BSP/$QSPI_XML missing" "$EXIT_PREREQ"
    fi
    [[ -f $BSP/rootfs/opt/edge-agent/sbin/install.sh ]] ||
        warn "no edge agent staged in $BSP/rootfs: run build-overlay.sh first to include it"
}

# The NVIDIA command line, one word per array element.
nvidia_command() {
    CMD=()
    if [[ $METHOD == legacy ]]; then
        CMD=(./flash.sh "${EXTRA[@]}" "$BOARD" "$STORAGE")
    elif [[ $STORAGE == nvme0n1p1 ]]; then
        CMD=("./$INITRD" --external-device nvme0n1p1 -c "$NVME_XML" -p "-c $QSPI_XML"
            --showlogs --network usb0 "${EXTRA[@]}" "$BOARD" internal)
    else
        CMD=("./$INITRD" --showlogs --network usb0 "${EXTRA[@]}" "$BOARD" "$STORAGE")
    fi
}

check_host() {
    is_root || die "NVIDIA's flashing tools need root: run with sudo" "$EXIT_PREREQ"
    [[ $USB_CHECK == 1 ]] || return 0
    need_cmd lsusb "install usbutils, or pass --no-usb-check"
    lsusb | grep -q 'ID 0955:' ||
        die "no Jetson in recovery mode on USB (lsusb shows no 0955:xxxx device): hold" \
            "REC, press RESET, release REC, then retry" "$EXIT_PREREQ"
}

main() {
    parse_args "$@"
    check_bsp
    nvidia_command
    if [[ $DRY_RUN == 1 ]]; then
        printf 'would run in %s:\n  %s\n' "$BSP" "$(quote_cmd "${CMD[@]}")"
        return 0
    fi
    check_host
    log "flashing $BOARD ($STORAGE) from $BSP: $(quote_cmd "${CMD[@]}")"
    cd "$BSP"
    "${CMD[@]}" || die "NVIDIA's ${CMD[0]} failed (exit $?); its log is above"
    log "flashed: the device boots into the new image (first boot builds the agent's venv)"
}

main "$@"
