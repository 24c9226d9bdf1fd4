#!/usr/bin/env bash
# `make deb`: dist/edgeward_<version>_<arch>.deb for Debian 12 (amd64, or arm64 on an arm64 machine).
#
# How the Python dependencies ship: Debian's python3 (3.11) runs Edgeward; the pinned, hash-checked wheels of
# packaging/deb/requirements-<arch>.lock (and tpm2-pytss, built here from its pinned sdist against Debian's
# libtss2) are installed into /usr/lib/edgeward/python, which only /usr/bin/edgeward puts on its path. Nothing is
# fetched on the device; the shared libraries those wheels link to become the package's Depends.
#
# Environment: EDGEWARD_DEB_REVISION (default 1) makes <version> = <project version>-<revision>; EDGEWARD_DEB_DIR
# (default dist) is where the .deb goes; the build cache
# lives in build/ (downloaded and built wheels are reused when their hashes still match).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
pip() {  # quiet, without this machine's notes about local package indexes it does not have
    "$PY" -m pip "$@" 2> >(grep -v "^WARNING: Location 'file://" >&2)
}
[[ -x $PY ]] || { echo "build-deb: run make setup first (needs .venv)" >&2; exit 1; }
ARCH=$(dpkg --print-architecture)
LOCK=packaging/deb/requirements-$ARCH.lock
[[ -f $LOCK ]] || { echo "build-deb: no $LOCK (make it on this architecture: scripts/lock-package-deps.sh)" >&2; exit 1; }
PY_VERSION=$($PY -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
VERSION="$PY_VERSION-${EDGEWARD_DEB_REVISION:-1}"
[[ $VERSION =~ ^[0-9][A-Za-z0-9.+~-]*$ ]] || { echo "build-deb: bad version $VERSION" >&2; exit 1; }

CACHE=build/deb-cache/$ARCH
mkdir -p "$CACHE/download" "$CACHE/built"
STAGE=$(mktemp -d build/deb-stage.XXXXXX)
trap 'rm -rf "$STAGE"' EXIT
ROOT=$STAGE/root
LIB=$ROOT/usr/lib/edgeward

echo "build-deb: dependencies ($LOCK)"
pip download -q --no-deps --require-hashes -r "$LOCK" -d "$CACHE/download"
for sdist in "$CACHE"/download/*.tar.gz; do
    [[ -e $sdist ]] || continue
    name=$(basename "$sdist" .tar.gz)
    if ! ls "$CACHE/built/${name//-/_}"-*.whl >/dev/null 2>&1 && ! ls "$CACHE/built/$name"-*.whl >/dev/null 2>&1; then
        echo "build-deb: building $name from its sdist"
        pip wheel -q --no-deps -w "$CACHE/built" "$sdist"
    fi
done
rm -f "$CACHE"/edgeward-*.whl
pip wheel -q --no-deps -w "$CACHE" .

echo "build-deb: staging"
wheels=("$CACHE"/download/*.whl "$CACHE"/built/*.whl "$CACHE"/edgeward-*.whl)
pip install -q --no-index --no-deps --no-compile --target "$LIB/python" "${wheels[@]}"
rm -rf "$LIB/python/bin"
find "$LIB/python" -name __pycache__ -type d -prune -exec rm -rf {} +
find "$LIB/python" -name '*.so' -exec strip --strip-unneeded {} +
# pip's RECORD files list the files as pip wrote them; dpkg owns them now
find "$LIB/python" -path '*.dist-info/RECORD' -delete
install -D -m 0755 packaging/deb/edgeward.py "$ROOT/usr/bin/edgeward"
install -D -m 0644 packaging/deb/units.sh "$LIB/units.sh"
for unit in packaging/systemd/*; do install -D -m 0644 "$unit" "$ROOT/lib/systemd/system/$(basename "$unit")"; done
install -D -m 0644 packaging/deb/sysusers.conf "$ROOT/usr/lib/sysusers.d/edgeward.conf"
install -D -m 0644 packaging/deb/tmpfiles.conf "$ROOT/usr/lib/tmpfiles.d/edgeward.conf"
install -D -m 0644 packaging/deb/config.toml.template "$ROOT/etc/aziot/config.toml.edgeward.template"
install -D -m 0644 README.md "$ROOT/usr/share/doc/edgeward/README.md"

# Depends: python3 3.11 (the wheels are cp311), systemd (sysusers, units) and the Debian packages owning the shared
# libraries the wheels' extensions link to
needed() {  # the libraries an extension names itself (NEEDED), resolved as the loader would
    local so=$1
    ldd "$so" 2>/dev/null | awk '/=> \//{print $1, $3}' | while read -r name path; do
        if readelf -d "$so" | grep -q "(NEEDED).*\[$name\]"; then readlink -f "$path"; fi
    done
}
libs=$(find "$LIB/python" -name '*.so' | while read -r so; do needed "$so"; done | sort -u)
pkgs=$(for lib in $libs; do dpkg -S "$lib" 2>/dev/null || dpkg -S "/usr$lib" 2>/dev/null || dpkg -S "${lib#/usr}" 2>/dev/null \
       || true; done | cut -d: -f1 | sort -u | grep -v -x -e libc6 -e libgcc-s1 || true)
depends="python3 (>= 3.11~), python3 (<< 3.12), systemd, init-system-helpers"
for p in $pkgs; do depends="$depends, $p"; done

mkdir -p "$ROOT/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$ROOT" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@SIZE@/$size/" -e "s/@DEPENDS@/$depends/" \
    packaging/deb/control.in > "$ROOT/DEBIAN/control"
install -m 0755 packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm "$ROOT/DEBIAN/"
echo /etc/aziot/config.toml.edgeward.template > "$ROOT/DEBIAN/conffiles"

OUT_DIR=${EDGEWARD_DEB_DIR:-dist}
mkdir -p "$OUT_DIR"
OUT=$OUT_DIR/edgeward_${VERSION}_$ARCH.deb
dpkg-deb --root-owner-group -Zxz --build "$ROOT" "$OUT" >/dev/null
echo "build-deb: $OUT ($(du -h "$OUT" | cut -f1), installed $(( size / 1024 )) MiB; depends: $depends)"
