#!/usr/bin/env bash
# Stages the Python image's two layers in docker/python/build/ (no registry is needed):
#
# * base.tar: Debian bookworm (debootstrap minbase, from the mirror apt uses here) with
#   python3 and libpython3.11 (the library the Python host was built against), security
#   updates applied, pruned like a slim image, the user 10001 and a virtualenv in /opt/venv
#   that the user owns (so an app's Dockerfile can `RUN pip install` without `USER root`).
#   Slow to make (a few minutes), so it is kept and remade only when this script changes;
#   `rm -rf docker/python/build` takes the newest Debian packages.
# * rootfs/: the server's own files, remade every time: the release binary, the Python host
#   library where the binary looks for it (../lib/microservice-rust/), the defaults file;
#   and the CA certificates (*.crt) in the directory EXTRA_CAS, if it is set, trusted beside
#   Debian's: behind a TLS-intercepting proxy, pip in an app's Dockerfile needs its CA.
#
# `make image-python` runs it, as root (debootstrap and chroot need it).
set -euo pipefail
script=$(realpath "$0")
cd "$(dirname "$script")/../.."

suite=bookworm
packages=python3,python3-venv,libpython3.11,ca-certificates
build=docker/python/build
base=$build/base.tar
stamp=$build/base.stamp
rootfs=$build/rootfs
binary=target/release/microservice-rust
host=target/release/libmicroservice_rust_python.so

# The URI apt uses for `suite` (deb822 .sources or one-line .list), else deb.debian.org.
mirror_for() {
    local suite=$1 found
    found=$(awk -v suite="$suite" '
        /^URIs:/ { uri = $2 }
        /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) { print uri; exit } }
        /^deb / { for (i = 2; i < NF; i++) if ($i !~ /^\[/ && $(i + 1) == suite) { print $i; exit } }
    ' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
        2>/dev/null | head -n 1)
    case $suite in
        *-security) echo "${found:-http://deb.debian.org/debian-security}" ;;
        *) echo "${found:-http://deb.debian.org/debian}" ;;
    esac
}

make_base() {
    local dir=$build/base mirror security
    mirror=$(mirror_for "$suite")
    security=$(mirror_for "$suite-security")
    command -v debootstrap >/dev/null || { echo "apt-get install debootstrap"; exit 1; }
    rm -rf "$dir"
    mkdir -p "$dir" "$build/debs"
    echo "debootstrap $suite from $mirror (security updates from $security)"
    debootstrap --variant=minbase --include="$packages" --cache-dir="$PWD/$build/debs" \
        "$suite" "$dir" "$mirror" >"$build/debootstrap.log" 2>&1 \
        || { tail -n 20 "$build/debootstrap.log"; exit 1; }

    cat >"$dir/etc/apt/sources.list" <<SOURCES
deb $mirror $suite main
deb $mirror $suite-updates main
deb $security $suite-security main
SOURCES
    # What slim images leave out, also for the packages an app's Dockerfile installs.
    cat >"$dir/etc/dpkg/dpkg.cfg.d/microservice-rust-slim" <<'EXCLUDES'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EXCLUDES
    echo 'APT::Install-Recommends "false";' >"$dir/etc/apt/apt.conf.d/90microservice-rust"
    mount -t proc proc "$dir/proc"
    trap 'umount "$PWD/$build/base/proc" 2>/dev/null || true' EXIT
    chroot "$dir" sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
        apt-get upgrade -y -qq -o Dpkg::Options::=--force-confold' \
        >>"$build/debootstrap.log" 2>&1 || { tail -n 20 "$build/debootstrap.log"; exit 1; }

    chroot "$dir" groupadd --gid 10001 microservice
    chroot "$dir" useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin --comment microservice-rust microservice
    # The image's own python makes the virtualenv, as the user who will own it.
    install -d -o 10001 -g 10001 "$dir/opt/venv"
    chroot --userspec=10001:10001 "$dir" env HOME=/tmp /usr/bin/python3 -m venv /opt/venv
    chroot --userspec=10001:10001 "$dir" /opt/venv/bin/pip --version
    umount "$dir/proc"
    trap - EXIT

    chroot "$dir" apt-get clean
    rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*.bin "$dir"/var/cache/debconf/*-old \
        "$dir"/var/lib/dpkg/*-old "$dir"/var/log/* "$dir"/tmp/* "$dir"/root/.cache \
        "$dir"/usr/share/man/* "$dir"/usr/share/info/* "$dir"/usr/share/locale/* \
        "$dir"/usr/share/lintian/* "$dir"/etc/resolv.conf "$dir"/etc/hostname
    find "$dir/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    find "$dir/usr/share/doc" -mindepth 1 -type d -empty -delete
    chmod 1777 "$dir/tmp"

    tar --numeric-owner -C "$dir" -cf "$base.partial" .
    mv "$base.partial" "$base"
    rm -rf "$dir"
    sha256sum "$script" | cut -d' ' -f1 >"$stamp"
    echo "base: $(du -sh "$base" | cut -f1) in $base ($(tar -xOf "$base" ./var/lib/dpkg/status \
        | grep -c '^Package:') Debian packages)"
}

mkdir -p "$build"
if [ -f "$base" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$(sha256sum "$script" | cut -d' ' -f1)" ]; then
    echo "base: reusing $base (rm -rf $build to remake it)"
else
    make_base
fi

rm -rf "$rootfs"
mkdir -p "$rootfs"/{usr/local/bin,usr/local/lib/microservice-rust,etc/microservice-rust}
install -m 0755 "$binary" "$rootfs/usr/local/bin/microservice-rust"
strip "$rootfs/usr/local/bin/microservice-rust"
install -m 0755 "$host" "$rootfs/usr/local/lib/microservice-rust/libmicroservice_rust_python.so"
strip --strip-unneeded "$rootfs/usr/local/lib/microservice-rust/libmicroservice_rust_python.so"
install -m 0644 config.json "$rootfs/etc/microservice-rust/config.json"
# What update-ca-certificates would make of them, with the .crt files where it looks, so
# that an app image that runs it again keeps them.
extra_cas=$(find "${EXTRA_CAS:-/nonexistent}" -maxdepth 1 -name '*.crt' -type f 2>/dev/null | sort)
if [ -n "$extra_cas" ]; then
    mkdir -p "$rootfs/usr/local/share/ca-certificates" "$rootfs/etc/ssl/certs"
    tar -xOf "$base" ./etc/ssl/certs/ca-certificates.crt >"$rootfs/etc/ssl/certs/ca-certificates.crt"
    for ca in $extra_cas; do
        install -m 0644 "$ca" "$rootfs/usr/local/share/ca-certificates/"
        cat "$ca" >>"$rootfs/etc/ssl/certs/ca-certificates.crt"
        echo "trusting $(openssl x509 -noout -subject -in "$ca" 2>/dev/null || echo "$ca") (from EXTRA_CAS=$EXTRA_CAS)"
    done
fi
echo "staged $(du -sh "$rootfs" | cut -f1) in $rootfs:"
(cd "$rootfs" && find . -type f | sort | sed 's/^\./  /')
