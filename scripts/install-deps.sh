#!/usr/bin/env bash
# Installs what vigil's build, demo and tests need on Debian 12, as root.
# Idempotent: installs only the packages that are missing, and never leaves the
# distribution's own MariaDB service running (vigil's nodes use their own ports).
set -euo pipefail

packages=(
  mariadb-server mariadb-client galera-4 galera-arbitrator-4 mariadb-backup # engine, arbitrator, SST
  socat iproute2 lsof pv                                  # used by the mariabackup SST script
  rsync                                                   # vigil bench sync compares against it
  protobuf-compiler                                       # build: etcd client
  etcd-server                                             # coordination store (multi-host)
  iptables util-linux                                     # test hosts in namespaces (nsenter), faults
  sysbench haproxy pen                                    # benchmarks against alternatives
  build-essential pkg-config ca-certificates curl         # build
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
else
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing packages (${missing[*]}); run this script as root" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}"
  # Keep Debian from starting the packaged mariadb/etcd/haproxy services: vigil runs its own.
  # A policy-rc.d that already exists is the administrator's and is left alone.
  own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
  fi
  trap '[ $own_policy -eq 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The packages put galera in /usr/lib/galera; vigil looks there unless the config says otherwise.
test -e /usr/lib/galera/libgalera_smm.so || { echo "install-deps: galera-4 provider not found" >&2; exit 1; }

# Rust: Debian 12's cargo is too old for this workspace; use rustup's stable toolchain.
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: installing the Rust toolchain with rustup"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
fi
# Components used by CI (fmt, clippy).
if command -v rustup >/dev/null 2>&1; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi
