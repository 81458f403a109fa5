#!/usr/bin/env bash
# Builds ckpt in release mode and installs, under PREFIX (default
# /usr/local): bin/ckpt, lib/libckpt.so and lib/libckpt.a (the C
# interface), include/ckpt.h, and lib/pkgconfig/ckpt.pc, so that C
# programs build with `cc prog.c $(pkg-config --cflags --libs ckpt)`.
#   scripts/install.sh [PREFIX]      (PREFIX or $DESTDIR$PREFIX)
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${1:-${PREFIX:-/usr/local}}
dest=${DESTDIR:-}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
# The whole workspace: the ckpt binary, and the ckpt library's libckpt.so
# and libckpt.a (copied up into target/release only when it is built itself).
cargo build --release
install -d "$dest$prefix/bin" "$dest$prefix/lib/pkgconfig" "$dest$prefix/include"
install -m 0755 target/release/ckpt "$dest$prefix/bin/ckpt"
install -m 0755 target/release/libckpt.so "$dest$prefix/lib/libckpt.so"
install -m 0644 target/release/libckpt.a "$dest$prefix/lib/libckpt.a"
install -m 0644 include/ckpt.h "$dest$prefix/include/ckpt.h"
cat > "$dest$prefix/lib/pkgconfig/ckpt.pc" <<PC
prefix=$prefix
libdir=\${prefix}/lib
includedir=\${prefix}/include

Name: ckpt
Description: Checkpoint/restart of Linux processes (C interface)
Version: $version
Libs: -L\${libdir} -lckpt
Libs.private: -lpthread -ldl -lm
Cflags: -I\${includedir}
PC
# So that programs find libckpt.so without LD_LIBRARY_PATH.
if [ -z "$dest" ] && command -v ldconfig >/dev/null && [ "$(id -u)" = 0 ]; then
    ldconfig
fi
echo "installed $prefix/bin/ckpt, $prefix/lib/libckpt.{so,a}, $prefix/include/ckpt.h, $prefix/lib/pkgconfig/ckpt.pc"
