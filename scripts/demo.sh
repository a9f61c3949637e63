#!/usr/bin/env bash
# The main job on the bundled model: what it is, a greedy story, and its perplexity on held-out text.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=build/eigenkv
model=models/stories260K.gguf
echo "== eigenkv info"
$bin info -m "$model"
echo
echo "== eigenkv generate (greedy, from BOS)"
$bin generate -m "$model" -n 60 --temp 0
echo
echo "== eigenkv perplexity (bundled TinyStories sample, ctx 256)"
$bin perplexity -m "$model" -f data/tinystories-eval.txt --ctx 256
