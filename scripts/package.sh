#!/usr/bin/env bash
# Builds the four certfleet packages — certfleet-agent and certfleet
# (controller + CLI), each as .deb (cargo-deb) and .rpm (cargo-generate-rpm)
# — into target/packages/. See docs/packaging.md.
#
# Usage: scripts/package.sh [--version V] [--out DIR] [--test]
#   --version V  package version instead of the workspace's (the binaries
#                still report the workspace version); used by the upgrade test
#   --out DIR    output directory [default: target/packages]
#   --test       then run tests/packaging/test-packages.sh on the packages
#                (installs them into this system with dpkg as root and into a
#                throwaway root with rpm; needs lintian, rpmlint, rpm)
#
# Release binaries are built into $CARGO_TARGET_DIR [default: target/pkg], a
# target directory of their own so packaging does not invalidate debug builds.
# Tools: cargo-deb and cargo-generate-rpm
#   (cargo install cargo-deb cargo-generate-rpm --locked), gzip.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

version=""
out=target/packages
run_tests=false
while [[ $# -gt 0 ]]; do
  case $1 in
    --version) version=${2:?--version needs a value}; shift 2 ;;
    --out) out=${2:?--out needs a value}; shift 2 ;;
    --test) run_tests=true; shift ;;
    -h | --help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

for tool in cargo-deb cargo-generate-rpm gzip; do
  command -v "$tool" >/dev/null 2>&1 \
    || die "$tool is missing: cargo install cargo-deb cargo-generate-rpm --locked (gzip: apt-get install gzip)"
done

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/pkg}
[[ $CARGO_TARGET_DIR == /* ]] || CARGO_TARGET_DIR=$ROOT/$CARGO_TARGET_DIR
GEN=$ROOT/target/packaging-gen
mkdir -p "$out"
out=$(cd "$out" && pwd)

log "building release binaries into $CARGO_TARGET_DIR"
cargo build --release \
  -p certfleet-agent -p certfleet-controller -p certfleet-packaging-gen
BIN=$CARGO_TARGET_DIR/release

# A config the package ships must pass the agent's own check.
log "checking the shipped agent configs"
for config in packaging/agent*.toml; do
  "$BIN/certfleet-agent" check-config --config "$config" >/dev/null \
    || die "$config fails certfleet-agent check-config"
done

log "generating man pages and completions into $GEN"
rm -rf "$GEN"
"$BIN/certfleet-packaging-gen" "$GEN" >/dev/null
# cargo-deb compresses man pages itself; cargo-generate-rpm does not.
for dir in "$GEN"/man/*/; do
  name=$(basename "$dir")
  mkdir -p "$GEN/man-gz/$name"
  for page in "$dir"*.1; do
    gzip -9n -c "$page" >"$GEN/man-gz/$name/$(basename "$page").gz"
  done
done

# Strip once, in our own target dir: cargo-generate-rpm packages the file as
# it is (cargo-deb would strip its own copy).
strip --strip-unneeded "$BIN/certfleet" "$BIN/certfleet-agent"

# Reproducible timestamps in the packages: the last commit, else now. Only
# the packaging tools see it: exported, it would change the environment of
# the cargo build above (build scripts track it) and force a rebuild.
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}

deb_args=()
rpm_args=()
if [[ -n $version ]]; then
  deb_args+=(--deb-version "$version-1")
  rpm_args+=(--set-metadata "version = \"$version\"")
fi

# cargo-deb warns about every asset under a "target/" path that is not
# target/release/; the generated man pages and completions are such assets
# on purpose, so that one warning is filtered out.
for crate in agent:certfleet-agent controller:certfleet-controller; do
  dir=${crate%%:*} pkg=${crate#*:}
  log "building $pkg .deb"
  SOURCE_DATE_EPOCH=$epoch cargo deb --no-build -p "$pkg" --output "$out" "${deb_args[@]}" 2>&1 >/dev/null \
    | { grep -v "does not match the pattern, and will not be built" || true; } >&2
  log "building $pkg .rpm"
  # cargo-generate-rpm's -p takes the crate's directory.
  SOURCE_DATE_EPOCH=$epoch cargo generate-rpm -p "$dir" --target-dir "$CARGO_TARGET_DIR" --output "$out/" "${rpm_args[@]}"
done

log "packages in $out:"
ls -l "$out"/*.deb "$out"/*.rpm >&2

if [[ $run_tests == true ]]; then
  exec tests/packaging/test-packages.sh "$out"
fi
