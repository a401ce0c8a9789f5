#!/usr/bin/env bash
# The packages on a real systemd host (run by tests/packaging/test-packages.sh;
# see docs/packaging.md). A Debian rootfs is built with mmdebstrap from this
# machine's own apt sources and booted with `systemd-nspawn --boot` (systemd
# as PID 1), sharing this machine's network. Inside it:
#   - both .debs installed with dpkg, both units started as shipped;
#   - nginx, apache2 and haproxy from Debian serving TLS at the paths
#     docs/agent.md shows, on free ports below 1024 (so `nginx -t` needs
#     CAP_NET_BIND_SERVICE in the agent unit, as on a real host);
#   - the agent enrolled; a certificate from a Pebble ACME CA running on this
#     machine, validated over HTTP-01 through the documented webroot
#     /var/www/html, deployed to all three; openssl s_client checks what
#     each serves; a renewal rolled out and checked the same way;
#   - discovery (`certfleet inventory list`) reports all three servers;
#   - a files target outside the unit's ReadWritePaths: check-config warns,
#     the install fails naming the read-only file system and the drop-in;
#     with the drop-in (made with `systemctl edit certfleet-agent`) it works;
#   - `systemd-analyze security` of both units, printed;
#   - the container powered off and booted again: the units come back, the
#     agent reconnects, the servers still serve the renewed certificate.
# Skipped (exit 0, saying why) only when the kernel cannot run a container:
# no mount/PID namespaces or no cgroup hierarchy.
#
# Usage: tests/packaging/test-systemd-host.sh AGENT_DEB CONTROLLER_DEB
# Needs root and: mmdebstrap, systemd-nspawn (systemd-container), nsenter,
# pebble, pebble-challtestsrv, openssl, jq, ss (scripts/package.sh
# --install-tools installs them). Downloaded .debs are cached in
# target/systemd-host-apt-cache; everything else lives in a temp dir.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
START=$(date +%s)
AGENT_DEB=$(realpath "${1:?usage: $0 AGENT_DEB CONTROLLER_DEB}")
CTL_DEB=$(realpath "${2:?usage: $0 AGENT_DEB CONTROLLER_DEB}")

TESTS=0
log() { printf '==> [systemd host %3ds] %s\n' "$(($(date +%s) - START))" "$*" >&2; }
ok() { TESTS=$((TESTS + 1)); printf 'ok %d - systemd host: %s\n' "$TESTS" "$*"; }
skip() { printf 'SKIP: systemd host test: %s\n' "$*"; exit 0; }
fail() {
  printf 'FAIL: systemd host: %s\n' "$*" >&2
  if [[ -n ${LEADER:-} ]] && kill -0 "$LEADER" 2>/dev/null; then
    printf -- '--- journal of the certfleet units (last 40 lines)\n' >&2
    in_c journalctl --no-pager -n 40 -u certfleet -u certfleet-agent >&2 2>&1 || true
  fi
  exit 1
}

[[ $(id -u) -eq 0 ]] || fail "run as root: mmdebstrap and systemd-nspawn need it"
for tool in mmdebstrap systemd-nspawn nsenter unshare pebble pebble-challtestsrv openssl jq ss; do
  command -v "$tool" >/dev/null \
    || fail "$tool is missing (scripts/package.sh --install-tools installs it)"
done

# What the kernel must offer; anything else missing is a failure.
unshare_err=$(unshare --mount --pid --uts --ipc --fork true 2>&1) \
  || skip "the kernel refuses mount/PID/UTS/IPC namespaces, so no container can boot ($unshare_err)"
[[ -e /sys/fs/cgroup/cgroup.controllers || -d /sys/fs/cgroup/systemd || -d /sys/fs/cgroup/unified ]] \
  || skip "no cgroup hierarchy systemd can run in (/sys/fs/cgroup has neither cgroup2 nor a name=systemd v1 hierarchy)"

WORK=$(mktemp -d /tmp/certfleet-systemd-host.XXXXXX)
RFS=$WORK/rootfs
MACHINE=cf-pkg-$$
NSPAWN_PID=""
LEADER=""
BG_PIDS=()
cleanup() {
  local rc=$? pid
  stop_container 2>/dev/null || true
  for pid in "${BG_PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${BG_PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  # Nothing may still be mounted below the rootfs when it is deleted.
  if grep -q " $WORK/" /proc/self/mounts; then
    printf 'warning: %s still has mounts; not deleting it\n' "$WORK" >&2
  else
    rm -rf --one-file-system "$WORK"
  fi
  exit $rc
}
trap cleanup EXIT

