#!/usr/bin/env bash
# Pins the Debian package's Python dependencies (the runtime closure of edgeward[tpm]) with their hashes for this
# machine's architecture: packaging/deb/requirements-<arch>.lock. Run it to move to newer versions, then test.
set -euo pipefail
cd "$(dirname "$0")/.."
ARCH=$(dpkg --print-architecture)
report=$(mktemp)
trap 'rm -f "$report"' EXIT
.venv/bin/python -m pip install -q --dry-run --ignore-installed --report "$report" '.[tpm]'
.venv/bin/python - "$report" "packaging/deb/requirements-$ARCH.lock" <<'PY'
import json
import sys

report, out = sys.argv[1:]
lines = ["# The Python packages the Debian package ships in /usr/lib/edgeward/python, pinned with their hashes.",
         "# Made by scripts/lock-package-deps.sh (the runtime closure of edgeward[tpm] as pip resolves it).", ""]
for item in sorted(json.load(open(report))["install"], key=lambda i: i["metadata"]["name"].lower()):
    meta = item["metadata"]
    if meta["name"] == "edgeward":
        continue
    digest = item["download_info"]["archive_info"]["hashes"]["sha256"]
    lines.append(f"{meta['name']}=={meta['version']} \\\n    --hash=sha256:{digest}")
open(out, "w").write("\n".join(lines) + "\n")
print(f"wrote {out}")
PY
