#!/usr/bin/env bash
# Regenerate everything docs/benchmarks.md publishes: every backend, the shapes latency,
# typical and throughput, float32 and bfloat16, into docs/benchmarks/<backend>/
# (results.json, results.md, ratios.png). Run it on an otherwise idle machine: the
# ratios are measured side by side, but a busy machine widens their spread.
#
#   benchmarks/run_all.sh [--repeats N] [--python PYTHON] [BACKEND ...]
#
# --repeats  interleaved repeats per candidate (default 3). At 3 the whole run took an
#            estimated 80 minutes on the project's busy 2-core machine (67 at 1); each
#            further repeat adds about 6.5 minutes (docs/benchmarks.md says where it goes).
# --python   the interpreter with novolstm and the frameworks installed (default: python3)
# BACKEND    numpy torch jax keras (default: all four)
#
# Each backend runs in its own process, one after the other, so no framework's threads
# or allocator run alongside another's. Keras runs on TensorFlow (KERAS_BACKEND).
set -euo pipefail

repeats=3
python=python3
backends=()
while [ $# -gt 0 ]; do
    case "$1" in
        --repeats) repeats="$2"; shift 2 ;;
        --python) python="$2"; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        -*) echo "run_all.sh: unknown option $1 (expected --repeats N, --python PYTHON)" >&2; exit 2 ;;
        *) backends+=("$1"); shift ;;
    esac
done
[ ${#backends[@]} -gt 0 ] || backends=(numpy torch jax keras)

cd "$(dirname "$0")/.."
for backend in "${backends[@]}"; do
    echo "== $backend ($(date +%H:%M:%S))" >&2
    start=$(date +%s)
    KERAS_BACKEND=tensorflow "$python" -m novolstm bench --backends "$backend" \
        --shapes latency typical throughput --dtype float32 bfloat16 \
        --repeats "$repeats" --out "docs/benchmarks/$backend" > /dev/null
    echo "== $backend done in $(( $(date +%s) - start )) s" >&2
done