# ---------------------------------------------------------------------------
# Ports. The container shares this machine's network, so every port is
# chosen at run time among the free ones: the web servers below 1024 (as on
# a real host, and out of the way of other tests' kernel-assigned ports),
# the controller and Pebble between 1024 and the ephemeral range.
USED_PORTS=" "
free_port() { # free_port LOW HIGH PROTO(tcp|udp|both)
  local low=$1 high=$2 proto=$3 p i
  for i in $(seq 200); do
    p=$((low + RANDOM % (high - low)))
    [[ $USED_PORTS == *" $p "* ]] && continue
    if [[ $proto != udp ]] && [[ -n $(ss -Hltn "sport = :$p") ]]; then continue; fi
    if [[ $proto != tcp ]] && [[ -n $(ss -Hlun "sport = :$p") ]]; then continue; fi
    USED_PORTS+="$p "
    printf '%s\n' "$p"
    return 0
  done
  fail "no free $proto port between $low and $high"
}
P_NGINX=$(free_port 600 1000 tcp)
P_APACHE=$(free_port 600 1000 tcp)
P_HAPROXY=$(free_port 600 1000 tcp)
P_HTTP=$(free_port 600 1000 tcp)
P_CTL=$(free_port 20000 32000 udp)
P_CRL=$(free_port 20000 32000 tcp)
P_PEBBLE=$(free_port 20000 32000 tcp)
P_PEBBLE_MGMT=$(free_port 20000 32000 tcp)
P_PEBBLE_TLS=$(free_port 20000 32000 tcp)
P_DNS=$(free_port 20000 32000 both)
P_CTS_MGMT=$(free_port 20000 32000 tcp)
NAME=www.pkg.test
log "ports: nginx $P_NGINX, apache $P_APACHE, haproxy $P_HAPROXY, webroot $P_HTTP, controller $P_CTL/udp"

# ---------------------------------------------------------------------------
# 1. rootfs
codename=$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")
[[ -n $codename ]] || fail "no VERSION_CODENAME in /etc/os-release: cannot tell mmdebstrap which suite to use"
sources=()
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
  [[ -s $f ]] && grep -qE '^[[:space:]]*(deb |Types:)' "$f" && sources+=("$f")
