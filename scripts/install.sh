#!/usr/bin/env bash
# Install censorscope and everything it needs on a fresh Debian/Ubuntu machine.
#   bash scripts/install.sh         the probe, helper, collector, lab and analysis
#   bash scripts/install.sh --dev   the same plus the test and lint tools
# System packages (iproute2, iptables, libnetfilter-queue for the lab ...) are installed with
# apt-get when we are root or have sudo; otherwise we say what is missing and carry on, since
# only the lab needs them.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
if [[ "${1:-}" == "--dev" ]]; then
    dev=1
fi

# System packages: the lab's always; the test suite's (e.g. chromium for the report test) with --dev.
lists=(lab/DEBIAN_PACKAGES.txt)
((dev)) && lists+=(tests/DEBIAN_PACKAGES.txt)
packages=()
for list in "${lists[@]}"; do
    [[ -f "$list" ]] || continue
    mapfile -t -O "${#packages[@]}" packages < <(grep -v '^\s*#' "$list" | grep -v '^\s*$')
done

if command -v apt-get >/dev/null 2>&1 && ((${#packages[@]})); then
    missing=()
    for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    if ((${#missing[@]})); then
        if [[ $(id -u) -eq 0 ]]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo"; else sudo="none"; fi
        if [[ "$sudo" == "none" ]]; then
            echo "install.sh: not root and no sudo: the lab needs: ${missing[*]}" >&2
        else
            echo "install.sh: installing system packages: ${missing[*]}"
            $sudo apt-get update -qq
            DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
        fi
    fi
fi

# The lab extra compiles against libnetfilter-queue: only when the library is there.
extras=()
((dev)) && extras+=(dev dask)
dpkg-query -W -f='${Status}' libnetfilter-queue-dev 2>/dev/null | grep -q "ok installed" && extras+=(lab)
spec="."
if ((${#extras[@]})); then spec=".[$(IFS=,; echo "${extras[*]}")]"; fi

python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -e "$spec"
echo "install.sh: censorscope installed ($(command -v censorscope))"
