#!/usr/bin/env bash
# Install censorscope and everything it needs on a fresh Debian/Ubuntu machine.
#   bash scripts/install.sh         the probe, helper, collector, lab and analysis
#   bash scripts/install.sh --dev   the same plus the test and lint tools
#
# Stock Debian 12 and Ubuntu 24.04 refuse pip into the system Python (PEP 668), so censorscope
# goes into a virtual environment made with the system Python, and `censorscope` is linked
# onto PATH. Re-running is cheap: nothing is reinstalled unless pyproject.toml, the extras or
# the interpreter changed. The environment can change where things go:
#   CENSORSCOPE_PYTHON           the interpreter [/usr/bin/python3 when present, else python3]
#   CENSORSCOPE_VENV             the virtual environment [.venv in this checkout]
#   CENSORSCOPE_BIN_DIR          where `censorscope` is linked [/usr/local/bin as root,
#                                ~/.local/bin otherwise]
#   CENSORSCOPE_SYSTEM_PACKAGES  0: never run apt-get (an image that already has them)
# System packages (the lab's iproute2, iptables, libnetfilter-queue ...; with --dev the test
# suite's) are installed with apt-get when we are root or have sudo; otherwise we say what is
# missing and carry on, since only the lab and its tests need them.
set -euo pipefail
cd "$(dirname "$0")/.."
checkout=$(pwd)

dev=0
for arg in "$@"; do
    case "$arg" in
        --dev) dev=1 ;;
        -h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
    esac
done

say() { echo "install.sh: $*"; }
die() { echo "install.sh: $*" >&2; exit 1; }

if [[ $(id -u) -eq 0 ]]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo"; else sudo="none"; fi

# --- the interpreter ---------------------------------------------------------------------------

python="${CENSORSCOPE_PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -x /usr/bin/python3 ]]; then python=/usr/bin/python3; else python=$(command -v python3 || true); fi
fi
[[ -n "$python" ]] || die "no python3 found: install Python 3.11+ (apt-get install python3) or set CENSORSCOPE_PYTHON"
command -v "$python" >/dev/null || die "CENSORSCOPE_PYTHON=$python: no such interpreter"
python=$(command -v "$python")
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$python is Python $("$python" -c 'import platform; print(platform.python_version())'); censorscope needs 3.11+ (set CENSORSCOPE_PYTHON)"

# --- system packages ---------------------------------------------------------------------------

packages=()
lists=(lab/DEBIAN_PACKAGES.txt)
((dev)) && lists+=(tests/DEBIAN_PACKAGES.txt)
for list in "${lists[@]}"; do
    [[ -f "$list" ]] || continue
    mapfile -t -O "${#packages[@]}" packages < <(grep -v '^\s*#' "$list" | grep -v '^\s*$')
done
# Debian splits venv (ensurepip) and the C headers (netfilterqueue compiles against them) out
# of python3; only ask for them for the distribution's own interpreter.
if [[ "$python" == /usr/bin/* ]]; then
    "$python" -c 'import ensurepip, venv' 2>/dev/null || packages+=(python3-venv)
    "$python" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
        || packages+=(python3-dev)
fi

if [[ "${CENSORSCOPE_SYSTEM_PACKAGES:-1}" != 0 ]] && command -v apt-get >/dev/null 2>&1 && ((${#packages[@]})); then
    missing=()
    for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    if ((${#missing[@]})); then
        if [[ "$sudo" == "none" ]]; then
            echo "install.sh: not root and no sudo: missing system packages: ${missing[*]}" >&2
        else
            say "installing system packages: ${missing[*]}"
            $sudo apt-get update -qq
            DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
        fi
    fi
fi

# --- the virtual environment -------------------------------------------------------------------

venv="${CENSORSCOPE_VENV:-$checkout/.venv}"
real_python=$("$python" -c 'import os, sys; print(os.path.realpath(sys.executable))')
base_of_venv() {
    "$venv/bin/python" -c 'import os, sys; print(os.path.realpath(sys._base_executable))' 2>/dev/null
}
if [[ ! -x "$venv/bin/python" ]] || [[ "$(base_of_venv)" != "$real_python" ]]; then
    say "creating the virtual environment $venv with $python"
    "$python" -m venv --clear "$venv" \
        || die "cannot create a virtual environment with $python (Debian/Ubuntu: apt-get install python3-venv)"
fi

# The lab extra compiles against libnetfilter-queue: only when the library is there.
extras=()
((dev)) && extras+=(dev dask)
dpkg-query -W -f='${Status}' libnetfilter-queue-dev 2>/dev/null | grep -q "ok installed" && extras+=(lab)
spec="."
if ((${#extras[@]})); then spec=".[$(IFS=,; echo "${extras[*]}")]"; fi

# What was installed is recorded in the venv; the same request again skips pip (the install is
# editable, so code changes need no reinstall; a changed pyproject.toml does).
stamp="$venv/.censorscope-install"
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $spec $checkout $real_python"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$venv/bin/censorscope" ]]; then
    say "censorscope is up to date in $venv"
else
    say "installing censorscope$([[ "$spec" != . ]] && echo " with ${spec#.}") into $venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$spec"
    echo "$want" >"$stamp"
fi

# --- onto PATH ---------------------------------------------------------------------------------

if [[ -n "${CENSORSCOPE_BIN_DIR:-}" ]]; then
    bin_dir="$CENSORSCOPE_BIN_DIR"
elif [[ $(id -u) -eq 0 ]]; then
    bin_dir=/usr/local/bin
else
    bin_dir="$HOME/.local/bin"
fi
mkdir -p "$bin_dir"
link="$bin_dir/censorscope"
if [[ -e "$link" && ! -L "$link" ]] && ! grep -q "probes.cli" "$link" 2>/dev/null; then
    # Not a link and not a console script of ours (an older pip install wrote one): keep it.
    echo "install.sh: $link exists and is not ours; not replacing it. Run $venv/bin/censorscope" >&2
else
    ln -sfn "$venv/bin/censorscope" "$link"
    say "censorscope installed in $venv, linked from $link"
fi
case ":$PATH:" in
    *":$bin_dir:"*) ;;
    *) say "$bin_dir is not on PATH: add it (export PATH=\"$bin_dir:\$PATH\") or run $link" ;;
esac
found=$(command -v censorscope || true)
if [[ -n "$found" && "$(realpath "$found")" != "$(realpath "$venv/bin/censorscope")" ]]; then
    say "note: another censorscope comes first on PATH: $found"
fi
