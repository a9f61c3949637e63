#!/usr/bin/env bash
# The main job on the bundled head_dim-64 model (models/tinystories-c4-gqa-Q8_0.gguf, a Q8_0
# Llama with 64-wide heads and GQA): compress its KV cache to half with Eigen Attention and with
# StiefAttention, then show each beside the original (KV bytes, perplexity, KLD, top-1 agreement,
# decode speed) on held-out text, the error-versus-rank profiles as a plot, and a story.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=build/eigenkv
model=models/tinystories-c4-gqa-Q8_0.gguf
calib=data/tinystories-calib.txt
held_out=data/tinystories-eval.txt
eigen=build/demo-eigen-kv50.gguf
stief=build/demo-stief-kv50.gguf
plot=build/demo-profiles.svg

echo "== the original model"
$bin info -m "$model"
echo
echo "== Eigen Attention: half the KV cache, ranks allotted per layer (post-RoPE key basis)"
$bin calibrate -m "$model" -f "$calib" --kv-budget 0.5 --rope post --fold-type q8_0 -o "$eigen"
echo
echo "== StiefAttention: bases trained on each layer's output error, the same budget"
$bin calibrate --method stief -m "$model" -f "$calib" --kv-budget 0.5 --rope post \
  --ranks 0.25,0.375,0.5,0.625,0.75 --fold-type q8_0 --plot "$plot" -o "$stief"
echo
echo "== Eigen Attention beside the original, on held-out text"
$bin compare -m "$eigen" --base "$model" -f "$held_out" --ctx 256
echo
echo "== StiefAttention beside the original, on the same text"
$bin compare -m "$stief" --base "$model" -f "$held_out" --ctx 256
echo
echo "== a story from the Eigen-compressed model (greedy)"
$bin generate -m "$eigen" -p "Once upon a time" -n 60 --temp 0
echo
echo "The profile plot (layer-output error against rank, both methods): $plot"
echo "Decode speeds are single runs on whatever else this machine is doing: docs/BENCH.md has"
echo "interleaved medians. docs/RESULTS.md has both methods on every shared model and family."
