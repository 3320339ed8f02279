#!/usr/bin/env bash
# The GPU check, as one prepared script for a short lease of a GPU machine (no install there:
# udabench is imported from this checkout, laid out as installed; its entry points come from the
# carried udabench.egg-info, made here by `pip install -e .`):
#   1. `udabench selftest` at the real protocols' sizes, every method, gta2cs then synthia2cs, on
#      CUDA (ResNet-101 DeepLabV2 / MiT-B5 DAFormer with random weights: times and memory only);
#   2. one default MiniCity run on CUDA (clst, minicity-gta2cs, seed 0), timed.
# Each step has its own time limit and writes into $OUT as it goes, so a step that runs out of time
# still leaves the methods it finished (the selftest's progress lines) and the steps after it run.
#   OUT=/tmp/check bash bench/device_check.sh                     # on the GPU machine
#   DEVICE=cpu ITERS=2 IMAGES=2 METHODS=source-only BACKBONE=resnet-tiny OUT=/tmp/c bash bench/device_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/udabench-device-check}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -n "${SHIM:-}" ] || ! python3 -c "import udabench.methods" 2>/dev/null; then
    # Not installed: the package as the wheel lays it out (methods/ ships as udabench.methods,
    # pyproject's package-dir), as links into this checkout, with the carried entry points.
    shim=$(mktemp -d)
    cp -rs "$PWD/udabench" "$shim/udabench"
    ln -s "$PWD/methods" "$shim/udabench/methods"
    ln -s "$PWD/udabench.egg-info" "$shim/udabench.egg-info"
    export PYTHONPATH="$shim"
    cd "$shim"  # `python -m` puts the working folder first on sys.path: not this checkout's udabench/
fi
DEVICE="${DEVICE:-cuda}"
backbone=()
[ -n "${BACKBONE:-}" ] && backbone=(--backbone "$BACKBONE")

{ nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"; nproc
  python3 -c "import torch, torchvision, timm, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'torchvision', torchvision.__version__, 'timm', timm.__version__, 'numpy', numpy.__version__)"
} 2>&1 | tee "$OUT/env.txt"

for bench in gta2cs synthia2cs; do
    start=$(date +%s)
    timeout "${SELFTEST_SECONDS:-170}" python3 -m udabench selftest --benchmark "$bench" \
        --methods "${METHODS:-all}" --device "$DEVICE" --iters "${ITERS:-15}" --images "${IMAGES:-4}" \
        "${backbone[@]}" --format json >"$OUT/selftest-$bench.json" 2>"$OUT/selftest-$bench.log"
    echo "selftest $bench: exit $?, $(( $(date +%s) - start )) s"
    grep -E ": (ok|failed)" "$OUT/selftest-$bench.log"
done

runs=$(mktemp -d)
start=$(date +%s)
timeout "${MINICITY_SECONDS:-120}" python3 -m udabench run clst --benchmark minicity-gta2cs \
    --device "$DEVICE" --seed 0 --out "$runs" >"$OUT/minicity.log" 2>&1
echo "minicity clst on $DEVICE: exit $?, $(( $(date +%s) - start )) s (data generation included)"
find "$runs" -name result.json -exec cp {} "$OUT/minicity-clst-result.json" \;
tail -n 4 "$OUT/minicity.log"
