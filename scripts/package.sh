#!/usr/bin/env bash
# Builds the four certfleet packages — certfleet-agent and certfleet
# (controller + CLI), each as .deb (cargo-deb) and .rpm (rpmbuild, from the
# spec files in packaging/rpm/) — into target/packages/. See
# docs/packaging.md.
#
# Usage: scripts/package.sh [--install-tools] [--profile P] [--version V]
#                           [--out DIR] [--test]
#   --install-tools
#                first install what is missing of the tools below and the
#                package test's (apt-get as root or through sudo; cargo
#                install --locked cargo-deb@$CARGO_DEB_VERSION); CI uses it
#   --profile P  cargo profile of the packaged binaries [default: release].
#                `--profile dev` packages the debug binaries that
#                scripts/test.sh builds (target/debug): fast, for CI's
#                package test; never ship those
#   --version V  package version instead of the workspace's (the binaries
#                still report the workspace version); used by the upgrade test
#   --out DIR    output directory [default: target/packages]
#   --only NAME  build only package NAME (certfleet-agent or certfleet)
#   --test       then run tests/packaging/test-packages.sh on the packages
#                (root; installs them only into throwaway overlay roots and
#                a booted Debian container, never into this system; needs
#                lintian, rpmlint, rpm, gpg, mmdebstrap, systemd-nspawn)
#
# Release binaries are built into $CARGO_TARGET_DIR [default: target/pkg], a
# target directory of their own so packaging does not invalidate debug
# builds; dev binaries come from $CARGO_TARGET_DIR [default: target], built
# with `cargo build --workspace --bins --features ...failpoints` exactly as
# scripts/test.sh does (failpoints compiled in, inert unless
# CERTFLEET_FAILPOINTS is set; release packages never have them).
#
# Signing: with CERTFLEET_RPM_SIGN_KEY set to a GnuPG key id (in $GNUPGHOME
# or ~/.gnupg), the .rpms are signed with `rpmsign --addsign`. Unsigned
# .rpms make rpmlint report no-signature (docs/packaging.md).
#
# Tools: cargo-deb (cargo install cargo-deb --locked), rpmbuild (Debian:
#   apt-get install rpm), gzip, strip; rpmsign and gpg to sign; the test
#   also needs lintian, rpmlint and systemd-analyze, and its systemd host
#   part mmdebstrap, systemd-nspawn (systemd-container), nsenter, pebble,
#   pebble-challtestsrv, jq, curl, openssl and ss.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

profile=release
version=""
out=target/packages
run_tests=false
install_tools=false
only=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --profile) profile=${2:?--profile needs a value}; shift 2 ;;
    --version) version=${2:?--version needs a value}; shift 2 ;;
    --out) out=${2:?--out needs a value}; shift 2 ;;
    --test) run_tests=true; shift ;;
    --install-tools) install_tools=true; shift ;;
    --only) only=${2:?--only needs a package name}; shift 2 ;;
    -h | --help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
case $only in
  "" | certfleet-agent | certfleet) ;;
  *) die "--only takes certfleet-agent or certfleet, not $only" ;;
esac
case $profile in
  release | dev) ;;
  *) die "--profile must be release or dev, not $profile" ;;
esac

# The cargo-deb release this packaging is tested with.
CARGO_DEB_VERSION=3.8.0

as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo -n "$@"
  else
    die "not root and no passwordless sudo: cannot run $*"
  fi
}

