#!/usr/bin/env bash
# Install (or update) the edge agent on a flashed JetPack device, or stage the same
# files into another root folder (--root; build-overlay.sh uses that for a BSP rootfs).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$HERE/lib.sh"

usage() {
    cat <<'EOF'
Usage: install.sh [options]

Install the edge agent onto an already-flashed JetPack (L4T) device, or stage it into a
root folder with --root. Re-running with the same inputs changes nothing.

What goes where (paths inside the root):
  /opt/edge-agent/wheels/        the wheels given (--wheel / --wheelhouse)
  /opt/edge-agent/venv/          the agent's virtualenv (built on the device; see below)
  /opt/edge-agent/sbin/          install.sh, uninstall.sh, tune.sh, lib.sh
  /etc/systemd/system/           edge-agent.service, edge-agent-firstboot.service,
                                 edge-tune.service (enabled via multi-user.target.wants)
  /usr/lib/sysusers.d/, /usr/lib/tmpfiles.d/   the edge-agent user, owners and modes
  /etc/edge-agent/agent.yaml     the config (--config)
  /etc/edge-agent/tune.conf      power mode (--tune-conf; a do-nothing default otherwise)
  /etc/edge-agent/identity/      device-id, certificate, CA, pinned fleet key (public)
  /etc/edge-agent/credentials/   device.key, mqtt-password (root-only, 0600; handed to
                                 the service by systemd's LoadCredential=)

Options:
  --root DIR         install into DIR instead of / (no services are started, no venv is
                     built there: the device builds it on first boot from the wheels)
  --wheel FILE       an agent wheel (repeatable)
  --wheelhouse DIR   every *.whl in DIR (the agent and its aarch64 dependencies)
  --venv DIR         copy a ready virtualenv (built for the device) instead of wheels
  --config FILE      agent config (YAML); validated with `edge-agent check-config`
                     when that command is available
  --identity DIR     output folder of provision-device.sh
  --tune-conf FILE   tune.sh settings (NVPMODEL_MODE=, JETSON_CLOCKS=)
  --python PATH      interpreter for the venv (default /usr/bin/python3, the system one,
                     whose site-packages hold JetPack's TensorRT bindings)
  --venv-only        only (re)build the venv from --wheelhouse (edge-agent-firstboot)
  --rollback         swap the venv back to the previous one and restart the agent
  --no-start         on / : install and enable, but do not (re)start the agent
  --allow-non-jetson do not insist on /etc/nv_tegra_release in the root
  --dry-run          print what would change, change nothing
  -h, --help         this help

Owners: run as root, files get their owners by the numeric ids the root's own
/etc/passwd gives (the edge-agent user is created there with systemd-sysusers --root,
never on the build host). Run as another user, owners are left alone and the device's
systemd-tmpfiles and StateDirectory= set them at boot.

Exit status: 0 ok, 1 failure, 2 bad usage, 3 missing prerequisite.
EOF
}

ROOT=/
WHEELS=()
WHEELHOUSE=""
VENV_SRC=""
CONFIG=""
IDENTITY=""
TUNE_CONF=""
PYTHON=/usr/bin/python3
VENV_ONLY=0
ROLLBACK=0
START=1
ALLOW_NON_JETSON=0
SYSTEMD_SRC=${EDGE_SYSTEMD_DIR:-$HERE/../systemd}
UNITS=(edge-agent.service edge-agent-firstboot.service edge-tune.service)

parse_args() {
    while [[ $# -gt 0 ]]; do
        case $1 in
            --root) need_arg "$1" $#; ROOT=$2; shift ;;
            --wheel) need_arg "$1" $#; WHEELS+=("$2"); shift ;;
            --wheelhouse) need_arg "$1" $#; WHEELHOUSE=$2; shift ;;
            --venv) need_arg "$1" $#; VENV_SRC=$2; shift ;;
            --config) need_arg "$1" $#; CONFIG=$2; shift ;;
            --identity) need_arg "$1" $#; IDENTITY=$2; shift ;;
            --tune-conf) need_arg "$1" $#; TUNE_CONF=$2; shift ;;
            --python) need_arg "$1" $#; PYTHON=$2; shift ;;
            --venv-only) VENV_ONLY=1 ;;
            --rollback) ROLLBACK=1 ;;
            --no-start) START=0 ;;
            --allow-non-jetson) ALLOW_NON_JETSON=1 ;;
            --dry-run) DRY_RUN=1 ;;
            -h | --help) usage; exit 0 ;;
            *) usage_error "unknown option: $1" ;;
        esac
        shift
    done
    [[ -d $ROOT ]] || die "root folder $ROOT does not exist" "$EXIT_PREREQ"
    ROOT=$(cd "$ROOT" && pwd)
    if [[ -n $WHEELHOUSE ]]; then
        [[ -d $WHEELHOUSE ]] || usage_error "--wheelhouse $WHEELHOUSE is not a folder"
        shopt -s nullglob
        WHEELS+=("$WHEELHOUSE"/*.whl)
        shopt -u nullglob
        [[ $VENV_ONLY == 1 || ${#WHEELS[@]} -gt 0 ]] || die "no *.whl in $WHEELHOUSE"
    fi
    local w
    for w in "${WHEELS[@]}"; do
        [[ $w == *.whl && -f $w ]] || usage_error "--wheel $w is not a wheel file"
    done
    [[ -z $VENV_SRC || -x $VENV_SRC/bin/python ]] || usage_error "--venv $VENV_SRC has no bin/python"
    [[ -z $VENV_SRC || ${#WHEELS[@]} -eq 0 ]] || usage_error "give wheels or --venv, not both"
    [[ -z $CONFIG || -f $CONFIG ]] || usage_error "--config $CONFIG: no such file"
    [[ -z $TUNE_CONF || -f $TUNE_CONF ]] || usage_error "--tune-conf $TUNE_CONF: no such file"
    if [[ -n $IDENTITY ]]; then
        [[ -f $IDENTITY/device-id ]] ||
            usage_error "--identity $IDENTITY has no device-id (run provision-device.sh first)"
    fi
}

preflight() {
    if [[ $ALLOW_NON_JETSON == 0 && ! -f $(root_path "$ROOT" /etc/nv_tegra_release) ]]; then
        die "$(root_path "$ROOT" /etc/nv_tegra_release) missing: $ROOT is not a JetPack (L4T)" \
            "system (use --allow-non-jetson to install anyway)" "$EXIT_PREREQ"
    fi
    [[ -d $SYSTEMD_SRC ]] || die "unit files not found at $SYSTEMD_SRC" "$EXIT_PREREQ"
    need_cmd cmp "install diffutils"
    need_cmd systemd-sysusers "install systemd (it creates the edge-agent user)"
    if [[ $ROOT == / && $DRY_RUN == 0 ]]; then
        is_root || die "installing onto this system needs root (sudo)" "$EXIT_PREREQ"
    fi
}

stage_units() {
    local etc_sd usr_lib unit
    etc_sd=$(root_path "$ROOT" /etc/systemd/system)
    usr_lib=$(root_path "$ROOT" /usr/lib)
    ensure_dir "$etc_sd" 0755
    ensure_dir "$etc_sd/multi-user.target.wants" 0755
    for unit in "${UNITS[@]}"; do
        install_file "$SYSTEMD_SRC/$unit" "$etc_sd/$unit" 0644
        ensure_symlink "/etc/systemd/system/$unit" "$etc_sd/multi-user.target.wants/$unit"
    done
    ensure_dir "$usr_lib/sysusers.d" 0755
    ensure_dir "$usr_lib/tmpfiles.d" 0755
    install_file "$SYSTEMD_SRC/sysusers.d/edge-agent.conf" "$usr_lib/sysusers.d/edge-agent.conf" 0644
    install_file "$SYSTEMD_SRC/tmpfiles.d/edge-agent.conf" "$usr_lib/tmpfiles.d/edge-agent.conf" 0644
}

stage_scripts() {
    local opt script
    opt=$(root_path "$ROOT" /opt/edge-agent)
    ensure_dir "$opt" 0755
    ensure_dir "$opt/sbin" 0755
    for script in install.sh uninstall.sh tune.sh; do
        install_file "$HERE/$script" "$opt/sbin/$script" 0755
    done
    install_file "$HERE/lib.sh" "$opt/sbin/lib.sh" 0644
    # The staged install.sh finds its units next to itself.
    ensure_dir "$opt/share" 0755
    ensure_dir "$opt/share/systemd" 0755
    ensure_dir "$opt/share/systemd/sysusers.d" 0755
    ensure_dir "$opt/share/systemd/tmpfiles.d" 0755
    for script in "${UNITS[@]}" sysusers.d/edge-agent.conf tmpfiles.d/edge-agent.conf; do
        install_file "$SYSTEMD_SRC/$script" "$opt/share/systemd/$script" 0644
    done
}

# The wheel folder mirrors the given wheels exactly: stale wheels are removed.
stage_wheels() {
    [[ ${#WHEELS[@]} -gt 0 ]] || return 0
    local dir w keep name
    dir=$(root_path "$ROOT" /opt/edge-agent/wheels)
    ensure_dir "$dir" 0755
    for w in "${WHEELS[@]}"; do
        install_file "$w" "$dir/$(basename "$w")" 0644
    done
    shopt -s nullglob
    for w in "$dir"/*.whl; do
        keep=0
        for name in "${WHEELS[@]}"; do [[ $(basename "$name") == "$(basename "$w")" ]] && keep=1; done
        [[ $keep == 1 ]] || run rm -f "$w"
    done
    shopt -u nullglob
}

stage_config() {
    local etc
    etc=$(root_path "$ROOT" /etc/edge-agent)
    ensure_dir "$etc" 0755
    if [[ -n $CONFIG ]]; then
        check_config "$CONFIG"
        install_file "$CONFIG" "$etc/agent.yaml" 0644
    elif [[ ! -f $etc/agent.yaml ]]; then
        warn "no --config given and $etc/agent.yaml absent: the agent will not start without it"
    fi
    if [[ -n $TUNE_CONF ]]; then
        install_file "$TUNE_CONF" "$etc/tune.conf" 0644
    elif [[ ! -f $etc/tune.conf ]]; then
        local tmp
        tmp=$(mktemp)
        printf '%s\n' "# tune.sh settings; empty leaves the board's default." \
            "NVPMODEL_MODE=" "JETSON_CLOCKS=off" >"$tmp"
        install_file "$tmp" "$etc/tune.conf" 0644
        rm -f "$tmp"
    fi
}

check_config() {
    local checker
    checker=$(command -v edge-agent || true)
    [[ -x $(root_path "$ROOT" /opt/edge-agent/venv/bin/edge-agent) && $ROOT == / ]] &&
        checker=/opt/edge-agent/venv/bin/edge-agent
    if [[ -z $checker ]]; then
        warn "edge-agent not on PATH: $1 not validated here (the unit's ExecStartPre will)"
        return 0
    fi
    "$checker" check-config "$1" >/dev/null || die "config $1 is invalid (see above)"
}

stage_identity() {
    [[ -n $IDENTITY ]] || return 0
    local ident creds name
    ident=$(root_path "$ROOT" /etc/edge-agent/identity)
    creds=$(root_path "$ROOT" /etc/edge-agent/credentials)
    ensure_dir "$ident" 0755
    ensure_dir "$creds" 0700
    for name in device-id device.pub device.crt ca.crt fleet-signing.pub mqtt-username; do
        [[ -f $IDENTITY/$name ]] && install_file "$IDENTITY/$name" "$ident/$name" 0644
    done
    for name in device.key mqtt-password; do
        [[ -f $IDENTITY/$name ]] || die "$IDENTITY/$name missing (re-run provision-device.sh)"
        install_file "$IDENTITY/$name" "$creds/$name" 0600
    done
}

# The user lives in the root's own /etc/passwd: systemd-sysusers --root never touches
# the build host's user database.
make_users() {
    local conf
    conf=$(root_path "$ROOT" /usr/lib/sysusers.d/edge-agent.conf)
    if [[ $ROOT == / ]]; then
        run systemd-sysusers "$conf"
    elif [[ $DRY_RUN == 1 ]]; then
        run systemd-sysusers --root="$ROOT" "$conf"
    else
        ensure_user_db
        systemd-sysusers --root="$ROOT" "$conf" >/dev/null
    fi
}

ensure_user_db() {
    local etc
    etc=$(root_path "$ROOT" /etc)
    [[ -f $etc/passwd ]] || die "$etc/passwd missing: $ROOT is not a root file system" "$EXIT_PREREQ"
    [[ -f $etc/group ]] || die "$etc/group missing: $ROOT is not a root file system" "$EXIT_PREREQ"
}

set_owners() {
    [[ $DRY_RUN == 1 ]] && return 0
    if ! is_root; then
        warn "not root: owners left as they are; systemd-tmpfiles sets them on the device's boot"
        return 0
    fi
    local state
    state=$(root_path "$ROOT" /var/lib/edge-agent)
    ensure_dir "$state" 0750
    ensure_dir "$state/models" 0750
    set_owner "$ROOT" edge-agent edge-agent "$state" "$state/models"
    set_owner "$ROOT" root root "$(root_path "$ROOT" /etc/edge-agent)" \
        "$(root_path "$ROOT" /etc/edge-agent)"/* "$(root_path "$ROOT" /etc/edge-agent)"/*/*
}

# What the venv was built from: the wheels' hashes, or the source venv's file list
# (paths, sizes, modification times).
venv_source_id() {
    if [[ -n $VENV_SRC ]]; then
        find "$VENV_SRC" -printf '%P %s %T@\n' | LC_ALL=C sort | sha256sum
    else
        sha256sum -- "${WHEELS[@]}" | cut -d' ' -f1 | LC_ALL=C sort
    fi
}

# Build the venv beside the live one and swap it in; the old one is kept for --rollback.
# Nothing is rebuilt when the live venv was built from the same wheels.
build_venv() {
    local opt new stamp
    opt=$(root_path "$ROOT" /opt/edge-agent)
    new="$opt/venv.new"
    if [[ -z $VENV_SRC ]]; then
        [[ ${#WHEELS[@]} -gt 0 ]] || return 0
        [[ -x $PYTHON ]] || die "$PYTHON not found (JetPack's python3 is needed)" "$EXIT_PREREQ"
    fi
    stamp=$(venv_source_id)
    if [[ -f $opt/venv/.edge-source && $(cat "$opt/venv/.edge-source") == "$stamp" ]]; then
        return 0
    fi
    run rm -rf "$new"
    if [[ -n $VENV_SRC ]]; then
        run cp -a "$VENV_SRC" "$new"
    else
        run "$PYTHON" -m venv --system-site-packages "$new"
        run "$new/bin/pip" install --quiet --no-index --find-links "$opt/wheels" edge-vision
    fi
    if [[ $DRY_RUN == 0 ]]; then printf '%s\n' "$stamp" >"$new/.edge-source"; fi
    if [[ -d $opt/venv ]]; then
        run rm -rf "$opt/venv.previous"
        run mv "$opt/venv" "$opt/venv.previous"
    fi
    run mv "$new" "$opt/venv"
}

rollback() {
    local opt
    opt=/opt/edge-agent
    [[ $ROOT == / ]] || usage_error "--rollback works on the device itself, not with --root"
    [[ -d $opt/venv.previous ]] || die "no previous venv at $opt/venv.previous to roll back to"
    run mv "$opt/venv" "$opt/venv.rollback"
    run mv "$opt/venv.previous" "$opt/venv"
    run mv "$opt/venv.rollback" "$opt/venv.previous"
    run systemctl restart edge-agent.service
    log "rolled back: /opt/edge-agent/venv is the previous version, agent restarted"
}

activate() {
    run systemctl daemon-reload
    run systemd-tmpfiles --create /usr/lib/tmpfiles.d/edge-agent.conf
    run systemctl enable "${UNITS[@]}"
    if [[ $START == 1 ]]; then
        run systemctl restart edge-agent.service
        [[ $DRY_RUN == 1 ]] || log "agent (re)started: journalctl -u edge-agent -f"
    fi
}

main() {
    parse_args "$@"
    # The staged copy of this script finds its units under ../share/systemd.
    [[ -d $SYSTEMD_SRC ]] || SYSTEMD_SRC=$HERE/../share/systemd
    [[ -d $SYSTEMD_SRC ]] && SYSTEMD_SRC=$(cd "$SYSTEMD_SRC" && pwd)
    if [[ $ROLLBACK == 1 ]]; then rollback; return 0; fi
    if [[ $VENV_ONLY == 1 ]]; then
        [[ $ROOT == / ]] || usage_error "--venv-only builds the venv on the device itself"
        build_venv
        return 0
    fi
    preflight
    stage_units
    stage_scripts
    stage_wheels
    stage_config
    stage_identity
    make_users
    set_owners
    if [[ $ROOT == / ]]; then
        build_venv
        activate
    elif [[ -n $VENV_SRC ]]; then
        build_venv
    fi
    if [[ $DRY_RUN == 1 ]]; then log "dry run: nothing changed in $ROOT"; else log "installed into $ROOT"; fi
}

main "$@"