done
[[ ${#sources[@]} -gt 0 ]] || fail "this machine has no apt sources in /etc/apt/sources.list(.d) for mmdebstrap"
CACHE=$ROOT/target/systemd-host-apt-cache
mkdir -p "$CACHE"
log "mmdebstrap $codename from ${sources[*]} (apt cache $CACHE)"
# The cache hooks are mmdebstrap's documented way to reuse downloads.
mmdebstrap --variant=apt --mode=root \
  --include=systemd,systemd-sysv,dbus,adduser,procps,openssl,nginx,apache2,haproxy \
  --skip=download/empty --skip=essential/unlink \
  --setup-hook='mkdir -p "$1"/var/cache/apt/archives/' \
  --setup-hook="sync-in $CACHE /var/cache/apt/archives/" \
  --customize-hook="sync-out /var/cache/apt/archives $CACHE" \
  --customize-hook='rm -f "$1"/var/cache/apt/archives/*.deb' \
  "$codename" "$RFS" "${sources[@]}" >"$WORK/mmdebstrap.log" 2>&1 \
  || { tail -20 "$WORK/mmdebstrap.log" >&2; fail "mmdebstrap could not build the rootfs"; }
ok "mmdebstrap built a $codename rootfs with systemd, nginx, apache2, haproxy"

mkdir -p "$RFS/root/pkgs"
cp "$AGENT_DEB" "$CTL_DEB" "$RFS/root/pkgs/"
printf '%s\n' "$MACHINE" >"$RFS/etc/hostname"
# Pebble resolves names through pebble-challtestsrv (below); inside, the
# name is the container itself.
printf '127.0.0.1 localhost %s\n' "$NAME" >"$RFS/etc/hosts"

# ---------------------------------------------------------------------------
# Container control. Without a systemd on this machine there is no
# machined to register with (--register=no) and no unit to put the
# container's scope in (--keep-unit keeps it in this process's cgroup).
boot() { # boot N
  log "systemd-nspawn --boot (boot $1)"
  systemd-nspawn --boot --register=no --keep-unit --console=pipe \
    --directory="$RFS" --machine="$MACHINE" \
    </dev/null >"$WORK/boot-$1.log" 2>&1 &
  NSPAWN_PID=$!
  local i
  LEADER=""
  for i in $(seq 100); do
    LEADER=$(pgrep -P "$NSPAWN_PID" | head -n 1 || true)
    [[ -n $LEADER && $(cat "/proc/$LEADER/comm" 2>/dev/null) == systemd ]] && break
    LEADER=""
    kill -0 "$NSPAWN_PID" 2>/dev/null || break
    sleep 0.2
  done
  [[ -n $LEADER ]] || { tail -30 "$WORK/boot-$1.log" >&2; fail "systemd-nspawn did not start systemd as the container's PID 1"; }
  # systemctl cannot connect until PID 1 has set up its private socket.
  local state deadline=$(($(date +%s) + 120))
  while :; do
    state=$(in_c timeout 120 systemctl is-system-running --wait 2>&1 || true)
    [[ $state == *"Failed to connect"* && $(date +%s) -lt $deadline ]] || break
    sleep 0.5
  done
  case $state in
    running) ;;
    degraded) log "boot $1 finished degraded: $(in_c systemctl --failed --no-legend --plain | tr '\n' ';')" ;;
    *) tail -30 "$WORK/boot-$1.log" >&2; fail "the container did not finish booting (systemctl is-system-running: $state)" ;;
  esac
  ok "boot $1: systemd is PID 1 in the container and reached $state"
}
in_c() { # in_c COMMAND...: run in the container (its mount, PID, UTS, IPC namespaces)
  nsenter --target "$LEADER" --mount --uts --ipc --pid -- \
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"
}
stop_container() {
  [[ -n $NSPAWN_PID ]] || return 0
  if kill -0 "$NSPAWN_PID" 2>/dev/null; then
    in_c systemctl poweroff >/dev/null 2>&1 || kill -TERM "$NSPAWN_PID" 2>/dev/null || true
    local i
    for i in $(seq 150); do
      kill -0 "$NSPAWN_PID" 2>/dev/null || break
      sleep 0.2
    done
    kill -0 "$NSPAWN_PID" 2>/dev/null && kill -KILL "$NSPAWN_PID" 2>/dev/null
  fi
  wait "$NSPAWN_PID" 2>/dev/null || true
  NSPAWN_PID="" LEADER=""
}
cf() { # cf ARGS...: the installed operator CLI, JSON output
  in_c env CERTFLEET_CONTROLLER="127.0.0.1:$P_CTL" \
    CERTFLEET_CREDENTIAL=/var/lib/certfleet/admin.credential \
    certfleet --output json "$@"
}
served() { # served PORT: SHA-256 of the leaf served there for $NAME
  openssl s_client -connect "127.0.0.1:$1" -servername "$NAME" </dev/null 2>/dev/null \
    | openssl x509 -outform DER 2>/dev/null | sha256sum | cut -d' ' -f1
}
wait_until() { # wait_until SECONDS DESCRIPTION COMMAND...
  local secs=$1 what=$2 deadline
  shift 2
  deadline=$(($(date +%s) + secs))
  until "$@" >/dev/null 2>&1; do
    [[ $(date +%s) -lt $deadline ]] || fail "$what (not after ${secs}s)"
    sleep 1
  done
  ok "$what"
}

boot 1

# ---------------------------------------------------------------------------
# 2. web servers at docs/agent.md's paths, with placeholder certificates
log "configuring nginx, apache2, haproxy"
in_c sh -euc '
  mk() { mkdir -p "$(dirname "$1")"
         openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
           -subj "/CN=placeholder $3" -addext "subjectAltName=DNS:'"$NAME"'" \
           -keyout "$2" -out "$1" 2>/dev/null; }
  mk /etc/nginx/tls/'"$NAME"'/fullchain.pem /etc/nginx/tls/'"$NAME"'/privkey.pem nginx
  mk /etc/apache2/tls/www/cert.pem /etc/apache2/tls/www/privkey.pem apache
  cp /etc/apache2/tls/www/cert.pem /etc/apache2/tls/www/chain.pem
  mkdir -p /etc/haproxy/certs
  mk /tmp/h.crt /tmp/h.key haproxy
  cat /tmp/h.crt /tmp/h.key >/etc/haproxy/certs/www.pem
  chgrp haproxy /etc/haproxy/certs/www.pem; chmod 0640 /etc/haproxy/certs/www.pem
