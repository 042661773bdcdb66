#!/usr/bin/env bash
# install.sh: set up pam_faceid for development or install it system-wide.
#
#   ./install.sh --dev                    ./.venv with the package editable + training, test and dlib tools
#   sudo ./install.sh                     system install (venv in /opt/pam_faceid, config, state, units, PAM profile)
#   sudo ./install.sh --uninstall         remove the system install; keeps enrolments in /var/lib/pam_faceid
#   sudo ./install.sh --uninstall --purge also remove /etc/pam_faceid, /var/lib/pam_faceid and the PAM file
#                                         backups in /var/backups/pam_faceid
#
# Options:
#   --root DIR   system install/uninstall under DIR instead of / (for tests and staging). Paths written into
#                files point inside DIR so the result runs; apt, systemctl and pam-auth-update are not used.
#   --no-apt     never call apt-get (also FACEID_NO_APT=1). --dev then goes on without the missing packages (the
#                tests that need them skip, saying why); the system install fails with the command to run.
#
# What the system install puts where:
#   /opt/pam_faceid/                 venv from /usr/bin/python3, package installed non-editable, runtime deps only
#   /etc/pam_faceid/config.yaml      from config/config.yaml, 0644 root; an existing one is kept
#   /var/lib/pam_faceid/             state and enrolments, 0700 root
#   /etc/systemd/system/             systemd/*.service and *.socket; enabled and started only when systemd is PID 1
#   /usr/local/bin/faceid            -> /opt/pam_faceid/bin/faceid        (admin CLI)
#   /usr/local/bin/faceidd           -> /opt/pam_faceid/bin/faceidd       (the daemon)
#   /usr/local/sbin/faceid-helper    -> /opt/pam_faceid/bin/faceid-helper (the PAM helper)
#   /usr/share/pam-configs/faceid    pam-auth-update profile, installed but NOT enabled ('faceid pam enable' does that)
#   /usr/share/pam-configs/faceid-password  its companion: reports password logins (auth.require_password_after)
#   /opt/pam_faceid/pam/pam_prompt.py  the pam_python module 'faceid pam enable --service S' puts in PAM: a fixed
#                                    path with no Python version in it (checked: root-owned, writable by root only)
# Every run is idempotent: what is already in place is reused and said so.
set -euo pipefail
umask 022

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON=/usr/bin/python3
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)
# Debian packages, each with why: printed before apt-get runs, so nothing is installed without a word.
declare -A APT_WHY=(
    [python3-venv]="makes the virtual environment"
    [python3-dev]="headers for Python packages that pip may have to compile"
    [libpam-modules]="pam_exec, which runs faceid-helper from a PAM stack"
    [libpam-runtime]="pam-auth-update, which 'faceid pam enable' uses"
    [libpam0g]="libpam, which python-pam calls ('faceid test --pam')"
    [systemd]="systemd-analyze, which the tests use to check the units"
    [libpam-python]="pam_python, which loads the face-or-password prompt module"
    [sudo]="tests: a real sudo authenticating through PAM"
    [pamtester]="tests: PAM stacks driven without a terminal"
    [xvfb]="tests: a virtual X screen for the screen-locker test"
    [i3lock]="tests: a real screen locker that authenticates through PAM"
    [xdotool]="tests: types keys into i3lock"
    [lightdm]="tests: a real greeter (tests/test_greeter.py)"
    [gir1.2-lightdm-1]="tests: LightDM's greeter API for Python"
    [python3-gi]="tests: GObject introspection for the test greeter"
    [dbus]="tests: a private D-Bus for LightDM and gnome-keyring"
    [gnome-keyring]="tests: the keyring a face login unlocks (tests/test_keyring.py)"
    [libpam-gnome-keyring]="tests: gnome-keyring's PAM module"
    [libsecret-tools]="tests: secret-tool, to read the unlocked keyring"
    [swtpm]="tests: a software TPM the keyring password is sealed to"
    [swtpm-tools]="tests: swtpm's setup tools"
    [tpm2-tools]="tests: the tpm2 commands that seal and unseal"
)
DEV_APT=(python3-venv python3-dev libpam-modules libpam-runtime libpam0g systemd libpam-python sudo pamtester xvfb
         i3lock xdotool lightdm gir1.2-lightdm-1 python3-gi dbus gnome-keyring libpam-gnome-keyring libsecret-tools
         swtpm swtpm-tools tpm2-tools)
