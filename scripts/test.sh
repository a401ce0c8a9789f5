#!/usr/bin/env bash
# Installs the tools certfleet's tests use, builds every binary of the
# workspace, and runs every test (cargo-nextest when installed, else cargo
# test). Exits non-zero when a required tool is missing or any test fails.
#
# Usage: scripts/test.sh [--deps-only] [ARGS passed to the test runner]
#
# Tools the tests need now: openssl (required); pkilint from PyPI (pip,
# optional: its test skips loudly without it). Tools later end-to-end tests
# start (nginx, apache2, haproxy, Pebble, BIND) are installed when the
# distribution has them and only warned about otherwise. Services are never
# started by the installation (policy-rc.d), the tests start their own.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PACKAGES=(openssl nginx pebble bind9 bind9-utils bind9-dnsutils haproxy apache2 curl groff-base)
REQUIRED_COMMANDS=(openssl)

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }

deps_only=false
if [[ ${1:-} == --deps-only ]]; then
  deps_only=true
  shift
fi

# Run as root, or through passwordless sudo, or not at all.
as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo -n "$@"
  else
    return 1
  fi
}

is_installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

has_candidate() {
  local candidate
  candidate=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { print $2; exit }')
  [[ -n $candidate && $candidate != "(none)" ]]
}

POLICY_RC=/usr/sbin/policy-rc.d
POLICY_RC_BACKUP=""
POLICY_RC_OURS=false

restore_policy_rc() {
  if [[ $POLICY_RC_OURS == true ]]; then
    as_root rm -f "$POLICY_RC" || warn "could not remove $POLICY_RC"
    if [[ -n $POLICY_RC_BACKUP ]]; then
      as_root mv "$POLICY_RC_BACKUP" "$POLICY_RC" || warn "could not restore $POLICY_RC"
    fi
  fi
}

# Keep package installation from starting nginx, apache2, bind9, haproxy.
block_service_starts() {
  if [[ -e $POLICY_RC ]]; then
    POLICY_RC_BACKUP=$(mktemp)
    as_root cp -p "$POLICY_RC" "$POLICY_RC_BACKUP"
  fi
  POLICY_RC_OURS=true
  trap restore_policy_rc EXIT
  printf '#!/bin/sh\n# written by certfleet scripts/test.sh during apt-get install\nexit 101\n' \
    | as_root tee "$POLICY_RC" >/dev/null
  as_root chmod 755 "$POLICY_RC"
}

install_packages() {
  if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-query >/dev/null 2>&1; then
    warn "no apt-get/dpkg here: install ${PACKAGES[*]} by hand if tests need them"
    return 0
  fi
  local missing=() pkg
  for pkg in "${PACKAGES[@]}"; do
    is_installed "$pkg" || missing+=("$pkg")
  done
  if [[ ${#missing[@]} -eq 0 ]]; then
    log "packages present: ${PACKAGES[*]}"
    return 0
  fi
  if ! as_root true; then
    warn "not root and no passwordless sudo: cannot install ${missing[*]}"
    return 0
  fi
  log "apt-get update (missing: ${missing[*]})"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
    || warn "apt-get update failed; trying with the package lists there are"
  local installable=()
  for pkg in "${missing[@]}"; do
    if has_candidate "$pkg"; then
      installable+=("$pkg")
    else
      warn "package $pkg has no installation candidate here; skipping it"
    fi
  done
  if [[ ${#installable[@]} -eq 0 ]]; then
    return 0
  fi
  log "apt-get install ${installable[*]}"
  block_service_starts
  if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends "${installable[@]}"; then
    warn "apt-get install ${installable[*]} failed"
  fi
  restore_policy_rc
  POLICY_RC_OURS=false
}

# pkilint (the CA/Browser Forum certificate linter, tests/tests/names.rs)
# comes from PyPI; the test runs it as `python3 -m pkilint.bin...`, so a
# --user install is enough. Without it that test skips loudly.
install_pkilint() {
  if python3 -c 'import pkilint' >/dev/null 2>&1; then
    log "pkilint present"
    return 0
  fi
  if ! command -v python3 >/dev/null 2>&1; then
    warn "no python3: cannot install pkilint; tests/tests/names.rs will skip its lint"
    return 0
  fi
  if ! python3 -m pip --version >/dev/null 2>&1; then
    if as_root true && has_candidate python3-pip; then
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends python3-pip || warn "apt-get install python3-pip failed"
    fi
  fi
  log "pip install pkilint"
  python3 -m pip install --quiet --user pkilint \
    || python3 -m pip install --quiet --user --break-system-packages pkilint \
    || warn "pip install pkilint failed; tests/tests/names.rs will skip its lint"
}

install_packages
install_pkilint

for cmd in "${REQUIRED_COMMANDS[@]}"; do
  if ! command -v "$cmd" >/dev/null 2>&1; then
    echo "error: $cmd is required by the tests but is not installed" >&2
    exit 1
  fi
done

if [[ $deps_only == true ]]; then
  exit 0
fi

# The end-to-end tests start target/debug/certfleet and certfleet-agent;
# build them first, with the failpoints tests/tests/failpoints.rs arms
# (docs/testing.md). nextest does not rebuild these binaries.
FEATURES=certfleet-controller/failpoints,certfleet-agent/failpoints
log "cargo build --workspace --bins --features $FEATURES"
cargo build --workspace --bins --features "$FEATURES"

if cargo nextest --version >/dev/null 2>&1; then
  log "cargo nextest run --workspace"
  cargo nextest run --workspace --no-fail-fast "$@"
else
  log "cargo test --workspace (cargo-nextest not installed)"
  cargo test --workspace --no-fail-fast "$@"
fi