# Debian package providing each command the build and its test run.
install_missing_tools() {
  local apt=() cmd pkg pair
  for pair in rpmbuild:rpm rpmsign:rpm rpmlint:rpmlint lintian:lintian gpg:gnupg \
    gzip:gzip strip:binutils readelf:binutils dpkg-shlibdeps:dpkg-dev \
    systemd-analyze:systemd mmdebstrap:mmdebstrap systemd-nspawn:systemd-container \
    nsenter:util-linux pebble:pebble pebble-challtestsrv:pebble jq:jq curl:curl \
    openssl:openssl ss:iproute2; do
    cmd=${pair%%:*} pkg=${pair#*:}
    command -v "$cmd" >/dev/null 2>&1 || apt+=("$pkg")
  done
  if [[ ${#apt[@]} -gt 0 ]]; then
    mapfile -t apt < <(printf '%s\n' "${apt[@]}" | sort -u)
    command -v apt-get >/dev/null 2>&1 || die "missing ${apt[*]} and no apt-get to install them"
    log "apt-get install ${apt[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt[@]}"
  fi
  if ! command -v cargo-deb >/dev/null 2>&1; then
    log "cargo install --locked cargo-deb@$CARGO_DEB_VERSION"
    cargo install --locked "cargo-deb@$CARGO_DEB_VERSION"
  fi
}
[[ $install_tools == true ]] && install_missing_tools

tools=(cargo-deb rpmbuild gzip strip)
[[ -n ${CERTFLEET_RPM_SIGN_KEY:-} ]] && tools+=(rpmsign gpg)
for tool in "${tools[@]}"; do
  command -v "$tool" >/dev/null 2>&1 \
    || die "$tool is missing: cargo install cargo-deb --locked; apt-get install rpm gzip binutils gnupg"
done

# cargo calls the dev profile's directory "debug".
if [[ $profile == dev ]]; then
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
  profile_dir=debug
else
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/pkg}
  profile_dir=release
fi
[[ $CARGO_TARGET_DIR == /* ]] || CARGO_TARGET_DIR=$ROOT/$CARGO_TARGET_DIR
GEN=$ROOT/target/packaging-gen
mkdir -p "$out"
out=$(cd "$out" && pwd)

if [[ $profile == dev ]]; then
  # The same command as scripts/test.sh: after it, nothing to rebuild.
  FEATURES=certfleet-controller/failpoints,certfleet-agent/failpoints
  log "building dev binaries into $CARGO_TARGET_DIR (cargo build --workspace --bins --features $FEATURES)"
  cargo build --workspace --bins --features "$FEATURES"
else
  log "building release binaries into $CARGO_TARGET_DIR"
  cargo build --release \
    -p certfleet-agent -p certfleet-controller -p certfleet-packaging-gen
fi
BIN=$CARGO_TARGET_DIR/$profile_dir

# A config the package ships must pass the agent's own check.
log "checking the shipped agent configs"
for config in packaging/agent*.toml; do
  "$BIN/certfleet-agent" check-config --config "$config" >/dev/null \
    || die "$config fails certfleet-agent check-config"
done

log "generating man pages and completions into $GEN"
rm -rf "$GEN"
"$BIN/certfleet-packaging-gen" "$GEN" >/dev/null
# cargo-deb compresses man pages itself; the .rpm takes them compressed.
for dir in "$GEN"/man/*/; do
  name=$(basename "$dir")
  mkdir -p "$GEN/man-gz/$name"
  for page in "$dir"*.1; do
    gzip -9n -c "$page" >"$GEN/man-gz/$name/$(basename "$page").gz"
  done
done

# Stripped copies of the binaries, packaged by both tools; cargo's outputs
# stay as they are. cargo-deb reads them as the "release" profile of a
# target directory of their own (target/packaging-gen/target), which is also
# how dev binaries get packaged (cargo-deb refuses the dev profile).
STAGE=$GEN/target/release
mkdir -p "$STAGE"
for bin in certfleet certfleet-agent; do
  strip --strip-unneeded -o "$STAGE/$bin" "$BIN/$bin"
done

# Reproducible timestamps in the packages: the last commit, else now. Only
# the packaging tools see it: exported, it would change the environment of
# the cargo build above (build scripts track it) and force a rebuild.
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}

pkg_version=${version:-$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)}
[[ -n $pkg_version ]] || die "no version in Cargo.toml's [workspace.package]"
deb_args=()
[[ -n $version ]] && deb_args+=(--deb-version "$version-1")
# Dev packages are only tested: cheap compression (xz and zstd -19 take
# minutes on the unoptimised binaries).
[[ $profile == dev ]] && deb_args+=(--fast)

RPMTOP=$(mktemp -d)
trap 'rm -rf "$RPMTOP"' EXIT
rpmbuild_args=(
  --define "_topdir $RPMTOP"
  --define "_rpmdir $out"
  --define "_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm"
  --define "certfleet_version $pkg_version"
  --define "certfleet_root $ROOT"
  --define "certfleet_bin $STAGE"
  --define "certfleet_gen $GEN"
  --define "use_source_date_epoch_as_buildtime 1"
  --define "clamp_mtime_to_source_date_epoch 1"
  --target x86_64
)
[[ $profile == dev ]] && rpmbuild_args+=(--define "_binary_payload w1.zstdio")

# cargo-deb warns about every asset under a "target/" path that is not
# target/release/; the generated man pages and completions are such assets
# on purpose, so that one warning is filtered out.
rpms=()
for pkg in certfleet-agent:certfleet-agent certfleet-controller:certfleet; do
  crate=${pkg%%:*} name=${pkg#*:}
  [[ -z $only || $only == "$name" ]] || continue
  log "building $name .deb"
  SOURCE_DATE_EPOCH=$epoch CARGO_TARGET_DIR=$GEN/target \
    cargo deb --no-build -p "$crate" --output "$out" "${deb_args[@]}" 2>&1 >/dev/null \
    | { grep -v "does not match the pattern, and will not be built" || true; } >&2
  log "building $name .rpm"
  rm -f "$out/$name-$pkg_version-1.x86_64.rpm"
  SOURCE_DATE_EPOCH=$epoch rpmbuild -bb --quiet "${rpmbuild_args[@]}" "packaging/rpm/$name.spec" >&2
  rpms+=("$out/$name-$pkg_version-1.x86_64.rpm")
done

if [[ -n ${CERTFLEET_RPM_SIGN_KEY:-} ]]; then
  log "signing the .rpms with key $CERTFLEET_RPM_SIGN_KEY"
  # %__gpg defaults to gpg2, which Debian does not install under that name.
  rpmsign --addsign --define "__gpg $(command -v gpg)" --define "_gpg_name $CERTFLEET_RPM_SIGN_KEY" \
    "${rpms[@]}" >/dev/null \
    || die "rpmsign failed (is $CERTFLEET_RPM_SIGN_KEY a secret key in ${GNUPGHOME:-~/.gnupg}?)"
else
  log "CERTFLEET_RPM_SIGN_KEY not set: the .rpms are not signed"
fi

log "packages in $out:"
ls -l "$out"/*.deb "$out"/*.rpm >&2 || true

if [[ $run_tests == true ]]; then
  rm -rf "$RPMTOP"
  exec tests/packaging/test-packages.sh --profile "$profile" "$out"
fi
