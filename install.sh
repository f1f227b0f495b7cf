#!/bin/sh
# Installs a release build of tiermalloc under a prefix:
#
#     cargo build --release && sh install.sh /usr/local
#
# PREFIX/lib:     libtiermalloc.so.VERSION, the soname link libtiermalloc.so.MAJOR, the link
#                 libtiermalloc.so (for -ltiermalloc), libtiermalloc.a, pkgconfig/tiermalloc.pc
# PREFIX/include: tiermalloc.h, tiermalloc_pmr.hpp (C++17 std::pmr resource)
# PREFIX/bin:     tiermalloc (the command; it finds the library in PREFIX/lib)
# PREFIX/share/man: tiermalloc.1, tiermalloc.3
#
# DESTDIR is honoured (packaging). TIERMALLOC_BUILD_DIR names another build directory than
# target/release (the tests install a debug build this way).
set -eu
prefix=${1:-/usr/local}
case $prefix in
/*) ;;
*) echo "install.sh: the prefix must be an absolute path: $prefix" >&2; exit 1 ;;
esac
src=$(cd "$(dirname "$0")" && pwd)
build=${TIERMALLOC_BUILD_DIR:-$src/target/release}
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$src/Cargo.toml" | head -n 1)
major=${version%%.*}
for f in libtiermalloc.so tiermalloc; do
    if [ ! -f "$build/$f" ]; then
        echo "install.sh: $build/$f is missing; run cargo build --release first" >&2
        exit 1
    fi
done
dest=${DESTDIR:-}$prefix
install -d "$dest/lib/pkgconfig" "$dest/include" "$dest/bin" \
    "$dest/share/man/man1" "$dest/share/man/man3"
install -m 755 "$build/libtiermalloc.so" "$dest/lib/libtiermalloc.so.$version"
ln -sf "libtiermalloc.so.$version" "$dest/lib/libtiermalloc.so.$major"
ln -sf "libtiermalloc.so.$major" "$dest/lib/libtiermalloc.so"
if [ -f "$build/libtiermalloc.a" ]; then
    install -m 644 "$build/libtiermalloc.a" "$dest/lib/libtiermalloc.a"
fi
install -m 755 "$build/tiermalloc" "$dest/bin/tiermalloc"
install -m 644 "$src/include/tiermalloc.h" "$src/include/tiermalloc_pmr.hpp" "$dest/include/"
sed -e "s|@PREFIX@|$prefix|" -e "s|@VERSION@|$version|" "$src/tiermalloc.pc.in" \
    > "$dest/lib/pkgconfig/tiermalloc.pc"
chmod 644 "$dest/lib/pkgconfig/tiermalloc.pc"
install -m 644 "$src/man/tiermalloc.1" "$dest/share/man/man1/tiermalloc.1"
install -m 644 "$src/man/tiermalloc.3" "$dest/share/man/man3/tiermalloc.3"
echo "tiermalloc $version installed under $dest"
