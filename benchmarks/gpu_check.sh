#!/usr/bin/env bash
# The CUDA checks, as one prepared run on a GPU machine (README, "On a GPU"):
# 1. the engine-vs-eager tests and the split-model tests on the GPU (fp32);
# 2. the extraction benchmark in bf16 for SmolLM2-135M's architecture, a ~1.1B llama and GPT-J-6B's
#    architecture (random weights: timing does not depend on their values): c/a, b/c, memory;
# 3. where this checkout holds the default study (resources/ and results/ of `make run`): a small
#    study end to end on CUDA through the Snakefile (SmolLM2, bfloat16), and bf16 / fp16 against fp32
#    on CUDA for one prompt set (benchmarks/precision.py).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-gpu_check_out}; mkdir -p "$OUT"
PY=${PY:-python3}
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())" | tee "$OUT/versions.txt"
ENGINE_TEST_DEVICE=cuda $PY -m pytest -q -p no:cacheprovider tests/test_engine.py tests/test_engine_split.py 2>&1 | tail -25 | tee "$OUT/engine_tests_cuda.txt"
for model in random:smollm2-135m random:llama-1b random:gptj-6b; do
  $PY benchmarks/extraction.py --model "$model" --device cuda --dtype bfloat16 --repeats 10 2>&1 | tee "$OUT/bench_${model#random:}.txt"
done
if [ -f resources/models/smollm2-135m/manifest.json ] && [ -d results/smollm2-135m ]; then
  for dtype in bfloat16 float16; do
    $PY benchmarks/precision.py --device cuda --dtype "$dtype" --batch-size 8 --json "$OUT/precision_$dtype.json" 2>&1 | tail -12 | tee "$OUT/precision_$dtype.txt"
  done
  # A small study on CUDA in a copy of this folder, reusing the prepared model and data.
  study="$OUT/cuda_study"; mkdir -p "$study"; cp -r resources "$study/"
  printf 'study: {seeds: [0]}\nextraction: {device: cuda, dtype: bfloat16, batch_size: 8}\n' > "$study/cuda.yaml"
  ( time $PY -m snakemake -s Snakefile --directory "$study" --cores 16 --configfile config.yaml "$study/cuda.yaml" ) > "$OUT/cuda_study.txt" 2>&1
  tail -5 "$OUT/cuda_study.txt"; cp "$study/results/report.md" "$OUT/cuda_study_report.md" 2>/dev/null
fi
