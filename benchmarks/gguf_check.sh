#!/usr/bin/env bash
# GGUF files in real llama.cpp: builds llama.cpp's Python binding from source (several minutes on 2 cores), then
# runs the GGUF tests, which compare llama.cpp's greedy tokens and logits with the package's on tiny models.
#   bash benchmarks/gguf_check.sh        (inside the project's virtual environment)
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import llama_cpp" 2>/dev/null || \
  CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
  pip install llama-cpp-python gguf
python -m pytest -q tests/test_gguf.py -rs
