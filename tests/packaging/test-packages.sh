#!/usr/bin/env bash
# Tests the packages scripts/package.sh built (run by `scripts/package.sh
# --test`; see docs/packaging.md). Nothing is installed into this system:
# every install happens in a throwaway root, an overlayfs over / mounted in
# a temp dir (the maintainer scripts need a shell, coreutils, adduser,
# deb-systemd-helper), with /dev and /proc bound in, and discarded at the
# end. This system's package databases, /etc and /var are never written.
#   1. lintian on the .debs: no errors (warnings printed, justified in
#      docs/packaging.md).
#   2. .rpm signing: the .rpms are signed with a throwaway GnuPG key (in a
#      temp GNUPGHOME) unless package.sh already signed them; rpmlint reports
#      no errors on the signed .rpms (on unsigned ones, only no-signature);
#      the upgrade packages are signed by package.sh itself
#      (CERTFLEET_RPM_SIGN_KEY).
#   3. .deb lifecycle with dpkg in a throwaway root: install → files, modes,
#      conffiles, unit enabled, installed binary runs, check-config →
#      upgrade to a rebuilt higher version keeping a locally edited
#      agent.toml → remove (identity and config kept) → purge (gone); the
#      controller installed (user, state dir, conffiles), removed, purged.
#   4. systemd-analyze verify and security --offline on the installed units.
#   5. .rpm: content checks with rpm -qlp / -qcp / --scripts, then `rpm -K`
#      against the imported throwaway public key (and NOKEY before), and the
#      same lifecycle with `rpm --root` in a second throwaway root, with
#      signature checking enforced (_pkgverify_level all).
#   6. the .debs on a real systemd host: tests/packaging/test-systemd-host.sh
#      boots a Debian rootfs with systemd-nspawn, installs and starts both
#      units as shipped, and deploys into nginx, Apache and HAProxy (see its
#      header).
#
# Usage: tests/packaging/test-packages.sh [--profile release|dev] [PACKAGE_DIR]
#   --profile   profile for the upgrade packages it builds [default: release]
#   PACKAGE_DIR [default: target/packages]
# Needs root (mount, chroot) and: dpkg, lintian, rpm, rpmbuild, rpmsign,
# rpmlint, gpg, systemd-analyze, cargo-deb. Exits non-zero on the first
# failed check.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
START=$(date +%s)
PROFILE=release
if [[ ${1:-} == --profile ]]; then
  PROFILE=${2:?--profile needs a value}
  shift 2
fi
PKGDIR=$(cd "${1:-target/packages}" && pwd)