'
cat >"$RFS/etc/nginx/sites-available/default" <<EOF
server {
    listen 127.0.0.1:$P_NGINX ssl;
    server_name $NAME;
    ssl_certificate /etc/nginx/tls/$NAME/fullchain.pem;
    ssl_certificate_key /etc/nginx/tls/$NAME/privkey.pem;
    location / { return 200 "nginx\n"; }
}
# HTTP-01: the webroot of docs/issuers.md, where Pebble's VA connects.
server {
    listen 127.0.0.1:$P_HTTP;
    server_name $NAME;
    root /var/www/html;
}
EOF
printf 'Listen 127.0.0.1:%s\n' "$P_APACHE" >"$RFS/etc/apache2/ports.conf"
cat >"$RFS/etc/apache2/sites-available/000-default.conf" <<EOF
<VirtualHost 127.0.0.1:$P_APACHE>
    ServerName $NAME
    SSLEngine on
    SSLCertificateFile /etc/apache2/tls/www/cert.pem
    SSLCertificateChainFile /etc/apache2/tls/www/chain.pem
    SSLCertificateKeyFile /etc/apache2/tls/www/privkey.pem
</VirtualHost>
EOF
cat >>"$RFS/etc/haproxy/haproxy.cfg" <<EOF

frontend www
    bind 127.0.0.1:$P_HAPROXY ssl crt /etc/haproxy/certs/www.pem
    http-request return status 200 content-type text/plain string haproxy
EOF
in_c a2enmod -q ssl >/dev/null
for unit in nginx apache2 haproxy; do
  in_c systemctl restart "$unit" || fail "$unit does not start in the container: $(in_c systemctl status --no-pager "$unit" 2>&1 | tail -5)"
done
for port in "$P_NGINX" "$P_APACHE" "$P_HAPROXY"; do
  wait_until 20 "port $port serves TLS (placeholder)" test -n "$(served "$port" | grep -v e3b0c442)"
done

# ---------------------------------------------------------------------------
# 3. the packages, installed with dpkg inside, the units as shipped
log "dpkg -i both packages"
in_c sh -c 'DEBIAN_FRONTEND=noninteractive dpkg -i /root/pkgs/*.deb' >"$WORK/dpkg.log" 2>&1 \
  || { cat "$WORK/dpkg.log" >&2; fail "dpkg -i of the two .debs failed inside the container"; }
ok "dpkg -i certfleet-agent and certfleet inside the booted container"
for unit in certfleet certfleet-agent; do
  [[ $(in_c systemctl is-enabled "$unit") == enabled ]] || fail "$unit.service is not enabled after dpkg -i"
done
ok "both units enabled by the packages"
# The controller's addresses: /etc/certfleet/controller.toml, as its unit says.
sed -i "s/^listen = .*/listen = \"127.0.0.1:$P_CTL\"/; s/^crl_listen = .*/crl_listen = \"127.0.0.1:$P_CRL\"/" \
  "$RFS/etc/certfleet/controller.toml"
in_c systemctl start certfleet || fail "systemctl start certfleet failed"
wait_until 30 "certfleet.service (as shipped) is active and wrote its admin credential" \
  in_c test -s /var/lib/certfleet/admin.credential
wait_until 30 "the installed CLI reaches the controller" cf issuer list

# Pebble on this machine, resolving every name to 127.0.0.1.
PEB=$WORK/pebble
mkdir -p "$PEB"
(
  cd "$PEB"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj '/CN=certfleet package test Pebble TLS CA' -addext basicConstraints=critical,CA:TRUE \
    -addext keyUsage=critical,keyCertSign,cRLSign -keyout ca.key -out ca.pem 2>/dev/null
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
    -keyout tls.key -out tls.csr 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >ext.cnf
  openssl x509 -req -in tls.csr -CA ca.pem -CAkey ca.key -set_serial 2 -days 2 \
    -extfile ext.cnf -out tls.pem 2>/dev/null
) || fail "openssl could not make Pebble's TLS certificate"
cat >"$PEB/pebble.json" <<EOF
{"pebble": {"listenAddress": "127.0.0.1:$P_PEBBLE",
  "managementListenAddress": "127.0.0.1:$P_PEBBLE_MGMT",
  "certificate": "$PEB/tls.pem", "privateKey": "$PEB/tls.key",
  "httpPort": $P_HTTP, "tlsPort": $P_PEBBLE_TLS, "ocspResponderURL": "",
  "externalAccountBindingRequired": false}}
