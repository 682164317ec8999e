#!/usr/bin/env bash
# Install what the local stack needs on a Debian 12 machine, skipping whatever is already there:
# PostgreSQL 15 server + headers, Mosquitto, build tools, and the TimescaleDB extension (Apache
# edition) built from Debian trixie's `timescaledb` source package against PostgreSQL 15.
#
# The trixie source is fetched with `apt-get source` through a private sources list and private
# state dirs, so the system's apt configuration is never touched. The mirror is the one this
# machine's apt already uses (read from its sources), only the suite changes.
set -euo pipefail

PG_MAJOR="${WULIAN_PG_MAJOR:-15}"
CACHE="${WULIAN_STACK_CACHE:-$(cd "$(dirname "$0")/../.." && pwd)/.stack/cache}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

log() { printf '[install] %s\n' "$*" >&2; }

need_pkgs=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
# chromium: headless browser of the tests that render pages (tests/browser.py); fonts-wqy-microhei: a CJK
# font, without which Chromium draws the Chinese of /public/air as boxes; nats-server: cluster mode
# (`wulian cluster up`; Debian 12 ships 2.9, with JetStream and clustering)
for p in "postgresql-$PG_MAJOR" "postgresql-server-dev-$PG_MAJOR" mosquitto mosquitto-clients \
         nats-server build-essential cmake dpkg-dev libssl-dev libkrb5-dev chromium fonts-wqy-microhei; do
  have_pkg "$p" || need_pkgs+=("$p")
done
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  log "apt-get install ${need_pkgs[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

PG_CONFIG="/usr/lib/postgresql/$PG_MAJOR/bin/pg_config"
EXT_DIR="$("$PG_CONFIG" --sharedir)/extension"
if ls "$EXT_DIR"/timescaledb--*.sql >/dev/null 2>&1 && [ -e "$("$PG_CONFIG" --pkglibdir)/timescaledb.so" ]; then
  log "timescaledb already installed for PostgreSQL $PG_MAJOR"
  exit 0
fi

# Private apt configuration for the trixie source package.
mirror=""
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
  mirror="$(awk '/^URIs:/ {for (i=2;i<=NF;i++) if ($i !~ /security/) {print $i; exit}}' /etc/apt/sources.list.d/debian.sources)"
fi
if [ -z "$mirror" ] && [ -f /etc/apt/sources.list ]; then
  mirror="$(awk '$1=="deb" && $0 !~ /security/ {for (i=2;i<=NF;i++) if ($i ~ /^(http|https|ftp):/) {print $i; exit}}' /etc/apt/sources.list)"
fi
[ -n "$mirror" ] || { log "cannot find this machine's Debian mirror in its apt sources"; exit 1; }

APTDIR="$CACHE/apt"
mkdir -p "$APTDIR/lists/partial" "$APTDIR/archives/partial" "$CACHE/src"
cat > "$APTDIR/sources.list" <<SRC
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main
SRC
APT_OPTS=(-o "Dir::Etc::SourceList=$APTDIR/sources.list" -o "Dir::Etc::SourceParts=/nonexistent"
          -o "Dir::State::Lists=$APTDIR/lists" -o "Dir::Cache=$APTDIR" -o "APT::Sandbox::User=root")
log "fetching trixie's timescaledb source package"
apt-get "${APT_OPTS[@]}" update -qq
(cd "$CACHE/src" && apt-get "${APT_OPTS[@]}" source -qq timescaledb >/dev/null)
SRC_DIR="$(find "$CACHE/src" -maxdepth 1 -type d -name 'timescaledb-*' | sort | tail -n 1)"
[ -n "$SRC_DIR" ] || { log "timescaledb source not unpacked"; exit 1; }

log "building $(basename "$SRC_DIR") (Apache edition) against PostgreSQL $PG_MAJOR"
cd "$SRC_DIR"
rm -rf build
./bootstrap -DPG_CONFIG="$PG_CONFIG" -DAPACHE_ONLY=ON -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF \
  -DWARNINGS_AS_ERRORS=OFF -DSEND_TELEMETRY_DEFAULT=NO -DCMAKE_BUILD_TYPE=Release >/dev/null
make -C build -j"$(nproc)" >/dev/null
$SUDO make -C build install >/dev/null
log "timescaledb installed into $EXT_DIR"
