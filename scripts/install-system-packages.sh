#!/usr/bin/env bash
# Install the Debian packages the demo and the tests need, only when they are missing:
# OpenLDAP's slapd and client tools (the demo directory and the LDAP source tests), and Samba
# as an AD domain controller (the Active Directory tests; samba-ad-provision holds the AD schema).
set -euo pipefail

missing=()
command -v slapd >/dev/null 2>&1 || [ -x /usr/sbin/slapd ] || missing+=(slapd)
command -v ldapadd >/dev/null 2>&1 || missing+=(ldap-utils)
command -v samba-tool >/dev/null 2>&1 || missing+=(samba)
command -v samba >/dev/null 2>&1 || [ -x /usr/sbin/samba ] || missing+=(samba-ad-dc)
[ -d /usr/share/samba/setup/ad-schema ] || missing+=(samba-ad-provision)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${missing[*]}; install them as root: apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