EOF
(cd "$PEB" && exec pebble-challtestsrv -dns01 "127.0.0.1:$P_DNS" -http01 "" -https01 "" \
  -tlsalpn01 "" -management "127.0.0.1:$P_CTS_MGMT" -defaultIPv4 127.0.0.1 -defaultIPv6 "" \
  >"$PEB/challtestsrv.log" 2>&1) &
BG_PIDS+=($!)
(cd "$PEB" && PEBBLE_VA_NOSLEEP=1 exec pebble -config "$PEB/pebble.json" -dnsserver "127.0.0.1:$P_DNS" \
  >"$PEB/pebble.log" 2>&1) &
BG_PIDS+=($!)
wait_until 30 "Pebble answers on this machine" curl -sf --cacert "$PEB/ca.pem" "https://127.0.0.1:$P_PEBBLE/dir"
cp "$PEB/ca.pem" "$RFS/root/pebble-tls-ca.pem"

# ---------------------------------------------------------------------------
# 4. the agent: config at docs/agent.md's paths, enrolled, started as shipped
mkdir -p "$RFS/srv/tls/app"
cat >"$RFS/etc/certfleet/agent.toml" <<EOF
controller = "127.0.0.1:$P_CTL"
state_dir = "/var/lib/certfleet-agent"
allowed_dirs = ["/etc/nginx/tls", "/etc/apache2/tls", "/etc/haproxy/certs", "/srv/tls"]

[labels]
role = "web"

[[target]]
name = "nginx"
kind = "nginx"
domains = ["$NAME"]
fullchain = "/etc/nginx/tls/$NAME/fullchain.pem"
key = "/etc/nginx/tls/$NAME/privkey.pem"
group = "www-data"
mode = "0640"
verify = "127.0.0.1:$P_NGINX"
nginx_config = "/etc/nginx/nginx.conf"
pid_file = "/run/nginx.pid"
webroot = "/var/www/html"

[[target]]
name = "apache"
kind = "apache"
domains = ["$NAME"]
cert = "/etc/apache2/tls/www/cert.pem"
chain = "/etc/apache2/tls/www/chain.pem"
key = "/etc/apache2/tls/www/privkey.pem"
verify = "127.0.0.1:$P_APACHE"
apachectl = "/usr/sbin/apachectl"

[[target]]
name = "haproxy"
kind = "haproxy"
domains = ["$NAME"]
combined = "/etc/haproxy/certs/www.pem"
group = "haproxy"
mode = "0640"
verify = "127.0.0.1:$P_HAPROXY"
haproxy_config = "/etc/haproxy/haproxy.cfg"
pid_file = "/run/haproxy.pid"
reload_mode = "runtime"
runtime_socket = "/run/haproxy/admin.sock"
runtime_fallback = "reload"

# Outside the unit's ReadWritePaths until the drop-in below.
[[target]]
name = "app"
kind = "files"
domains = ["$NAME"]
fullchain = "/srv/tls/app/fullchain.pem"
key = "/srv/tls/app/privkey.pem"
EOF
# check-config, run by the operator outside the sandbox, warns about the
# path the unit leaves read-only (it reads the unit's merged settings).
check_out=$(in_c certfleet-agent check-config 2>&1) || fail "check-config refused the config: $check_out"
grep -q '/srv/tls/app would not be writable by certfleet-agent.service' <<<"$check_out" \
  || fail "check-config does not warn that /srv/tls/app is read-only in certfleet-agent.service: $check_out"
grep -q 'ReadWritePaths=/srv/tls/app' <<<"$check_out" \
  || fail "check-config's warning does not name the drop-in: $check_out"
grep -q '/etc/nginx/tls.* would not be writable' <<<"$check_out" \
  && fail "check-config warns about /etc/nginx/tls, which the shipped unit allows: $check_out"
