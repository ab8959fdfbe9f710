#!/usr/bin/env bash
# Stages the base image's root filesystem in docker/build/rootfs/ from this machine:
# the release binary, the dynamic loader and the C libraries the binary and apps load
# (apps are dlopen'ed, so the image needs the C library they were linked against), a user
# to run as, /tmp, the defaults file, and the app SDK. `make image` runs it; no registry
# is needed.
set -euo pipefail
cd "$(dirname "$0")/.."

binary=target/release/microservice-rust
rootfs=docker/build/rootfs
rm -rf "$rootfs"
mkdir -p "$rootfs"/{usr/local/bin,etc/microservice-rust,opt,tmp}
chmod 1777 "$rootfs/tmp"

install -m 0755 "$binary" "$rootfs/usr/local/bin/microservice-rust"
strip "$rootfs/usr/local/bin/microservice-rust" 2>/dev/null || true
install -m 0644 config.json "$rootfs/etc/microservice-rust/config.json"
# The app SDK and the C header at fixed paths, for `COPY --from=microservice-rust` in an
# app's build stage (the Dockerfile `microservice-rust new` writes does that).
mkdir -p "$rootfs/usr/local/share/microservice-rust" "$rootfs/usr/local/include"
"$binary" sdk "$rootfs/usr/local/share/microservice-rust/sdk" >/dev/null
install -m 0644 include/microservice_rust.h "$rootfs/usr/local/include/microservice_rust.h"

# The binary's own libraries (ldd), plus the ones apps commonly link: libm, libdl,
# libpthread, librt, libgcc_s (Rust cdylibs link libgcc_s for unwinding).
libraries=$(ldd "$binary" | awk '/=> \// {print $3} /^\s*\/.*ld-linux/ {print $1}')
libdir=$(dirname "$(ldd "$binary" | awk '/libc.so/ {print $3}')")
for extra in libm.so.6 libdl.so.2 libpthread.so.0 librt.so.1 libgcc_s.so.1; do
    [ -e "$libdir/$extra" ] && libraries="$libraries $libdir/$extra"
done
for library in $libraries; do
    mkdir -p "$rootfs$(dirname "$library")"
    cp -L "$library" "$rootfs$library"
done
# The loader is also reached as /lib64/…: keep the path the binary names.
interpreter=$(readelf -l "$binary" | sed -n 's/.*interpreter: \(.*\)]/\1/p')
if [ -n "$interpreter" ] && [ ! -e "$rootfs$interpreter" ]; then
    mkdir -p "$rootfs$(dirname "$interpreter")"
    cp -L "$interpreter" "$rootfs$interpreter"
fi

cat >"$rootfs/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
microservice:x:10001:10001:microservice-rust:/nonexistent:/sbin/nologin
PASSWD
cat >"$rootfs/etc/group" <<'GROUP'
root:x:0:
microservice:x:10001:
GROUP
echo "hosts: files dns" >"$rootfs/etc/nsswitch.conf"

echo "staged $(du -sh "$rootfs" | cut -f1) in $rootfs:"
(cd "$rootfs" && find . -type f | sort | sed 's/^\./  /')
