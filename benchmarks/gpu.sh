#!/usr/bin/env bash
# The throughput benchmark on a GPU, for the `device` tool's machine (or any CUDA box):
# every family at 3 interaction budgets, fp32 and bf16, eager and torch.compile, with MFU.
#
#   bash benchmarks/gpu.sh [OUT]        (OUT: where rows.jsonl, tables.md and the logs go;
#                                        default $OUT, else benchmarks/gpu-out)
#   GPU_SECONDS=480 bash benchmarks/gpu.sh   the wall-time budget of the measuring (default 480 s)
#
# Rows are appended to OUT/rows.jsonl as they are measured, so a run cut short keeps them and
# the same command run again measures only what is missing. The eager tables come first (every
# model, budget and precision), then the compiled ones at 2M FLOPs, then the other budgets;
# whatever the time allows. OUT/tables.md is printed from the rows at the end.
# Needs torch with CUDA, numpy, pyarrow, pyyaml, tqdm, safetensors and dacite; a dacite wheel
# in .whl/ (carried) is installed to /tmp/site when the machine lacks it.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-benchmarks/gpu-out}}"
mkdir -p "$out"
budget_s="${GPU_SECONDS:-480}"
start=$(date +%s)
PY="${PYTHON:-python3}"
if ! "$PY" -c "import dacite" 2>/dev/null && ls .whl/dacite-*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/dacite-*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())" \
  | tee "$out/device.txt" || exit 2
nvidia-smi >> "$out/device.txt" 2>&1 || true

common=(benchmarks/throughput.py --device cuda --batch-size 8192 --infer-batch-size 65536 --steps 20 --repeats 3
        --precision fp32 bf16 --mfu --jsonl "$out/rows.jsonl" --markdown)
left() { echo $(( budget_s - ($(date +%s) - start) )); }
phase() {  # phase NAME ARGS...: run the benchmark with what time is left
  local name=$1; shift
  local t; t=$(left)
  if (( t < 20 )); then echo "skipped $name: out of time" | tee -a "$out/phases.txt"; return; fi
  echo "$name: up to ${t}s" | tee -a "$out/phases.txt"
  timeout --signal=INT "$t" "$PY" "${common[@]}" "$@" >> "$out/$name.log" 2>&1
  echo "$name: exit $? after $(( $(date +%s) - start ))s in all" | tee -a "$out/phases.txt"
}
phase eager --budget 150000 2000000 20000000
phase compiled-2M --budget 2000000 --compile --models mldcn dcnv2_lowrank dcnv2_mixture masknet_parallel masknet_serial wukong rankmixer
phase compiled-rest --budget 150000 20000000 --compile --models mldcn dcnv2_lowrank dcnv2_mixture masknet_parallel masknet_serial wukong rankmixer
"$PY" "${common[@]}" --budget 150000 2000000 20000000 --compile --report > "$out/tables.md" 2>&1
cat "$out/phases.txt"
echo "tables: $out/tables.md ($(grep -c '^| ' "$out/tables.md") table lines)"
