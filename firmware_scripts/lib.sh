# shellcheck shell=bash
# Shared helpers for the firmware_scripts/*.sh tools. Sourced, never executed.
#
# Conventions every script follows:
#   exit 0 ok, 1 failure, 2 bad usage, 3 missing prerequisite (BSP, board, tool, wrong system).
#   --dry-run: every command that would change the system is printed, not run ("would: ...").
#   Writes are idempotent: a file is replaced only when its bytes or mode differ, so a
#   second run over the same inputs changes nothing.

EXIT_FAILED=1
EXIT_USAGE=2
EXIT_PREREQ=3

DRY_RUN=${DRY_RUN:-0}
PROG=$(basename "$0")

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
warn() { printf '%s: warning: %s\n' "$PROG" "$*" >&2; }
# die MESSAGE... [CODE]: print the message words as one line and exit (default code 1).
die() {
    local code=$EXIT_FAILED
    if [[ $# -gt 1 && ${!#} =~ ^[0-9]+$ ]]; then
        code=${!#}
        set -- "${@:1:$#-1}"
    fi
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit "$code"
}
usage_error() { printf '%s: error: %s (see --help)\n' "$PROG" "$1" >&2; exit "$EXIT_USAGE"; }

# need_arg OPTION COUNT: an option that takes a value must have one.
need_arg() { [[ $2 -ge 2 ]] || usage_error "$1 needs a value"; }

# need_cmd NAME HINT: fail with a prerequisite error when a tool is missing.
need_cmd() {
    command -v "$1" >/dev/null 2>&1 || die "'$1' not found on PATH: $2" "$EXIT_PREREQ"
}

# quote_cmd ARGS...: one shell-quoted line, as it could be pasted into a terminal.
quote_cmd() {
    local out="" arg q="'"
    for arg in "$@"; do
        if [[ $arg =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
            out+="$arg "
        else
            out+="'${arg//$q/$q\\$q$q}' "
        fi
    done
    printf '%s\n' "${out% }"
}

# run ARGS...: run a command that changes the system, or print it under --dry-run.
run() {
    if [[ $DRY_RUN == 1 ]]; then
        printf 'would: %s\n' "$(quote_cmd "$@")"
    else
        "$@"
    fi
}

# is_root: true when real chown and system changes are possible.
is_root() { [[ $(id -u) -eq 0 ]]; }

# ensure_dir DIR MODE: create DIR (and parents) with MODE unless it already has it.
ensure_dir() {
    local dir=$1 mode=$2
    if [[ -d $dir ]]; then
        [[ $(stat -c '%a' "$dir") == "${mode#0}" ]] || run chmod "$mode" "$dir"
    else
        run install -d -m "$mode" "$dir"
    fi
}

# install_file SRC DEST MODE: copy SRC to DEST atomically when bytes or mode differ.
install_file() {
    local src=$1 dest=$2 mode=$3
    [[ -f $src ]] || die "missing input file: $src"
    if [[ -f $dest && ! -L $dest ]] && cmp -s "$src" "$dest"; then
        [[ $(stat -c '%a' "$dest") == "${mode#0}" ]] || run chmod "$mode" "$dest"
        return 0
    fi
    if [[ $DRY_RUN == 1 ]]; then
        printf 'would: install %s -> %s (mode %s)\n' "$src" "$dest" "$mode"
        return 0
    fi
    local tmp
    tmp=$(mktemp "${dest}.XXXXXX")
    cp "$src" "$tmp"
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$dest"
}

# ensure_symlink TARGET LINK: make LINK point at TARGET unless it already does.
ensure_symlink() {
    local target=$1 link=$2
    [[ -L $link && $(readlink "$link") == "$target" ]] && return 0
    run ln -sfn "$target" "$link"
}

# set_owner ROOT USER GROUP PATH...: chown by the numeric ids USER/GROUP have in ROOT's
# /etc/passwd and /etc/group (never the build host's), when running as root. Without
# root the owners are left as they are: systemd-tmpfiles and StateDirectory= set them
# on the device's first boot (see docs/deploy.md, "Owners").
set_owner() {
    local root=$1 user=$2 group=$3 uid gid path
    shift 3
    is_root || return 0
    uid=$(lookup_id "$root/etc/passwd" "$user")
    gid=$(lookup_id "$root/etc/group" "$group")
    for path in "$@"; do
        [[ -e $path || -L $path ]] || continue
        [[ $(stat -c '%u:%g' "$path") == "$uid:$gid" ]] || run chown -h "$uid:$gid" "$path"
    done
}

# lookup_id FILE NAME: the numeric id (third field) of NAME in a passwd/group FILE.
lookup_id() {
    local file=$1 name=$2 id
    [[ -f $file ]] || die "$file missing: the target root has no user database" "$EXIT_PREREQ"
    id=$(awk -F: -v n="$name" '$1 == n { print $3; exit }' "$file")
    [[ -n $id ]] || die "'$name' not found in $file" "$EXIT_FAILED"
    printf '%s\n' "$id"
}

# root_path ROOT PATH: PATH inside ROOT ("/" maps to itself).
root_path() {
    if [[ $1 == / ]]; then printf '%s\n' "$2"; else printf '%s%s\n' "${1%/}" "$2"; fi
}
