#!/usr/bin/env bash
# Remove the edge agent from a device (or from a root folder with --root). The config,
# identity and state are kept unless --purge: a reinstall then comes back as the same
# device, with its outbox of undelivered events.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$HERE/lib.sh"

usage() {
    cat <<'EOF'
Usage: uninstall.sh [--root DIR] [--purge] [--dry-run]

Stop and disable the agent's units and remove what install.sh put in place:
/opt/edge-agent, the units in /etc/systemd/system, the sysusers.d/tmpfiles.d files.
Kept unless --purge: /etc/edge-agent (config, identity, credentials) and
/var/lib/edge-agent, /var/cache/edge-agent (state, outbox, models).
The edge-agent user is never deleted (systemd-sysusers convention: a freed uid could
be reused by another account and inherit leftover files).
Running it again when nothing is installed is not an error.

  --root DIR   remove from DIR instead of / (no services are stopped)
  --purge      also remove config, identity, credentials and state
  --dry-run    print what would be removed, remove nothing
  -h, --help   this help

Exit status: 0 ok, 1 failure, 2 bad usage, 3 missing prerequisite.
EOF
}

ROOT=/
PURGE=0
UNITS=(edge-agent.service edge-agent-firstboot.service edge-tune.service)

parse_args() {
    while [[ $# -gt 0 ]]; do
        case $1 in
            --root) need_arg "$1" $#; ROOT=$2; shift ;;
            --purge) PURGE=1 ;;
            --dry-run) DRY_RUN=1 ;;
            -h | --help) usage; exit 0 ;;
            *) usage_error "unknown option: $1" ;;
        esac
        shift
    done
    [[ -d $ROOT ]] || die "root folder $ROOT does not exist" "$EXIT_PREREQ"
    ROOT=$(cd "$ROOT" && pwd)
    if [[ $ROOT == / && $DRY_RUN == 0 ]]; then
        is_root || die "uninstalling from this system needs root (sudo)" "$EXIT_PREREQ"
    fi
}

# remove PATH...: delete the paths (inside ROOT) that exist.
remove() {
    local p full
    for p in "$@"; do
        full=$(root_path "$ROOT" "$p")
        [[ -e $full || -L $full ]] || continue
        run rm -rf -- "$full"
    done
}

stop_units() {
    [[ $ROOT == / ]] || return 0
    command -v systemctl >/dev/null 2>&1 || return 0
    local unit
    for unit in "${UNITS[@]}"; do
        if systemctl cat "$unit" >/dev/null 2>&1; then
            run systemctl disable --now "$unit"
        fi
    done
}

main() {
    parse_args "$@"
    stop_units
    local unit
    for unit in "${UNITS[@]}"; do
        remove "/etc/systemd/system/multi-user.target.wants/$unit" "/etc/systemd/system/$unit"
    done
    remove /usr/lib/sysusers.d/edge-agent.conf /usr/lib/tmpfiles.d/edge-agent.conf /opt/edge-agent
    if [[ $PURGE == 1 ]]; then
        remove /etc/edge-agent /var/lib/edge-agent /var/cache/edge-agent
    fi
    if [[ $ROOT == / ]] && command -v systemctl >/dev/null 2>&1; then
        run systemctl daemon-reload
    fi
    if [[ $PURGE == 0 ]]; then
        log "removed the agent; kept /etc/edge-agent and /var/lib/edge-agent (--purge removes them)"
    else
        log "removed the agent, its config, identity and state"
    fi
}

main "$@"
