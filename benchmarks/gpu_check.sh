#!/usr/bin/env bash
# Everything that needs a GPU, as one short script for a lent GPU machine (minutes, not hours):
# the CUDA tests, the end-to-end benchmark at 10,000 latents (target <= 1.25x the forward floor),
# the round benchmark (the example generator and the StyleGAN2-shaped one at 128 px, both modes) and
# the core statistics on the GPU. Results go to $OUT (default gpu_results/)
# with the card's name; copy the numbers into docs/benchmarks.md.
#
#   bash benchmarks/gpu_check.sh            # uses the python on PATH (it needs a CUDA torch)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_results}"
mkdir -p "$out"
py="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; "$py" -c \
  "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"; } \
  > "$out/device.txt" 2>&1
cat "$out/device.txt"
status=0
"$py" -m pytest -q -p no:cacheprovider -m cuda tests/ 2>&1 | tee "$out/cuda_tests.txt" | tail -3 || status=1
"$py" benchmarks/bench_end_to_end.py --device cuda --num-samples 10000 2>&1 | tee "$out/end_to_end.txt" || status=1
"$py" benchmarks/bench_round.py --device cuda --workloads example stylegan2 --threads default --stylegan2-repeats 3 \
  2>&1 | tee "$out/round.txt" || status=1
"$py" benchmarks/bench_core.py --device cuda --threads default 2>&1 | tee "$out/core.txt" || status=1
echo "results in $out/"
exit $status
