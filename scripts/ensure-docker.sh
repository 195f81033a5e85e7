#!/usr/bin/env bash
# Make sure a Docker engine answers, installing and starting Debian's docker.io if needed.
# Also installs mmdebstrap, which builds the offline base images. Safe to run again.
set -euo pipefail

# The overrides exist for testing this script against stubs.
LOG=${LAB_DOCKERD_LOG:-/var/log/lab-dockerd.log}
PIDFILE=${LAB_DOCKER_PIDFILE:-/var/run/docker.pid}
WAIT_SECONDS=${LAB_DOCKER_WAIT:-60}

say() { echo "ensure-docker: $*" >&2; }

# Bounded, so that a hung engine cannot stall the wait loop below.
engine_answers() {
    if command -v timeout >/dev/null; then
        timeout 10 docker info >/dev/null 2>&1
    else
        docker info >/dev/null 2>&1
    fi
}

is_debian_root() { [[ $(id -u) -eq 0 && -r /etc/debian_version ]] && command -v apt-get >/dev/null; }

apt_updated=no
apt_install() {
    local missing=() pkg
    for pkg in "$@"; do
        [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true) == "install ok installed" ]] ||
            missing+=("$pkg")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    if [[ $apt_updated == no ]]; then
        say "apt-get update"
        apt-get update -qq >&2
        apt_updated=yes
    fi
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# Whether the pid file names a live dockerd (one may be starting up but not answer yet).
dockerd_running() {
    local pid state
    pid=$(cat "$PIDFILE" 2>/dev/null || true)
    [[ $pid =~ ^[0-9]+$ && $(cat "/proc/$pid/comm" 2>/dev/null || true) == dockerd ]] || return 1
    read -r _ _ state _ <"/proc/$pid/stat" 2>/dev/null || return 1
    [[ $state != Z ]]  # a killed dockerd nobody has reaped yet is not running
}

start_dockerd() {
    if dockerd_running; then
        say "dockerd is running; waiting for it to answer"
    else
        # A killed dockerd leaves its pid file behind, and the next one refuses to start.
        if [[ -e $PIDFILE ]]; then
            say "removing stale $PIDFILE"
            rm -f "$PIDFILE"
        fi
        say "starting dockerd (log: $LOG)"
        nohup dockerd --pidfile "$PIDFILE" >>"$LOG" 2>&1 </dev/null &
    fi
    local deadline=$((SECONDS + WAIT_SECONDS))
    until engine_answers; do
        if (( SECONDS >= deadline )); then
            say "the Docker engine did not answer within ${WAIT_SECONDS}s; last lines of $LOG:"
            tail -n 20 "$LOG" >&2 || true
            exit 1
        fi
        sleep 1
    done
}

main() {
    if engine_answers; then
        # mmdebstrap is still needed for the offline base images.
        if ! command -v mmdebstrap >/dev/null && is_debian_root; then
            apt_install mmdebstrap
        fi
        exit 0
    fi
    if ! is_debian_root; then
        say "no Docker engine answers, and this is not root on Debian: start one yourself (docker info must work)"
        exit 1
    fi
    command -v dockerd >/dev/null || apt_install docker.io
    command -v mmdebstrap >/dev/null || apt_install mmdebstrap
    start_dockerd
    say "the Docker engine answers"
}

main "$@"
