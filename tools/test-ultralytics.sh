#!/usr/bin/env bash
# Train real ultralytics models against the local hub: the tests marked `ultralytics`.
#
#   tools/test-ultralytics.sh            # ultralytics 8.2.0 (the pinned reference)
#   tools/test-ultralytics.sh 8.3.253    # a newer release, laid over the same torch
#
# The first run makes a virtualenv (HUBFSM_ULTRALYTICS_VENV, default .venv-ultralytics)
# with torch 2.4.1 (CPU is enough), ultralytics 8.2.0, hub-sdk 0.0.25 and this checkout,
# which takes minutes; later runs reuse it. Another VERSION is installed without its
# dependencies into an overlay directory that comes first on PYTHONPATH, so one torch
# serves every version. Extra arguments go to pytest.
set -euo pipefail

cd "$(dirname "$0")/.."
version="${1:-8.2.0}"
[[ $# -gt 0 ]] && shift
venv="${HUBFSM_ULTRALYTICS_VENV:-.venv-ultralytics}"
python="$venv/bin/python"

if [[ ! -x "$python" ]] || ! "$python" -c "import ultralytics, hub_sdk, pytest, hubfsm" 2>/dev/null; then
    python3 -m venv "$venv"
    "$python" -m pip install -q torch==2.4.1 torchvision==0.19.1 'numpy<2' \
        ultralytics==8.2.0 hub-sdk==0.0.25
    "$python" -m pip install -q -e '.[test]'
fi

overlay=""
if [[ "$version" != "8.2.0" ]]; then
    overlay="$venv/overlay-$version"
    if [[ ! -d "$overlay/ultralytics" ]]; then
        # What ultralytics 8.3/8.4 need beyond 8.2.0's dependencies (httpx and its own for
        # the Platform SDK, which 8.4 reports training through).
        "$python" -m pip install -q --no-deps --target "$overlay" "ultralytics==$version" \
            polars polars-runtime-32 ultralytics-thop ultralytics-platform nvidia-ml-py \
            httpx httpcore h11 anyio sniffio
    fi
fi

export PYTHONPATH="${overlay}${PYTHONPATH:+:$PYTHONPATH}"
"$python" -c "import ultralytics, torch; print('ultralytics', ultralytics.__version__, 'torch', torch.__version__)"
exec "$python" -m pytest -q -p no:cacheprovider -W ignore::FutureWarning \
    -W ignore::DeprecationWarning -m ultralytics tests/hubfsm/integrations "$@"
