#!/usr/bin/env python3
"""Produces docs/results/kvquant.md: quantized KV caches at equal bytes per token (issue 6).

Protocol (the Eigen section's): calibrate on the first half of ../shared/data/tinystories/
valid_a.txt, evaluate at ctx 256 on its second half (60 windows); KLD against the original model
with a float32 cache. Byte fractions are against the uncompressed f16 cache, scales included.

1. Every model in ../shared/models: PPL with f16, int8 and int4 caches (the int8 bar: within 0.5 %
   of f16).
2. tinystories-c4-gqa (head_dim 64): at target fractions of the f16 cache's bytes, the full cache
   at int8/int4 (fixed points), low-rank (Eigen, post-RoPE keys, KV-budget allotment) stored as
   f16 / int8 / int4 with the rank chosen to fill the bytes, and the water-filled eigenbasis cache
   (eigenkv quantize-cache on the full-rank Eigen model).

  python3 scripts/results/kvquant_results.py [--out docs/results/kvquant.md]
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
BIN = os.path.join(ROOT, "build", "eigenkv")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from eigen_results import split_valid_a  # noqa: E402

MODELS = [
    ("stories260K.gguf", "models/stories260K.gguf"),
    ("stories260K-hf", "models/stories260K-hf"),
    ("tinystories-c4-gqa.gguf", "models/tinystories-c4-gqa.gguf"),
    ("tinystories-c4-gqa-hf", "models/tinystories-c4-gqa-hf"),
    ("TinyStories-656K (HF)", "models/TinyStories-656K"),
    ("tinystories-c4-gqa Q8_0", "models/quantized/tinystories-c4-gqa-Q8_0.gguf"),
    ("tinystories-c4-gqa Q6_K", "models/quantized/tinystories-c4-gqa-Q6_K.gguf"),
    ("tinystories-c4-gqa Q4_K_M", "models/quantized/tinystories-c4-gqa-Q4_K_M.gguf"),
    ("tinystories-c4-gqa Q4_0", "models/quantized/tinystories-c4-gqa-Q4_0.gguf"),
]
TARGETS = [0.5, 0.375, 0.25, 0.1875, 0.125]
# Bytes per number of each row type at width 64 (scales included): f16 2, int8 34/32, int4 18/32.
BYTES_PER_NUMBER = {"f16": 2.0, "int8": 34 / 32, "int4": 18 / 32}
WINDOWS = 60


def run(args):
    out = subprocess.run([BIN] + args, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def ppl(model, base, text, cache=None, decode=False):
    args = ["perplexity", "-m", model, "-f", text, "--ctx", "256", "--json", "--kld-base", base,
            "--max-windows", str(WINDOWS)] + (["--decode"] if decode else [])
    if cache:
        args += ["--cache-type-k", cache, "--cache-type-v", cache]
    return run(args)


def finish(lines, script, started, out):
    """Adds the line saying how `lines` were made (script, date, commit, machine, time) and
    writes them to `out`."""
    lines.append("Made by `python3 scripts/results/%s` on %s, commit %s, %s (%d cores), in %.0f s."
                 % (script, datetime.date.today().isoformat(),
                    subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                                   capture_output=True, text=True).stdout.strip(),
                    platform.processor() or platform.machine(), os.cpu_count(),
                    time.time() - started))
    open(out, "w").write("\n".join(lines) + "\n")
    print("wrote %s" % out, file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "results", "kvquant.md"))
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="eigenkv_kvquant_")
    calib, evalp = split_valid_a(tmp)
    started = time.time()
    lines = ["## Quantized KV caches\n"]
    lines.append("### int8 and int4 caches on every model\n")
    lines.append("PPL on the second half of valid_a (ctx 256, %d windows); KLD against the same "
                 "model with a float32 cache. int8/int4: groups of 32 numbers (or the head, when "
                 "narrower) with one f16 scale, as llama.cpp's q8_0/q4_0 but at any width "
                 "(stories260K's heads are 8 wide, which llama.cpp's quantized caches refuse).\n"
                 % WINDOWS)
    lines.append("| model | head_dim | PPL f16 | PPL int8 | int8 / f16 | KLD int8 | PPL int4 | int4 / f16 | KLD int4 |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, rel in MODELS:
        path = os.path.join(SHARED, rel)
        if not os.path.exists(path):
            lines.append("| %s | absent | | | | | | | |" % name)
            continue
        info = run(["info", "-m", path, "--json"])
        r16, r8, r4 = (ppl(path, path, evalp, c) for c in ("f16", "int8", "int4"))
        lines.append("| %s | %d | %.4f | %.4f | %.4f | %.5f | %.4f | %.4f | %.5f |" % (
            name, info["head_dim"], r16["ppl"], r8["ppl"], r8["ppl"] / r16["ppl"], r8["kld_mean"],
            r4["ppl"], r4["ppl"] / r16["ppl"], r4["kld_mean"]))
    print("int8 table after %.0f s" % (time.time() - started), file=sys.stderr)

    base = os.path.join(SHARED, "models/tinystories-c4-gqa.gguf")
    f16_bytes = run(["info", "-m", base, "--json"])["kv_bytes_per_token"] // 2  # f32 -> f16
    full_rank = os.path.join(tmp, "eigen_full.gguf")
    run(["calibrate", "-m", base, "-f", calib, "--threshold", "0", "--rope", "post", "--tokens",
         "32768", "-o", full_rank, "--json"])
    rows = []
    for cache in ("int8", "int4"):
        r = ppl(base, base, evalp, cache)
        rows.append(("full cache, %s" % cache, r))
    for target in TARGETS:
        for cache in ("f16", "int8", "int4"):
            numbers = target * 2.0 / BYTES_PER_NUMBER[cache]
            if numbers > 1.0:
                continue
            out = os.path.join(tmp, "lr.gguf")
            run(["calibrate", "-m", base, "-f", calib, "--kv-budget", "%.6f" % numbers, "--rope",
                 "post", "--tokens", "32768", "-o", out, "--json"])
            rows.append(("low-rank + %s (target %.3f)" % (cache, target),
                         ppl(out, base, evalp, cache)))
        out = os.path.join(tmp, "wf.gguf")
        run(["quantize-cache", "-m", full_rank, "-f", calib, "--budget", str(target),
             "--tokens", "16384", "-o", out, "--json"])
        rows.append(("low-rank + water-filled bits (target %.3f)" % target,
                     ppl(out, base, evalp)))
    rows.sort(key=lambda r: (-r[1]["kv_bytes_per_token"], r[1]["kld_mean"]))
    lines.append("")
    lines.append("### Equal bytes: tinystories-c4-gqa (head_dim 64, 4 layers, 2 KV heads)\n")
    lines.append("Uncompressed f16 cache: %d bytes per token. Low-rank models: Eigen Attention "
                 "with post-RoPE keys and KV-budget allotment, the rank chosen so that the cache "
                 "of the given type fills the target; water-filled: the full-rank Eigen model's "
                 "directions get 8, 4 or 0 bits each by reverse water-filling "
                 "(`eigenkv quantize-cache --budget`). Sorted by bytes, then KLD.\n" % f16_bytes)
    lines.append("| cache | KV bytes/token | of f16 | PPL | KLD | top-1 |")
    lines.append("|---|---:|---:|---:|---:|---:|")
    for label, r in rows:
        lines.append("| %s | %d | %.3f | %.4f | %.5f | %.1f %% |" % (
            label, r["kv_bytes_per_token"], r["kv_bytes_per_token"] / f16_bytes, r["ppl"],
            r["kld_mean"], 100 * r["top1_agree"]))
    lines.append("")
    finish(lines, "kvquant_results.py", started, a.out)


if __name__ == "__main__":
    main()
