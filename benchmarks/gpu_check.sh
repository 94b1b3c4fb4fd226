#!/usr/bin/env bash
# The CUDA checks of the extraction engine, as one prepared run on a GPU machine:
# engine-vs-eager tests on the GPU (fp32), then the benchmark in bf16 for SmolLM2-135M's architecture
# and a ~1.1B-parameter llama (random weights: timing does not depend on their values).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-gpu_check_out}; mkdir -p "$OUT"
PY=${PY:-python3}
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())" | tee "$OUT/versions.txt"
ENGINE_TEST_DEVICE=cuda $PY -m pytest -q -p no:cacheprovider tests/test_engine.py 2>&1 | tail -25 | tee "$OUT/engine_tests_cuda.txt"
for model in random:smollm2-135m random:llama-1b; do
  $PY benchmarks/extraction.py --model "$model" --device cuda --dtype bfloat16 --repeats 10 2>&1 | tee "$OUT/bench_${model#random:}.txt"
done