ok "check-config warns that /srv/tls/app is read-only under the unit, and names the drop-in"

tok=$(cf agent token create --labels role=web) || fail "agent token create failed"
in_c certfleet-agent enroll --controller "127.0.0.1:$P_CTL" --token "$(jq -r .token <<<"$tok")" \
  --ca-pin "$(jq -r .ca_pin <<<"$tok")" >/dev/null 2>"$WORK/enroll.err" \
  || fail "certfleet-agent enroll failed: $(cat "$WORK/enroll.err")"
in_c systemctl start certfleet-agent || fail "systemctl start certfleet-agent failed"
agent_connected() { [[ $(cf agent list | jq '[.[] | select(.connected)] | length') -eq 1 ]]; }
wait_until 30 "certfleet-agent.service (as shipped) connected to the controller" agent_connected
AGENT=$(cf agent list | jq -r '.[0].id')

# ---------------------------------------------------------------------------
# 5. HTTP-01 through the webroot, deploy to nginx, Apache, HAProxy
cf issuer add pebble --kind acme --directory "https://127.0.0.1:$P_PEBBLE/dir" \
  --ca-bundle /root/pebble-tls-ca.pem --contact mailto:ops@pkg.test --challenge http-01 >/dev/null \
  || fail "issuer add pebble failed"
inst=$(cf instance create --issuer pebble --domains 1 | jq -r .id)
app=$(cf cert apply --instance "$inst" --domain "$NAME" --challenge http-01 --wait 2>"$WORK/apply.err") \
  || fail "cert apply over HTTP-01 through /var/www/html failed: $(cat "$WORK/apply.err")"
CERT=$(jq -r .certificate <<<"$app")
[[ $(jq -r .state <<<"$app") == issued ]] || fail "application did not end issued: $app"
ok "Pebble validated HTTP-01 through the agent's webroot /var/www/html ($CERT)"
left=$(find "$RFS/var/www/html/.well-known/acme-challenge" -type f 2>/dev/null | wc -l)
[[ $left -eq 0 ]] || fail "$left challenge files left in /var/www/html/.well-known/acme-challenge"
ok "challenge files removed from the webroot"
FP1=$(cf cert show "$CERT" | jq -r .fingerprint)

deploy() { # deploy CERT TARGET
  local out
  out=$(cf deploy "$1" --to "agent=$AGENT" --target "$2" --wait 2>&1) || true
  printf '%s\n' "$out"
}
for target in nginx apache haproxy; do
  out=$(deploy "$CERT" "$target")
  status=$(cf deployment list --cert "$CERT" | jq -r --arg t "$target" '.[] | select(.target == $t) | .status')
  [[ $status == installed ]] || fail "deploy to $target: status '$status': $out"
  ok "deployed to $target through the shipped unit"
done
for pair in nginx:$P_NGINX apache:$P_APACHE haproxy:$P_HAPROXY; do
  [[ $(served "${pair#*:}") == "$FP1" ]] || fail "${pair%%:*} does not serve the deployed certificate"
  ok "openssl s_client: ${pair%%:*} serves the deployed certificate"
done

# ---------------------------------------------------------------------------
# 6. a path outside ReadWritePaths, then the drop-in
out=$(deploy "$CERT" app)
err=$(cf deployment list --cert "$CERT" | jq -r '.[] | select(.target == "app") | .last_error // ""')
grep -q 'Read-only file system' <<<"$err" || fail "install into /srv/tls/app: no read-only file system error: $err $out"
grep -q 'systemctl edit certfleet-agent' <<<"$err" && grep -q 'ReadWritePaths=/srv/tls/app' <<<"$err" \
  || fail "install error into /srv/tls/app does not name the drop-in: $err"
ok "install outside ReadWritePaths fails naming the read-only file system and the drop-in"
# The drop-in exactly as docs/packaging.md says: `systemctl edit
# certfleet-agent` (which writes override.conf and reloads), with an
# "editor" that writes the two lines; systemctl edit insists on a terminal,
# so script(1) gives it one.
printf '#!/bin/sh\nprintf "[Service]\\nReadWritePaths=/srv/tls\\n" >"$1"\n' >"$RFS/root/write-drop-in"
chmod 0755 "$RFS/root/write-drop-in"
in_c env TERM=dumb SYSTEMD_EDITOR=/root/write-drop-in script -qec 'systemctl edit certfleet-agent' /dev/null \
  </dev/null >"$WORK/edit.log" 2>&1 || fail "systemctl edit certfleet-agent failed: $(cat "$WORK/edit.log")"
