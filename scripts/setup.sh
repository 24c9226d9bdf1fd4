#!/usr/bin/env bash
# Installs what Edgeward and its tests need on a fresh Debian 12 machine: system packages (when run as root and
# something is missing) and a virtualenv in .venv with the project installed in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(softhsm2 opensc swtpm swtpm-tools tpm2-tools libtss2-dev pkg-config build-essential python3-dev
              python3-venv util-linux docker.io podman runc busybox-static bubblewrap uidmap
              libtpm2-pkcs11-1 libtpm2-pkcs11-tools tpm2-abrmd libtss2-tcti-tabrmd0 dbus-daemon dbus-bin
              mmdebstrap systemd-container python3-gpg)

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "setup: missing Debian packages: ${missing[*]} (run as root or: sudo apt-get install ${missing[*]})" >&2
        exit 1
    fi
    echo "setup: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The real Azure IoT Node SDKs the tests drive: Node from the image when present, Debian's nodejs and npm otherwise;
# the SDKs from npm exactly as the lockfile pins them.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    if [[ $(id -u) -ne 0 ]]; then
        echo "setup: node and npm are missing (run as root or: sudo apt-get install nodejs npm)" >&2
        exit 1
    fi
    echo "setup: installing nodejs npm"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
if [[ ! -f tests/node/node_modules/.package-lock.json ]] \
        || ! cmp -s tests/node/package-lock.json tests/node/node_modules/.edgeward-lock; then
    echo "setup: installing the Azure IoT Node SDKs (npm ci)"
    (cd tests/node && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null \
        && cp package-lock.json node_modules/.edgeward-lock)
fi

PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip 2>/dev/null || true
.venv/bin/python -m pip install -q -e '.[tpm,dev]'

# Keylime's registrar, verifier and tenant (tests/e2e/test_keylime_agent.py), in a virtualenv of their own: their
# pinned dependencies must not meet Edgeward's. Keylime imports `gpg` at start; Debian's python3-gpg is linked in.
KL_REQ=tests/keylime/requirements.txt
if [[ ! -x .venv-keylime/bin/keylime_verifier ]] || ! cmp -s "$KL_REQ" .venv-keylime/.edgeward-requirements; then
    echo "setup: installing keylime for the Keylime agent test (.venv-keylime)"
    "$PY" -m venv .venv-keylime
    .venv-keylime/bin/python -m pip install -q -r "$KL_REQ"
    cp "$KL_REQ" .venv-keylime/.edgeward-requirements
fi
site=$(.venv-keylime/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [[ -d /usr/lib/python3/dist-packages/gpg && ! -e "$site/gpg" ]]; then
    ln -s /usr/lib/python3/dist-packages/gpg "$site/gpg"
fi
echo "setup: ready (.venv)"
