#!/usr/bin/env bash
# GPU checks of the device path (issue 17). Run on a CUDA machine from the repository root:
#
#     bash benchmarks/gpu_check.sh            # about 5-8 minutes on one H100/H200
#
# 1. correctness: the kernel tests and the device-path tests with compiled Triton (interpreter off):
#    Triton kernels vs torch references, device decode state / generate / top-K / processor vs the
#    C++ core on CUDA tensors;
# 2. no host round trip: the constrained decode loop and the beam levels under
#    torch.cuda.set_sync_debug_mode("error") (the model forward is excluded);
# 3. figures: the device constrained step at 140 rows for 1M and 10M items (budget 33 us), the share
#    of a decode step spent in constraints with a Qwen2-0.5B-shaped model at 30 beams, and recommend
#    end to end (users/s, p50/p99) neo vs HF generate(num_beams=30, prefix_allowed_tokens_fn=...).
# Results: benchmarks/results/recommend_gpu.json (+ tables on stdout). Nothing here is estimated.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
echo "== 1/3 kernel and device-path tests on CUDA (compiled Triton)"
TRITON_INTERPRET=0 $PY -m pytest -q -x tests/test_kernels_bitmask.py tests/test_kernels_beam.py \
    tests/test_kernels_trie.py tests/test_kernels_sampling.py tests/test_kernels_api.py tests/test_device_path.py
echo "== 2/3 no host round trip in the constrained loop"
TRITON_INTERPRET=0 $PY benchmarks/bench_recommend.py --device cuda --sections sync --items 100000 --out recommend_gpu_sync
echo "== 3/3 device step (140 rows), share of a decode step, recommend end to end"
TRITON_INTERPRET=0 $PY benchmarks/bench_recommend.py --device cuda --sections device,share,e2e \
    --items 1000000 10000000 --e2e-batches 1 16 --repeat 9 --out recommend_gpu
