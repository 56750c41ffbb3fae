#!/usr/bin/env bash
# Set the Jetson's power mode (nvpmodel) and clocks (jetson_clocks) from a small config
# file or flags. Run at boot by edge-tune.service, before the agent starts.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$HERE/lib.sh"

usage() {
    cat <<'EOF'
Usage: tune.sh [--config FILE] [--mode N] [--clocks on|off] [--dry-run]

Set the power mode with nvpmodel and lock or restore clocks with jetson_clocks.
Flags override the config file. Nothing is changed when the board is already in the
requested mode, so re-running is harmless.

Config file (e.g. /etc/edge-agent/tune.conf), KEY=value lines, '#' comments:
  NVPMODEL_MODE=0     nvpmodel mode id (see /etc/nvpmodel.conf; empty: leave as is)
  JETSON_CLOCKS=on    on: lock clocks at the mode's maximum; off: restore the saved
                      defaults (saved on the first "on"); empty: leave as is

Options:
  --config FILE       read settings from FILE
  --mode N            nvpmodel mode id
  --clocks on|off     jetson_clocks setting
  --state-dir DIR     where the clock defaults are saved (default /var/lib/edge-agent)
  --dry-run           print the commands, run nothing (works without the NVIDIA tools)
  -h, --help          this help

Exit status: 0 ok, 1 failure, 2 bad usage, 3 missing tool (not a Jetson / no L4T tools).
EOF
}

CONFIG=""
MODE=""
CLOCKS=""
STATE_DIR=/var/lib/edge-agent
MODE_SET=0
CLOCKS_SET=0

parse_args() {
    while [[ $# -gt 0 ]]; do
        case $1 in
            --config) need_arg "$1" $#; CONFIG=$2; shift ;;
            --mode) need_arg "$1" $#; MODE=$2; MODE_SET=1; shift ;;
            --clocks) need_arg "$1" $#; CLOCKS=$2; CLOCKS_SET=1; shift ;;
            --state-dir) need_arg "$1" $#; STATE_DIR=$2; shift ;;
            --dry-run) DRY_RUN=1 ;;
            -h | --help) usage; exit 0 ;;
            *) usage_error "unknown option: $1" ;;
        esac
        shift
    done
    [[ -n $CONFIG ]] && read_config "$CONFIG"
    [[ -z $MODE || $MODE =~ ^[0-9]{1,3}$ ]] || usage_error "mode must be a number, not '$MODE'"
    [[ -z $CLOCKS || $CLOCKS == on || $CLOCKS == off ]] ||
        usage_error "clocks must be on or off, not '$CLOCKS'"
    [[ -n $CONFIG || -n $MODE || -n $CLOCKS ]] ||
        usage_error "nothing to do: give --mode, --clocks or --config"
}

# The config is parsed, never sourced: it is data, not code.
read_config() {
    [[ -f $1 ]] || usage_error "--config $1: no such file"
    local line key value n=0
    while IFS= read -r line || [[ -n $line ]]; do
        n=$((n + 1))
        line=${line%%#*}
        line=${line//[[:space:]]/}
        [[ -z $line ]] && continue
        [[ $line == *=* ]] || usage_error "$1:$n: expected KEY=value, got '$line'"
        key=${line%%=*}
        value=${line#*=}
        case $key in
            NVPMODEL_MODE) [[ $MODE_SET == 1 ]] || MODE=$value ;;
            JETSON_CLOCKS) [[ $CLOCKS_SET == 1 ]] || CLOCKS=$value ;;
            *) usage_error "$1:$n: unknown setting '$key' (NVPMODEL_MODE, JETSON_CLOCKS)" ;;
        esac
    done <"$1"
}

set_mode() {
    [[ -n $MODE ]] || return 0
    if [[ $DRY_RUN == 1 ]] && ! command -v nvpmodel >/dev/null 2>&1; then
        run nvpmodel -m "$MODE"
        return 0
    fi
    need_cmd nvpmodel "not a Jetson, or nvidia-l4t-tools is not installed"
    local current
    current=$(nvpmodel -q 2>/dev/null | awk '/^[0-9]+$/ { m = $1 } END { print m }')
    if [[ $current == "$MODE" ]]; then
        log "power mode already $MODE"
        return 0
    fi
    # nvpmodel asks before a change that needs a reboot; answering from /dev/null
    # declines, and the new mode applies at the next boot.
    run nvpmodel -m "$MODE" </dev/null
}

set_clocks() {
    [[ -n $CLOCKS ]] || return 0
    local saved="$STATE_DIR/jetson_clocks.defaults"
    if [[ $DRY_RUN == 0 ]]; then
        need_cmd jetson_clocks "not a Jetson, or nvidia-l4t-tools is not installed"
    fi
    if [[ $CLOCKS == on ]]; then
        [[ -f $saved ]] || run jetson_clocks --store "$saved"
        run jetson_clocks
    elif [[ -f $saved ]]; then
        run jetson_clocks --restore "$saved"
    else
        log "clocks: no saved defaults at $saved, nothing to restore"
    fi
}

main() {
    parse_args "$@"
    set_mode
    set_clocks
}

main "$@"