SYSTEM_APT=(python3-venv libpam-modules libpam-runtime libpam-python)

MODE=system
PURGE=0
ROOT=""
NO_APT=0
[[ ${FACEID_NO_APT:-0} == 0 ]] || NO_APT=1

step() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

while (($#)); do
    case "$1" in
        --dev) MODE=dev ;;
        --uninstall) MODE=uninstall ;;
        --purge) PURGE=1 ;;
        --root) (($# >= 2)) || die "--root needs a folder"; ROOT="$2"; shift ;;
        --root=*) ROOT="${1#--root=}" ;;
        --no-apt) NO_APT=1 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option '$1' (see ./install.sh --help)" ;;
    esac
    shift
done
if ((PURGE)) && [[ $MODE != uninstall ]]; then die "--purge goes with --uninstall"; fi
if [[ -n $ROOT ]]; then
    [[ $MODE != dev ]] || die "--root is for the system install, not --dev"
    mkdir -p "$ROOT"
    ROOT="$(cd "$ROOT" && pwd)"
    [[ $ROOT != / ]] || ROOT=""
fi

PREFIX="$ROOT/opt/pam_faceid"
PROMPT_MODULE="$PREFIX/pam/pam_prompt.py"   # pamconf.INSTALLED_PROMPT_MODULE: the venv's prefix + pam/pam_prompt.py
INSTALL_STATE="$PREFIX/.install"       # what this script installed, read back by --uninstall
ETC="$ROOT/etc/pam_faceid"
STATE="$ROOT/var/lib/pam_faceid"
BACKUPS="$ROOT/var/backups/pam_faceid"  # pamconf.BACKUP_DIR
UNIT_DIR="$ROOT/etc/systemd/system"
PAM_PROFILE="$ROOT/usr/share/pam-configs/faceid"
PAM_PASSWORD_PROFILE="$ROOT/usr/share/pam-configs/faceid-password"
LINKS=("$ROOT/usr/local/bin/faceid:faceid" "$ROOT/usr/local/bin/faceidd:faceidd"
       "$ROOT/usr/local/sbin/faceid-helper:faceid-helper")

# systemd is the init system (PID 1) and we are installing into the real root.
systemd_running() { [[ -z $ROOT && -d /run/systemd/system && $(cat /proc/1/comm 2>/dev/null) == systemd ]]; }

# Owner options for install(1): root-owned when we are root (a staging --root run may be unprivileged).
OWN=()
if ((EUID == 0)); then OWN=(-o 0 -g 0); fi

STAGE=""
trap '[[ -z $STAGE ]] || rm -rf "$STAGE"' EXIT

