#!/usr/bin/env bash
# Regenerate everything docs/benchmarks.md publishes: every backend, the shapes latency,
# typical and throughput, float32 and bfloat16, into docs/benchmarks/<backend>/<shape>/
# (results.json, results.md, ratios.png). Run it on an otherwise idle machine: the
# ratios are measured side by side, but a busy machine widens their spread.
#
#   benchmarks/run_all.sh [--repeats N] [--throughput-repeats N] [--python PYTHON] [BACKEND ...]
#
# --repeats  interleaved repeats per candidate at the latency and typical shapes
#            (default 5); the throughput shape, where one NumPy per-example call takes about
#            20 s, runs --throughput-repeats (default 1) so the whole run fits in under an hour
#            on the project's 2-core machine.
# --python   the interpreter with novolstm and the frameworks installed (default: python3)
# BACKEND    numpy torch jax keras (default: all four)
#
# Each backend runs in its own process, one after the other, so no framework's threads
# or allocator run alongside another's. Keras runs on TensorFlow (KERAS_BACKEND).
set -euo pipefail

repeats=5
throughput_repeats=1
python=python3
backends=()
while [ $# -gt 0 ]; do
    case "$1" in
        --repeats) repeats="$2"; shift 2 ;;
        --throughput-repeats) throughput_repeats="$2"; shift 2 ;;
        --python) python="$2"; shift 2 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        -*) echo "run_all.sh: unknown option $1 (expected --repeats N, --throughput-repeats N, --python PYTHON)" >&2; exit 2 ;;
        *) backends+=("$1"); shift ;;
    esac
done
[ ${#backends[@]} -gt 0 ] || backends=(numpy torch jax keras)

cd "$(dirname "$0")/.."
# Shapes outer, backends inner: the typical shape of every backend is in first.
for shape in typical latency throughput; do
    n=$repeats; [ "$shape" = throughput ] && n=$throughput_repeats
    for backend in "${backends[@]}"; do
        echo "== $backend $shape, $n repeats ($(date +%H:%M:%S))" >&2
        start=$(date +%s)
        KERAS_BACKEND=tensorflow "$python" -m novolstm bench --backends "$backend" \
            --shapes "$shape" --dtype float32 bfloat16 \
            --repeats "$n" --out "docs/benchmarks/$backend/$shape" > /dev/null
        echo "== $backend $shape done in $(( $(date +%s) - start )) s" >&2
    done
done