TESTS=0
log() { printf '==> [%3ds] %s\n' "$(($(date +%s) - START))" "$*" >&2; }
ok() { TESTS=$((TESTS + 1)); printf 'ok %d - %s\n' "$TESTS" "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
check() { # check DESCRIPTION COMMAND... : the command must succeed
  local what=$1; shift
  if "$@"; then ok "$what"; else fail "$what (command: $*)"; fi
}
fails() { ! "$@" >/dev/null 2>&1; } # fails COMMAND...: the command must fail
# Modes and owners as the throwaway root sees them (its own /etc/passwd).
expect_mode() { # expect_mode ROOT PATH "MODE OWNER:GROUP"
  local got
  got=$(chroot "$1" stat -c '%a %U:%G' "$2" 2>/dev/null) || fail "$2 is missing in the throwaway root"
  [[ $got == "$3" ]] || fail "$2 has mode/owner '$got', want '$3'"
  ok "$2 is $3"
}

[[ $(id -u) -eq 0 ]] || fail "run as root: the test mounts throwaway roots and chroots into them"
for tool in dpkg dpkg-deb lintian rpm rpmbuild rpmsign rpmlint gpg systemd-analyze mount chroot; do
  command -v "$tool" >/dev/null \
    || fail "$tool is missing (apt-get install lintian rpm rpmlint gnupg systemd)"
done

one() { # one GLOB: the single file matching GLOB
  local matches=("$PKGDIR"/$1)
  [[ ${#matches[@]} -eq 1 && -e ${matches[0]} ]] || fail "want exactly one $1 in $PKGDIR, got: ${matches[*]}"
  printf '%s\n' "${matches[0]}"
}
AGENT_DEB=$(one 'certfleet-agent_*_amd64.deb')
CTL_DEB=$(one 'certfleet_*_amd64.deb')
AGENT_RPM=$(one 'certfleet-agent-[0-9]*.x86_64.rpm')
CTL_RPM=$(one 'certfleet-[0-9]*.x86_64.rpm')
VERSION=$(dpkg-deb -f "$AGENT_DEB" Version)
UPVERSION=${VERSION%%-*}.1  # e.g. 0.1.0 -> 0.1.0.1: always higher
log "packages $VERSION in $PKGDIR; upgrade test builds $UPVERSION ($PROFILE profile)"

HAD_USER=false
getent passwd certfleet >/dev/null && HAD_USER=true

# ---------------------------------------------------------------------------
# Throwaway roots
WORK=$(mktemp -d)
ROOTS=()
cleanup() {
  local rc=$? r leftover=false
  if [[ -n ${GNUPGHOME:-} ]]; then gpgconf --kill all >/dev/null 2>&1 || true; fi
  for r in "${ROOTS[@]}"; do
    umount -R "$r" 2>/dev/null || umount -R -l "$r" 2>/dev/null || true
    mountpoint -q "$r" && leftover=true
  done
  # Never delete through a mount that is still there (/dev is bound in).
  if [[ $leftover == false ]] && ! grep -q " $WORK/" /proc/self/mounts; then
    rm -rf --one-file-system "$WORK"
  else
    printf 'warning: %s still has mounts; not deleting it\n' "$WORK" >&2
  fi
  exit $rc
}
trap cleanup EXIT

NEW_ROOT=""
new_root() { # new_root NAME: an overlay over / at $WORK/NAME/root -> $NEW_ROOT
  local base=$WORK/$1
  mkdir -p "$base/upper" "$base/work" "$base/root"
  mount -t overlay overlay -o "lowerdir=/,upperdir=$base/upper,workdir=$base/work" "$base/root" \
    || fail "cannot mount an overlayfs over / (needed for the throwaway root)"
  ROOTS+=("$base/root")
  mount --bind /dev "$base/root/dev" || fail "cannot bind /dev into the throwaway root"
  mount -t proc proc "$base/root/proc" || fail "cannot mount /proc in the throwaway root"
  # An empty /run: no running systemd is visible, so the maintainer
  # scripts' `[ -d /run/systemd/system ]` branches never touch this
  # system's services.
  mount -t tmpfs tmpfs "$base/root/run" || fail "cannot mount a tmpfs on the throwaway root's /run"
  NEW_ROOT=$base/root
}

# ---------------------------------------------------------------------------
# 1. lintian
log "lintian"
lintian_out=$(lintian --fail-on error --display-level '>=warning' --tag-display-limit 0 \
  "$AGENT_DEB" "$CTL_DEB" 2>&1) || { printf '%s\n' "$lintian_out"; fail "lintian reports errors"; }
[[ -n $lintian_out ]] && printf '%s\n' "$lintian_out" | sed 's/^/    lintian: /'
ok "lintian: no errors on the .debs"

# ---------------------------------------------------------------------------
# 2. .rpm signing and rpmlint
export GNUPGHOME=$WORK/gnupg
mkdir -m 0700 "$GNUPGHOME"
log "throwaway signing key in $GNUPGHOME"
gpg --batch --quiet --pinentry-mode loopback --passphrase '' \
  --quick-generate-key 'certfleet package test <package-test@example.invalid>' rsa3072 sign 1d 2>/dev/null \
  || fail "gpg could not generate the throwaway key"
KEY=$(gpg --batch --with-colons --list-secret-keys | awk -F: '/^fpr:/ { print $10; exit }')
[[ -n $KEY ]] || fail "no fingerprint for the throwaway key"
gpg --batch --armor --export "$KEY" >"$WORK/signing-key.asc"

rpm_signed() { rpm -qp --qf '%{RSAHEADER:pgpsig}' "$1" 2>/dev/null | grep -qv '^(none)$'; }
# rpmlint LABEL FILES...: sets $lint to its output; prints it indented.
run_rpmlint() {
  local label=$1; shift
  lint_rc=0
  lint=$(rpmlint "$@" 2>&1) || lint_rc=$?
  printf '%s\n' "$lint" | sed "s/^/    rpmlint ($label): /"
}
# Copies, with any signature package.sh made removed: rpmlint must then
# report no error but no-signature, and none once the throwaway key signed.
SIGNED=$WORK/signed
mkdir "$SIGNED"
cp "$AGENT_RPM" "$CTL_RPM" "$SIGNED/"
rpmsign --delsign "$SIGNED"/*.rpm >/dev/null 2>&1 || fail "rpmsign --delsign failed"
log "rpmlint on the unsigned .rpms"
run_rpmlint unsigned "$SIGNED"/*.rpm
errors=$(grep -E '^[^ ]+: E: ' <<<"$lint" | grep -Ev ': E: no-signature$' || true)
[[ -z $errors ]] || { printf '%s\n' "$errors"; fail "rpmlint reports errors other than no-signature"; }
check "rpmlint: no error on the unsigned .rpms but no-signature" \
  test "$(grep -cE ': E: no-signature$' <<<"$lint")" -eq 2
log "signing with rpmsign --addsign (the throwaway key)"
check "rpmsign --addsign" rpmsign --addsign --define "__gpg $(command -v gpg)" \
  --define "_gpg_name $KEY" "$SIGNED"/*.rpm
AGENT_RPM=$SIGNED/$(basename "$AGENT_RPM")
CTL_RPM=$SIGNED/$(basename "$CTL_RPM")
check "agent .rpm is signed" rpm_signed "$AGENT_RPM"
check "controller .rpm is signed" rpm_signed "$CTL_RPM"
# rpmlint checks the signature against rpm's keyring: a throwaway one, via
# a HOME of its own whose ~/.rpmmacros points rpm at a temp database (this
# system's rpm database is never touched).
mkdir -p "$WORK/home"
printf '%%_dbpath %s\n' "$WORK/rpmdb" >"$WORK/home/.rpmmacros"
check "throwaway rpm keyring: rpm --import the public key" \
  env HOME="$WORK/home" rpm --import "$WORK/signing-key.asc"
log "rpmlint on the signed .rpms"
HOME=$WORK/home run_rpmlint signed "$AGENT_RPM" "$CTL_RPM"
check "rpmlint: 0 errors on the signed .rpms" \
  test "$lint_rc" -eq 0 -a -z "$(grep -E '^[^ ]+: E: ' <<<"$lint")"
grep -qE '^ *[0-9]+ packages and [0-9]+ specfiles checked; 0 errors,' <<<"$lint" \
  || fail "rpmlint's summary does not say 0 errors"

log "building the upgrade packages ($UPVERSION), signed by package.sh"
UPDIR=$WORK/upgrade
mkdir "$UPDIR"
CERTFLEET_RPM_SIGN_KEY=$KEY scripts/package.sh --profile "$PROFILE" --only certfleet-agent \
  --version "$UPVERSION" --out "$UPDIR" \
  >"$WORK/upgrade-build.log" 2>&1 \
  || { cat "$WORK/upgrade-build.log" >&2; fail "scripts/package.sh --version $UPVERSION failed"; }
AGENT_DEB_UP=$(PKGDIR=$UPDIR; one 'certfleet-agent_*_amd64.deb')
AGENT_RPM_UP=$(PKGDIR=$UPDIR; one 'certfleet-agent-[0-9]*.x86_64.rpm')
[[ $(dpkg-deb -f "$AGENT_DEB_UP" Version) == "$UPVERSION-1" ]] || fail "upgrade .deb has the wrong version"
check "package.sh signed the upgrade .rpm (CERTFLEET_RPM_SIGN_KEY)" rpm_signed "$AGENT_RPM_UP"

# ---------------------------------------------------------------------------
# 3. .deb lifecycle, in a throwaway root
new_root deb
D=$NEW_ROOT
for pkg in certfleet-agent certfleet; do
  if chroot "$D" dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -qv 'not-installed'; then
    fail "$pkg is installed on this system; the throwaway root would start with it. Remove it first."
  fi
done
for dir in /var/lib/certfleet-agent /var/lib/certfleet /etc/certfleet; do
  [[ ! -e $D$dir ]] || fail "$dir exists on this system; the throwaway root would start with it."
done
mkdir "$D/certfleet-packages"
cp "$AGENT_DEB" "$AGENT_DEB_UP" "$CTL_DEB" "$D/certfleet-packages/"
in_d() { chroot "$D" "$@"; }
deb_in_d() { printf '/certfleet-packages/%s\n' "$(basename "$1")"; }

export DEBIAN_FRONTEND=noninteractive
# --force-unsafe-io: no fsync per file; the root is thrown away anyway.
DPKG=(chroot "$D" dpkg --force-confdef --force-confold --force-unsafe-io)
conffiles() { in_d dpkg-query -W -f='${Conffiles}\n' "$1"; }

log "dpkg -i $(basename "$AGENT_DEB") (throwaway root $D)"
check "dpkg -i the agent .deb" "${DPKG[@]}" -i "$(deb_in_d "$AGENT_DEB")" </dev/null >/dev/null
expect_mode "$D" /usr/bin/certfleet-agent "755 root:root"
expect_mode "$D" /etc/certfleet/agent.toml "644 root:root"
expect_mode "$D" /var/lib/certfleet-agent "700 root:root"
expect_mode "$D" /etc/certfleet/tls "755 root:root"
expect_mode "$D" /lib/systemd/system/certfleet-agent.service "644 root:root"
for f in /usr/share/man/man1/certfleet-agent.1.gz /usr/share/man/man1/certfleet-agent-enroll.1.gz \
  /usr/share/bash-completion/completions/certfleet-agent \
  /usr/share/zsh/vendor-completions/_certfleet-agent \
  /usr/share/fish/vendor_completions.d/certfleet-agent.fish \
  /usr/share/doc/certfleet-agent/README.md /usr/share/doc/certfleet-agent/copyright \
  /usr/share/doc/certfleet-agent/changelog.gz /usr/share/doc/certfleet-agent/changelog.Debian.gz; do
  check "$f installed" test -s "$D$f"
done
check "agent.toml is a conffile" grep -q '^ /etc/certfleet/agent.toml ' <<<"$(conffiles certfleet-agent)"
check "certfleet-agent.service enabled (not started: the agent is not enrolled)" \
  test -L "$D/etc/systemd/system/multi-user.target.wants/certfleet-agent.service"
check "installed certfleet-agent --version" \
  grep -qx "certfleet-agent ${VERSION%%-*}" <<<"$(in_d /usr/bin/certfleet-agent --version)"
check "installed certfleet-agent check-config on the shipped config" \
  in_d /usr/bin/certfleet-agent check-config >/dev/null
check "man certfleet-agent renders" sh -c "zcat '$D/usr/share/man/man1/certfleet-agent.1.gz' | grep -q enroll"
check "the binary is stripped" sh -c "! readelf -S '$D/usr/bin/certfleet-agent' | grep -q '\.debug_info'"

# 4. systemd-analyze, on the installed unit (its ExecStart= binary exists in
# the root, so it runs in the root).
log "systemd-analyze"
man_opt=(--man=no)
command -v man >/dev/null && man_opt=()
check "systemd-analyze verify certfleet-agent.service" \
  in_d systemd-analyze verify "${man_opt[@]}" /lib/systemd/system/certfleet-agent.service
agent_score=$(in_d systemd-analyze security --offline=true /lib/systemd/system/certfleet-agent.service 2>&1 \
  | sed -n 's/.*Overall exposure level for [^:]*: //p')
log "systemd-analyze security --offline certfleet-agent.service: $agent_score"

# Stand-in for an enrolled host: `certfleet-agent enroll` writes these
# (agent/src/identity.rs). A real enrollment needs a controller; the
# end-to-end tests cover that.
printf 'test identity\n' >"$D/var/lib/certfleet-agent/identity.pem"
printf '{"agent":"agt-test"}\n' >"$D/var/lib/certfleet-agent/agent.json"
# A local edit: a different label and a marker comment.
sed -i 's/^role = "web"/role = "edge"/' "$D/etc/certfleet/agent.toml"
printf '# locally edited by test-packages.sh\n' >>"$D/etc/certfleet/agent.toml"
edited=$(sha256sum <"$D/etc/certfleet/agent.toml")
check "edited config still valid" in_d /usr/bin/certfleet-agent check-config >/dev/null

log "upgrade to $UPVERSION"
check "dpkg -i the $UPVERSION agent .deb (upgrade)" "${DPKG[@]}" -i "$(deb_in_d "$AGENT_DEB_UP")" </dev/null >/dev/null
check "upgraded version is $UPVERSION-1" \
  test "$(in_d dpkg-query -W -f='${Version}' certfleet-agent)" = "$UPVERSION-1"
check "upgrade kept the locally edited agent.toml" test "$(sha256sum <"$D/etc/certfleet/agent.toml")" = "$edited"
check "upgrade wrote no agent.toml.dpkg-* next to it" \
  sh -c "! ls '$D'/etc/certfleet/agent.toml.dpkg-* 2>/dev/null"
check "upgrade kept the identity" test -s "$D/var/lib/certfleet-agent/identity.pem"
expect_mode "$D" /var/lib/certfleet-agent "700 root:root"
check "still enabled after upgrade" test -L "$D/etc/systemd/system/multi-user.target.wants/certfleet-agent.service"

log "remove"
check "dpkg -r certfleet-agent" "${DPKG[@]}" -r certfleet-agent </dev/null >/dev/null
check "remove deleted the binary" test ! -e "$D/usr/bin/certfleet-agent"
check "remove deleted the unit" test ! -e "$D/lib/systemd/system/certfleet-agent.service"
check "remove kept the identity" test -s "$D/var/lib/certfleet-agent/identity.pem"
check "remove kept the edited config" test "$(sha256sum <"$D/etc/certfleet/agent.toml")" = "$edited"
check "package is in config-files state" \
  test "$(in_d dpkg-query -W -f='${db:Status-Status}' certfleet-agent)" = config-files

log "purge"
check "dpkg -P certfleet-agent" "${DPKG[@]}" -P certfleet-agent </dev/null >/dev/null
check "purge deleted the state directory" test ! -e "$D/var/lib/certfleet-agent"
check "purge deleted the config" test ! -e "$D/etc/certfleet/agent.toml"
check "purge deleted /etc/certfleet (empty)" test ! -e "$D/etc/certfleet"
check "purge removed the enable symlink" \
  test ! -e "$D/etc/systemd/system/multi-user.target.wants/certfleet-agent.service"

log "dpkg -i $(basename "$CTL_DEB")"
check "dpkg -i the controller .deb" "${DPKG[@]}" -i "$(deb_in_d "$CTL_DEB")" </dev/null >/dev/null
expect_mode "$D" /usr/bin/certfleet "755 root:root"
check "certfleet system user exists" in_d getent passwd certfleet >/dev/null
expect_mode "$D" /var/lib/certfleet "700 certfleet:certfleet"
expect_mode "$D" /etc/certfleet/controller.toml "644 root:root"
expect_mode "$D" /etc/default/certfleet "644 root:root"
for f in /etc/certfleet/controller.toml /etc/default/certfleet; do
  check "$f is a conffile" grep -q "^ $f " <<<"$(conffiles certfleet)"
done
check "certfleet.service enabled" test -L "$D/etc/systemd/system/multi-user.target.wants/certfleet.service"
check "installed certfleet --version" \
  grep -qx "certfleet ${VERSION%%-*}" <<<"$(in_d /usr/bin/certfleet --version)"
check "man certfleet-serve installed" test -s "$D/usr/share/man/man1/certfleet-serve.1.gz"
check "controller does not ship the agent's man page" \
  sh -c "! chroot '$D' dpkg -L certfleet | grep -q '/certfleet-agent.1.gz$'"
check "systemd-analyze verify certfleet.service" \
  in_d systemd-analyze verify "${man_opt[@]}" /lib/systemd/system/certfleet.service
ctl_score=$(in_d systemd-analyze security --offline=true /lib/systemd/system/certfleet.service 2>&1 \
  | sed -n 's/.*Overall exposure level for [^:]*: //p')
log "systemd-analyze security --offline certfleet.service: $ctl_score"
printf 'state\n' >"$D/var/lib/certfleet/certfleet.db"
check "dpkg -r certfleet" "${DPKG[@]}" -r certfleet </dev/null >/dev/null
check "controller remove kept the state" test -s "$D/var/lib/certfleet/certfleet.db"
check "dpkg -P certfleet" "${DPKG[@]}" -P certfleet </dev/null >/dev/null
check "controller purge deleted the state" test ! -e "$D/var/lib/certfleet"
check "controller purge deleted /etc/default/certfleet" test ! -e "$D/etc/default/certfleet"
check "this system has no certfleet package (the installs stayed in the throwaway root)" \
  sh -c '! dpkg-query -W certfleet-agent certfleet >/dev/null 2>&1'
check "this system has no /etc/certfleet" test ! -e /etc/certfleet

# ---------------------------------------------------------------------------
# 5. .rpm
log "rpm content checks"
files=$(rpm -qlp "$AGENT_RPM" 2>/dev/null)
for f in /usr/bin/certfleet-agent /etc/certfleet/agent.toml \
  /usr/lib/systemd/system/certfleet-agent.service \
  /usr/share/man/man1/certfleet-agent.1.gz /usr/share/man/man1/certfleet-agent-enroll.1.gz \
  /usr/share/bash-completion/completions/certfleet-agent \
  /usr/share/zsh/site-functions/_certfleet-agent \
  /usr/share/fish/vendor_completions.d/certfleet-agent.fish \
  /usr/share/doc/certfleet-agent/README.md /usr/share/doc/certfleet-agent/CHANGELOG.md \
  /usr/share/doc/certfleet-agent/examples/agent-nginx.toml \
  /usr/share/licenses/certfleet-agent/LICENSE; do
  check "agent .rpm lists $f" grep -qx "$f" <<<"$files"
done
check "agent .rpm marks only agent.toml as config" \
  test "$(rpm -qcp "$AGENT_RPM" 2>/dev/null)" = /etc/certfleet/agent.toml
check "agent.toml is %config(noreplace)" grep -qx 'cn /etc/certfleet/agent.toml' \
  <<<"$(rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' "$AGENT_RPM" 2>/dev/null)"
check "agent binary is 0755 in the .rpm" grep -qx -- '-rwxr-xr-x /usr/bin/certfleet-agent' \
  <<<"$(rpm -qp --qf '[%{FILEMODES:perms} %{FILENAMES}\n]' "$AGENT_RPM" 2>/dev/null)"
scripts=$(rpm -qp --scripts "$AGENT_RPM" 2>/dev/null)
for s in 'postinstall scriptlet' 'preuninstall scriptlet' 'postuninstall scriptlet'; do
  check "agent .rpm has a $s" grep -q "$s" <<<"$scripts"
done
check "agent .rpm has Packager, Group, BuildHost and a changelog" test "$(rpm -qp \
  --qf '%{PACKAGER}|%{GROUP}|%{BUILDHOST}|%{CHANGELOGNAME}' "$AGENT_RPM" 2>/dev/null \
  | grep -c '^[^|(]\+|[^|(]\+|[^|(]\+|[^|(]\+$')" -eq 1
check "controller .rpm config files" test "$(rpm -qcp "$CTL_RPM" 2>/dev/null | sort | tr '\n' ' ')" \
  = "/etc/certfleet/controller.toml /etc/sysconfig/certfleet "
check "controller .rpm has the controller's man pages, not the agent's" test "$(rpm -qlp "$CTL_RPM" 2>/dev/null \
  | grep -c -e '/certfleet-serve\.1\.gz$' -e '/certfleet-agent\.1\.gz$')" -eq 1
ctl_scripts=$(rpm -qp --scripts "$CTL_RPM" 2>/dev/null)
for s in 'preinstall scriptlet' 'postinstall scriptlet' 'preuninstall scriptlet' 'postuninstall scriptlet'; do
  check "controller .rpm has a $s" grep -q "$s" <<<"$ctl_scripts"
done

log "rpm --root into a second throwaway root"
new_root rpm
R=$NEW_ROOT
# --nodeps: the root's rpm database is empty (this is a Debian system), so
# glibc and systemd cannot satisfy the packages' requirements. Signatures
# are enforced: an install of a package whose key is not imported fails.
RPM=(rpm --root "$R" --nodeps --define '_pkgverify_level all' --quiet)
check "rpm -K without the public key: NOKEY, refused" fails rpm --root "$R" -K "$AGENT_RPM"
check "rpm -i refuses the agent .rpm before the key is imported" fails "${RPM[@]}" -i "$AGENT_RPM"
check "rpm --import the throwaway public key" rpm --root "$R" --import "$WORK/signing-key.asc"
for p in "$AGENT_RPM" "$CTL_RPM" "$AGENT_RPM_UP"; do
  check "rpm -K $(basename "$p"): digests signatures OK" \
    grep -q ': digests signatures OK$' <<<"$(rpm --root "$R" -K "$p" 2>&1)"
done
check "rpm -i the agent .rpm into the throwaway root" "${RPM[@]}" -i "$AGENT_RPM"
expect_mode "$R" /usr/bin/certfleet-agent "755 root:root"
expect_mode "$R" /var/lib/certfleet-agent "700 root:root"
expect_mode "$R" /etc/certfleet/agent.toml "644 root:root"
check "rpm: unit enabled" test -L "$R/etc/systemd/system/multi-user.target.wants/certfleet-agent.service"
check "rpm: installed certfleet-agent --version" \
  grep -qx "certfleet-agent ${VERSION%%-*}" <<<"$(chroot "$R" /usr/bin/certfleet-agent --version)"
check "rpm: installed check-config" chroot "$R" /usr/bin/certfleet-agent check-config >/dev/null
printf 'test identity\n' >"$R/var/lib/certfleet-agent/identity.pem"
printf '# locally edited by test-packages.sh\n' >>"$R/etc/certfleet/agent.toml"
edited=$(sha256sum <"$R/etc/certfleet/agent.toml")
check "rpm -U to $UPVERSION" "${RPM[@]}" -U "$AGENT_RPM_UP"
check "rpm: upgraded version" test "$(rpm --root "$R" -q --qf '%{VERSION}' certfleet-agent)" = "$UPVERSION"
check "rpm: upgrade kept the edited agent.toml" test "$(sha256sum <"$R/etc/certfleet/agent.toml")" = "$edited"
check "rpm: upgrade kept the identity" test -s "$R/var/lib/certfleet-agent/identity.pem"
check "rpm -e the agent" "${RPM[@]}" -e certfleet-agent
check "rpm: erase deleted the binary" test ! -e "$R/usr/bin/certfleet-agent"
check "rpm: erase kept the identity (no purge in RPM)" test -s "$R/var/lib/certfleet-agent/identity.pem"
check "rpm: erase saved the edited config as .rpmsave" test -s "$R/etc/certfleet/agent.toml.rpmsave"
check "rpm: erase disabled the unit" \
  test ! -e "$R/etc/systemd/system/multi-user.target.wants/certfleet-agent.service"

check "rpm -i the controller .rpm into the throwaway root" "${RPM[@]}" -i "$CTL_RPM"
check "rpm: certfleet user created" grep -q '^certfleet:' "$R/etc/passwd"
expect_mode "$R" /var/lib/certfleet "700 certfleet:certfleet"
check "rpm: installed certfleet --version" \
  grep -qx "certfleet ${VERSION%%-*}" <<<"$(chroot "$R" /usr/bin/certfleet --version)"
check "rpm -e the controller" "${RPM[@]}" -e certfleet
check "rpm: controller erase kept the state dir" test -d "$R/var/lib/certfleet"
if [[ $HAD_USER == false ]]; then
  check "this system has no certfleet user (it stayed in the throwaway roots)" fails getent passwd certfleet
fi

# ---------------------------------------------------------------------------
# 6. a real systemd host
log "the .debs on a booted systemd (tests/packaging/test-systemd-host.sh)"
tests/packaging/test-systemd-host.sh "$AGENT_DEB" "$CTL_DEB" || fail "the systemd host test failed"

printf '\n%d checks passed in %ds (agent .deb exposure %s, controller .deb exposure %s)\n' \
  "$TESTS" "$(($(date +%s) - START))" "${agent_score:-?}" "${ctl_score:-?}"