ensure_apt_packages() {
    local missing=() pkg
    if ! command -v dpkg-query >/dev/null; then
        step "no dpkg here: not checking system packages (needed: $*)"
        return
    fi
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing+=("$pkg")
    done
    if ((${#missing[@]} == 0)); then
        step "system packages present: $*"
        return
    fi
    step "system packages missing: ${missing[*]}"
    for pkg in "${missing[@]}"; do
        note "$pkg: ${APT_WHY[$pkg]:-needed}"
    done
    if ((NO_APT)) || [[ -n $ROOT ]] || ((EUID != 0)); then
        if [[ $MODE == dev ]]; then
            step "not installing them (--no-apt, FACEID_NO_APT or not root): the tests that need them skip, saying why"
            note "to install them later: sudo apt-get install ${missing[*]}"
            return
        fi
        die "missing packages: ${missing[*]}; install them with: sudo apt-get install ${missing[*]}"
    fi
    step "installing them with apt-get (to skip: ./install.sh --no-apt, or FACEID_NO_APT=1)"
    step "apt-get update"
    apt-get update
    step "apt-get install ${missing[*]}"
    local policy=/usr/sbin/policy-rc.d made_policy=0 status=0
    if [[ $MODE == dev && ! -e $policy ]]; then
        # The test tools include daemons (lightdm, dbus): installed, not started; the tests start their own.
        note "their services are not started now (a temporary $policy says no)"
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 0755 "$policy" && made_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" || status=$?
    if ((made_policy)); then rm -f "$policy"; fi
    return "$status"
}

# Print "base_prefix major.minor" of a Python, to tell which interpreter a venv was built from.
python_identity() { "$1" -c 'import sys; print(sys.base_prefix, "%d.%d" % sys.version_info[:2])'; }

# Create the venv at $1 from $PYTHON, or reuse it when it already runs on that interpreter.
ensure_venv() {
    local venv="$1" want have
    [[ -x $PYTHON ]] || die "$PYTHON not found (install python3)"
    want="$(python_identity "$PYTHON")"
    if [[ -x $venv/bin/python ]] && have="$(python_identity "$venv/bin/python" 2>/dev/null)"; then
        if [[ $have == "$want" ]]; then
            step "reusing venv $venv (Python $want)"
            return 0
        fi
        return 1
    fi
    [[ ! -e $venv ]] || return 1
    step "creating venv $venv from $PYTHON"
    "$PYTHON" -m venv "$venv"
}

# Exit 0 when pam_faceid is installed editable from $1 with every requirement of setup.cfg
# (install_requires and the extras named after it) satisfied, so pip need not run.
dev_install_is_current() {
    "$SRC/.venv/bin/python" -I - "$@" <<'PY'
import configparser, json, sys
from importlib import metadata
from pathlib import Path

src, extras = Path(sys.argv[1]).resolve(), sys.argv[2:]
try:
    dist = metadata.distribution("pam_faceid")
except metadata.PackageNotFoundError:
    sys.exit("pam_faceid is not installed")
try:
    from packaging.requirements import Requirement
except ImportError:  # every venv has pip, and pip carries its own copy
    from pip._vendor.packaging.requirements import Requirement
url = json.loads(dist.read_text("direct_url.json") or "{}")
if not url.get("dir_info", {}).get("editable") or url.get("url") != src.as_uri():
    sys.exit(f"pam_faceid is not installed editable from {src}")
if not any(f.name.endswith(".pth") and f.read_text().strip() == str(src) for f in dist.files or ()):
    sys.exit("pam_faceid is installed editable through an import finder, not a path (slower helper start)")
cfg = configparser.ConfigParser()
cfg.read(src / "setup.cfg")
if dist.version != cfg["metadata"]["version"]:
    sys.exit(f"installed version {dist.version} differs from setup.cfg")
wanted = set(cfg["options.entry_points"].get("console_scripts", "").split("\n")) - {""}
have = {f"{ep.name} = {ep.value}" for ep in dist.entry_points if ep.group == "console_scripts"}
if {w.replace(" ", "") for w in wanted} != {h.replace(" ", "") for h in have}:
    sys.exit("console scripts changed in setup.cfg")
lines = cfg["options"].get("install_requires", "").split("\n")
for extra in extras:
    lines += cfg["options.extras_require"].get(extra, "").split("\n")
for line in filter(None, (l.strip() for l in lines)):
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate():
        continue
    try:
        version = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        sys.exit(f"{req.name} is not installed")
    if not req.specifier.contains(version, prereleases=True):
        sys.exit(f"{req.name} {version} does not satisfy {req}")
PY
}

dev_install() {
    local venv="$SRC/.venv" pip reason
    ensure_apt_packages "${DEV_APT[@]}"
    ensure_venv "$venv" || die "$venv was not built from $PYTHON (non-root users cannot run it); remove it (rm -rf '$venv') and re-run"
    pip=("$venv/bin/python" -m pip --disable-pip-version-check)
    if "$venv/bin/python" -c 'import sys
from importlib.metadata import version
sys.exit(not (version("torch") == sys.argv[1] and version("torchvision") == sys.argv[2]))' \
        "${TORCH_PINS[0]#*==}" "${TORCH_PINS[1]#*==}" 2>/dev/null; then
        step "torch and torchvision present (${TORCH_PINS[*]})"
    else
        step "pip install ${TORCH_PINS[*]}"
        "${pip[@]}" install "${TORCH_PINS[@]}"
    fi
    if reason="$(dev_install_is_current "$SRC" train test bench 2>&1)"; then
        step "pam_faceid already installed editable with [train,test,bench] requirements satisfied"
    else
        step "pip install -e '.[train,test,bench]' ($reason)"
        # compat: a plain path in a .pth; the default import finder adds 15 ms to every helper start
        "${pip[@]}" install "${TORCH_PINS[@]}" --config-settings editable_mode=compat -e "$SRC[train,test,bench]"
    fi
    step "done: faceid is $venv/bin/faceid (not on the PATH)"
    note "try it:          sudo .venv/bin/faceid demo"
    note "run the daemon:  sudo .venv/bin/faceid dev-daemon   (its own socket and state; see README, Quickstart)"
    note "run the tests:   cd '$SRC' && .venv/bin/python -m pytest -q"
}

# Copy what building the package needs (not venvs, caches or runs) to $1, so pip never writes into the checkout.
stage_source() {
    local items=() item
    for item in pam_faceid setup.cfg setup.py pyproject.toml MANIFEST.in README.md LICENSE LICENSE.md; do
        [[ ! -e $SRC/$item ]] || items+=("$item")
    done
    tar -C "$SRC" --exclude=__pycache__ --exclude='*.pyc' -cf - "${items[@]}" | tar -C "$1" -xf -
}

tree_sha256() { (cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1); }

install_package() {
    local hash
    STAGE="$(mktemp -d)"
    stage_source "$STAGE"
    hash="$(tree_sha256 "$STAGE")"
    if [[ -f $INSTALL_STATE/source.sha256 && $(<"$INSTALL_STATE/source.sha256") == "$hash" ]] \
        && "$PREFIX/bin/python" -c 'import pam_faceid' 2>/dev/null; then
        step "pam_faceid already installed in $PREFIX from this source"
        PACKAGE_CHANGED=0
        return
    fi
    step "pip install pam_faceid (runtime dependencies only, no torch) into $PREFIX"
    "$PREFIX/bin/python" -m pip --disable-pip-version-check install "$STAGE"
    if "$PREFIX/bin/python" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is None)'; then
        die "torch ended up in $PREFIX: the runtime must not depend on it"
    fi
    mkdir -p "$INSTALL_STATE"
    printf '%s\n' "$hash" >"$INSTALL_STATE/source.sha256"
    PACKAGE_CHANGED=1
}

install_config() {
    install -d -m 0755 "${OWN[@]}" "$ETC"
    if [[ -e $ETC/config.yaml ]]; then
        step "keeping existing $ETC/config.yaml"
    elif [[ -f $SRC/config/config.yaml ]]; then
        step "installing $ETC/config.yaml (0644 root)"
        install -m 0644 "${OWN[@]}" "$SRC/config/config.yaml" "$ETC/config.yaml"
        sha256sum "$ETC/config.yaml" | cut -d' ' -f1 >"$INSTALL_STATE/config.sha256"
    else
        step "no config/config.yaml in the source: not installing one (built-in defaults apply)"
    fi
}

install_links() {
    local entry link name target
    for entry in "${LINKS[@]}"; do
        link="${entry%%:*}" name="${entry##*:}" target="$PREFIX/bin/$name"
        if [[ -L $link && $(readlink "$link") == "$target" ]]; then
            step "link $link present"
        elif [[ -e $link || -L $link ]]; then
            step "NOT replacing $link: it exists and is not our link to $target"
        else
            step "linking $link -> $target"
            mkdir -p "$(dirname "$link")"
            ln -s "$target" "$link"
        fi
    done
}

# pam_python runs whatever script a PAM line names, as root, even one others can write: install ours at a fixed
# path (a Python upgrade moves site-packages, not this) and make sure it is safe.
install_prompt_module() {
    local module why
    install -d -m 0755 "${OWN[@]}" "$(dirname "$PROMPT_MODULE")"
    if cmp -s "$SRC/pam_faceid/helper/pam_prompt.py" "$PROMPT_MODULE"; then
        step "PAM module $PROMPT_MODULE present"
    else
        step "installing PAM module $PROMPT_MODULE (0644 root)"
        install -m 0644 "${OWN[@]}" "$SRC/pam_faceid/helper/pam_prompt.py" "$PROMPT_MODULE"
    fi
    ((EUID == 0)) || return 0
    module="$("$PREFIX/bin/python" -I -c 'from pam_faceid.pamstack import pamconf; print(pamconf.PROMPT_MODULE)')"
    [[ $module == "$PROMPT_MODULE" ]] || die "the installed package names $module, not $PROMPT_MODULE"
    if why="$("$PREFIX/bin/python" -I -c 'import sys
from pam_faceid.helper.pam_prompt import unsafe_path
why = unsafe_path(sys.argv[1])
print(why or "")
sys.exit(bool(why))' "$module")"; then
        step "PAM module $module: root-owned, writable by root only"
    else
        die "PAM module $module: $why (pam_python would run it as root); fix its owner and mode and re-run"
    fi
}

write_pam_profile() {
    local path=$1 content=$2
    if [[ -f $path && $(<"$path") == "$content" ]]; then
        step "pam-auth-update profile $path present (not enabled by this script)"
        return
    fi
    step "installing pam-auth-update profile $path (not enabled: 'faceid pam enable' turns it on)"
    install -d -m 0755 "$(dirname "$path")"
    printf '%s\n' "$content" >"$path.tmp"
    chmod 0644 "$path.tmp"
    mv -f "$path.tmp" "$path"
}

install_pam_profile() {
    write_pam_profile "$PAM_PROFILE" "Name: Face unlock (pam_faceid)
Default: no
Priority: 260
Auth-Type: Primary
Auth:
	[success=end default=ignore]	pam_exec.so quiet stdout seteuid $PREFIX/bin/faceid-helper"
    # Runs after the primary blocks, i.e. once a password (or the face) was accepted; faceidd tells the two apart
    # and records a password use only when the account report follows the auth report of the same application.
    # [default=ignore]: their result never counts, so they cannot turn a failed password into success.
    write_pam_profile "$PAM_PASSWORD_PROFILE" "Name: Face unlock: note password logins (pam_faceid)
Default: no
Priority: 0
Auth-Type: Additional
Auth:
	[default=ignore]	pam_exec.so quiet seteuid $PREFIX/bin/faceid-helper --password-used
Account-Type: Additional
Account:
	[default=ignore]	pam_exec.so quiet seteuid $PREFIX/bin/faceid-helper --password-used"
}

install_units() {
    local unit name units=() enable=() changed=0
    shopt -s nullglob
    for unit in "$SRC"/systemd/*.service "$SRC"/systemd/*.socket; do
        units+=("$unit")
    done
    shopt -u nullglob
    if ((${#units[@]} == 0)); then
        step "no systemd units in $SRC/systemd: skipping"
        return
    fi
    install -d -m 0755 "$UNIT_DIR"
    : >"$INSTALL_STATE/units.new"
    for unit in "${units[@]}"; do
        name="$(basename "$unit")"
        printf '%s\n' "$name" >>"$INSTALL_STATE/units.new"
        grep -q '^\[Install\]' "$unit" && enable+=("$name")
        if cmp -s "$unit" "$UNIT_DIR/$name"; then
            step "unit $UNIT_DIR/$name present"
        else
            step "installing unit $UNIT_DIR/$name"
            install -m 0644 "$unit" "$UNIT_DIR/$name"
            changed=1
        fi
    done
    mv -f "$INSTALL_STATE/units.new" "$INSTALL_STATE/units"
    if ! systemd_running; then
        if [[ -n $ROOT ]]; then
            step "staging root $ROOT: units installed, not enabled"
        else
            step "systemd is not PID 1 here: units installed, not enabled. Run the daemon directly as root:"
            note "/usr/local/bin/faceidd    (reads /etc/pam_faceid/config.yaml; run it under your init system or in the background)"
        fi
        return
    fi
    if ((changed)); then
        step "systemctl daemon-reload"
        systemctl daemon-reload
    fi
    if ((${#enable[@]})); then
        step "systemctl enable --now ${enable[*]}"
        systemctl enable --now "${enable[@]}"
    fi
    if ((changed || PACKAGE_CHANGED)) && [[ -f $UNIT_DIR/faceidd.service ]]; then
        step "systemctl try-restart faceidd.service (new code or units)"
        systemctl try-restart faceidd.service
    fi
}

system_install() {
    [[ -n $ROOT ]] || ((EUID == 0)) || die "the system install needs root: sudo ./install.sh"
    if [[ -n $ROOT ]]; then
        step "installing into staging root $ROOT (no apt, systemctl or pam-auth-update)"
        command -v "$PYTHON" >/dev/null && "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null \
            || die "$PYTHON cannot make venvs: install python3-venv"
    else
        ensure_apt_packages "${SYSTEM_APT[@]}"
    fi
    if ! ensure_venv "$PREFIX"; then
        [[ -f $PREFIX/pyvenv.cfg ]] || die "$PREFIX exists and is not a venv: move it away and re-run"
        step "rebuilding $PREFIX: it was not built from $PYTHON (or no longer runs)"
        rm -rf "$PREFIX"
        ensure_venv "$PREFIX"
    fi
    chmod 0755 "$PREFIX"
    mkdir -p "$INSTALL_STATE"
    install_package
    install_config
    if [[ -d $STATE ]]; then
        step "state folder $STATE present (0700 root)"
    else
        step "creating state folder $STATE (0700 root)"
    fi
    install -d -m 0700 "${OWN[@]}" "$STATE"
    chmod 0700 "$STATE"
    install_prompt_module
    install_links
    install_pam_profile
    install_units
    step "done. Face auth is NOT enabled yet: enrol with 'sudo faceid enroll USER', then 'sudo faceid pam enable'"
}

# A folder of the user's data: removed with --purge, otherwise kept, saying so.
purge_or_keep() {
    local dir=$1 what=$2
    [[ -d $dir ]] || return 0
    if ((PURGE)); then
        step "purging $dir ($what)"
        rm -rf "$dir"
    else
        step "keeping $dir ($what); --purge removes it"
    fi
}

uninstall() {
    local units=() name entry link target sum
    [[ -n $ROOT ]] || ((EUID == 0)) || die "uninstalling needs root: sudo ./install.sh --uninstall"
    if [[ -f $INSTALL_STATE/units ]]; then
        mapfile -t units <"$INSTALL_STATE/units"
    else
        shopt -s nullglob
        for name in "$SRC"/systemd/*.service "$SRC"/systemd/*.socket; do units+=("$(basename "$name")"); done
        shopt -u nullglob
    fi
    if systemd_running && ((${#units[@]})); then
        step "systemctl disable --now ${units[*]}"
        systemctl disable --now "${units[@]}" || true
    fi
    for name in "${units[@]}"; do
        if [[ -f $UNIT_DIR/$name ]]; then
            step "removing unit $UNIT_DIR/$name"
            rm -f "$UNIT_DIR/$name"
        fi
    done
    if systemd_running && ((${#units[@]})); then
        systemctl daemon-reload
    fi
    if [[ -f $PAM_PROFILE || -f $PAM_PASSWORD_PROFILE ]]; then
        if [[ -z $ROOT ]] && command -v pam-auth-update >/dev/null && grep -qs faceid-helper /etc/pam.d/common-auth; then
            local profiles=()
            [[ -f $PAM_PROFILE ]] && profiles+=(faceid)
            [[ -f $PAM_PASSWORD_PROFILE ]] && profiles+=(faceid-password)
            step "pam-auth-update --package --remove ${profiles[*]} (face auth is on in /etc/pam.d/common-auth: turning it off)"
            pam-auth-update --package --remove "${profiles[@]}"
        fi
        step "removing $PAM_PROFILE and $PAM_PASSWORD_PROFILE"
        rm -f "$PAM_PROFILE" "$PAM_PASSWORD_PROFILE"
    fi
    for entry in "${LINKS[@]}"; do
        link="${entry%%:*}" target="$PREFIX/bin/${entry##*:}"
        if [[ -L $link && $(readlink "$link") == "$target" ]]; then
            step "removing link $link"
            rm -f "$link"
        fi
    done
    if ((PURGE)); then
        if [[ -d $ETC ]]; then
            step "purging $ETC"
            rm -rf "$ETC"
        fi
    elif [[ -f $ETC/config.yaml ]]; then
        sum="$(sha256sum "$ETC/config.yaml" | cut -d' ' -f1)"
        if [[ -f $INSTALL_STATE/config.sha256 && $(<"$INSTALL_STATE/config.sha256") == "$sum" ]]; then
            step "removing $ETC/config.yaml (unchanged since install)"
            rm -f "$ETC/config.yaml"
            rmdir "$ETC" 2>/dev/null || true
        else
            step "keeping $ETC/config.yaml (edited or not installed by this script; --purge removes it)"
        fi
    elif [[ -d $ETC ]]; then
        rmdir "$ETC" 2>/dev/null || true
    fi
    if [[ -d $PREFIX ]]; then
        [[ -f $PREFIX/pyvenv.cfg ]] || die "$PREFIX is not a venv made by this script: not removing it"
        step "removing $PREFIX"
        rm -rf "$PREFIX"
    fi
    purge_or_keep "$STATE" "enrolments"
    purge_or_keep "$BACKUPS" "copies of PAM files from before each 'faceid pam' change"
    step "uninstalled"
}

PACKAGE_CHANGED=0
case "$MODE" in
    dev) dev_install ;;
    system) system_install ;;
    uninstall) uninstall ;;
esac
