#!/usr/bin/env bash
# Installs what the agent and its tests need on Debian: coturn (turnserver,
# turnadmin, turnutils_*), ZooKeeper (brings Java), systemd-analyze, curl and
# openssl.
# Does nothing when everything is already there. Needs root for apt-get.
set -euo pipefail

missing=()
for tool in turnserver turnadmin turnutils_uclient turnutils_stunclient; do
  command -v "$tool" >/dev/null 2>&1 || missing+=(coturn)
done
[ -f /usr/share/java/zookeeper.jar ] && command -v java >/dev/null 2>&1 || missing+=(zookeeper)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
# Independent clients used by the tests: curl (HTTPS) and openssl (test certificates).
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# The agent links Debian's libsqlite3 (rusqlite) for the user database; the
# tests read it with the sqlite3 client.
[ -f /usr/include/sqlite3.h ] || missing+=(libsqlite3-dev)
command -v sqlite3 >/dev/null 2>&1 || missing+=(sqlite3)
# Headless browser for the fleet page test.
command -v chromium >/dev/null 2>&1 || missing+=(chromium)

if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi
packages=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
echo "install-deps: installing ${packages}" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# Package scripts must not start services here: the agent runs turnserver
# itself and tests start their own ZooKeeper.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
  $sudo chmod +x "$policy"
  trap '$sudo rm -f "$policy"' EXIT
fi
# shellcheck disable=SC2086
$sudo apt-get install -y -qq --no-install-recommends $packages >/dev/null