in_c systemctl show certfleet-agent -p ReadWritePaths | grep -q ' /srv/tls$' \
  || fail "after systemctl edit, ReadWritePaths= does not end with /srv/tls"
ok "systemctl edit certfleet-agent added ReadWritePaths=/srv/tls"
in_c systemctl restart certfleet-agent
check_out=$(in_c certfleet-agent check-config 2>&1) || fail "check-config after the drop-in: $check_out"
grep -q 'not be writable' <<<"$check_out" && fail "check-config still warns after the drop-in: $check_out"
ok "check-config stops warning once the drop-in allows /srv/tls"
wait_until 30 "agent reconnected after the restart" agent_connected
out=$(deploy "$CERT" app)
wait_until 60 "with the drop-in, the install into /srv/tls/app succeeds" \
  test "$(cf deployment list --cert "$CERT" | jq -r '.[] | select(.target == "app") | .status')" = installed
[[ $(openssl x509 -in "$RFS/srv/tls/app/fullchain.pem" -outform DER | sha256sum | cut -d' ' -f1) == "$FP1" ]] \
  || fail "/srv/tls/app/fullchain.pem is not the deployed certificate"
ok "/srv/tls/app/fullchain.pem holds the deployed certificate"

# ---------------------------------------------------------------------------
# 7. discovery
cf inventory scan >/dev/null 2>&1 || true
has_sources() {
  local inv
  inv=$(cf inventory list) || return 1
  for s in nginx apache haproxy; do
    jq -e --arg s "$s" '[.items[] | select(.entry.source == $s)] | length > 0' <<<"$inv" >/dev/null || return 1
  done
}
wait_until 60 "inventory list shows certificates discovered in nginx, Apache and HAProxy" has_sources

# ---------------------------------------------------------------------------
# 8. renewal, rolled out to all three (HTTP-01 again)
# A renewal takes a fresh instance of the same spec (a purchased slot).
cf instance create --issuer pebble --domains 1 >/dev/null || fail "instance create for the renewal failed"
cf cert renew "$CERT" >"$WORK/renew.json" 2>"$WORK/renew.err" || fail "cert renew failed: $(cat "$WORK/renew.err")"
renewed() {
  local fp
  fp=$(served "$P_NGINX")
  [[ $fp != "$FP1" && $fp != e3b0c442* ]] || return 1
  [[ $(served "$P_APACHE") == "$fp" && $(served "$P_HAPROXY") == "$fp" ]]
}
wait_until 120 "after cert renew, nginx, Apache and HAProxy all serve one new certificate" renewed
FP2=$(served "$P_NGINX")
cf cert list | jq -e --arg fp "$FP2" '[.[] | select(.fingerprint == $fp)] | length == 1' >/dev/null \
  || fail "the served renewed certificate $FP2 is not in cert list"
ok "the served renewed certificate is the controller's"

# ---------------------------------------------------------------------------
# 9. systemd-analyze security, inside the booted container
for unit in certfleet certfleet-agent; do
  score=$(in_c systemd-analyze security --no-pager "$unit" 2>&1 | sed -n 's/.*Overall exposure level for [^:]*: //p')
  [[ -n $score ]] || fail "systemd-analyze security $unit printed no exposure level"
  log "systemd-analyze security $unit: $score"
done

# ---------------------------------------------------------------------------
# 10. restart the container
log "powering the container off"
stop_container
ok "container powered off"
boot 2
for unit in certfleet certfleet-agent nginx apache2 haproxy; do
  wait_until 30 "after the restart, $unit is active" in_c systemctl is-active --quiet "$unit"
done
wait_until 60 "after the restart, the agent reconnected" agent_connected
for pair in nginx:$P_NGINX apache:$P_APACHE haproxy:$P_HAPROXY; do
  [[ $(served "${pair#*:}") == "$FP2" ]] || fail "after the restart ${pair%%:*} does not serve the renewed certificate"
done
ok "after the restart, all three still serve the renewed certificate"
stop_container

printf '%d systemd host checks passed in %ds\n' "$TESTS" "$(($(date +%s) - START))"
