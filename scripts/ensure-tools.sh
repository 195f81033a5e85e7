#!/usr/bin/env bash
# Tools the checks and benchmarks use beside the engine: headless Chromium (the HTML report is
# opened and screenshotted in a test), wrk and ab (load baselines). From Debian's packages.
set -euo pipefail

say() { echo "ensure-tools: $*" >&2; }

missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v wrk >/dev/null || missing+=(wrk)
command -v ab >/dev/null || missing+=(apache2-utils)
[[ ${#missing[@]} -eq 0 ]] && exit 0

if [[ $(id -u) -ne 0 || ! -r /etc/debian_version ]]; then
    say "missing ${missing[*]}; install them with your package manager (tests that need them skip, or fail under CI=true)"
    exit 0
fi
say "installing ${missing[*]}"
apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
