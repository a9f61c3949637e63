#!/usr/bin/env python3
"""Produces docs/RESULTS.md's Eigen Attention section from eigenkv's own output.

For each model: calibrate on the first half of ../shared/data/tinystories/valid_a.txt, evaluate
on its second half (ctx 256) and on the first windows of WikiText-2 test, for every threshold
EPS x key mode {pre, post}; then layer-wise allotment (--kv-budget) against a uniform threshold
at the same KV size. Every number comes from `eigenkv ... --json`.

  python3 scripts/results/eigen_results.py [--quick] [--out docs/results/eigen.md]
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

MODELS = [
    ("stories260K.gguf", "models/stories260K.gguf"),
    ("tinystories-c4-gqa.gguf", "models/tinystories-c4-gqa.gguf"),
    ("TinyStories-656K (HF)", "models/TinyStories-656K"),
]
# The Hugging Face copies of the two GGUF models give the same logits (tested), and the quantized
# files are the GQA model's weights rounded: they are left out to keep the run under an hour on
# 2 cores; `--all` adds the quantized ones.
QUANTIZED = [
    ("tinystories-c4-gqa Q8_0", "models/quantized/tinystories-c4-gqa-Q8_0.gguf"),
    ("tinystories-c4-gqa Q4_K_M", "models/quantized/tinystories-c4-gqa-Q4_K_M.gguf"),
]
EPS = [0.0, 0.01, 0.02, 0.05, 0.1, 0.2]


def run(args):
    out = subprocess.run([BIN] + args, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def split_valid_a(tmp):
    text = open(os.path.join(SHARED, "data/tinystories/valid_a.txt"), encoding="utf-8").read()
    paras = text.split("\n\n")
    half = len(paras) // 2
    calib = os.path.join(tmp, "valid_a_first_half.txt")
    evalp = os.path.join(tmp, "valid_a_second_half.txt")
    open(calib, "w", encoding="utf-8").write("\n\n".join(paras[:half]))
    open(evalp, "w", encoding="utf-8").write("\n\n".join(paras[half:]))
    return calib, evalp


def evaluate(model, base, text, windows):
    args = ["perplexity", "-m", model, "-f", text, "--ctx", "256", "--json", "--kld-base", base]
    if windows:
        args += ["--max-windows", str(windows)]
    return run(args)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer windows, two models")
    ap.add_argument("--all", action="store_true", help="also the quantized models")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "results", "eigen.md"))
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="eigenkv_results_")
    calib, evalp = split_valid_a(tmp)
    wiki = os.path.join(SHARED, "data/wikitext-2-raw/wiki.test.raw")
    eval_windows = 20 if a.quick else 60
    wiki_windows = 20 if a.quick else 60
    calib_tokens = "16384" if a.quick else "32768"
    models = MODELS[:2] if a.quick else MODELS + (QUANTIZED if a.all else [])
    started = time.time()
    lines = []
    lines.append("## Eigen Attention: threshold x key mode\n")
    lines.append("Calibrated on the first %s tokens of the first half of valid_a (paragraphs), "
                 "evaluated at ctx 256 on its "
                 "second half (%s) and on WikiText-2 test (first %d windows). KV fraction: cached "
                 "numbers per token against the uncompressed cache. KLD: mean KL divergence of the "
                 "compressed model's next-token distribution from the original's.\n"
                 % (calib_tokens, "first %d windows" % eval_windows, wiki_windows))
    allot_rows = []
    for name, rel in models:
        path = os.path.join(SHARED, rel)
        if not os.path.exists(path):
            lines.append("_%s: absent, skipped._\n" % name)
            continue
        info = run(["info", "-m", path, "--json"])
        base_ts = evaluate(path, path, evalp, eval_windows)
        base_wk = evaluate(path, path, wiki, wiki_windows)
        lines.append("### %s (head_dim %d, %d layers, %d KV heads)\n" %
                     (name, info["head_dim"], info["n_layers"], info["n_kv_heads"]))
        lines.append("Original: PPL %.4f on valid_a second half, %.4f on WikiText-2.\n" %
                     (base_ts["ppl"], base_wk["ppl"]))
        lines.append("| EPS | mode | KV fraction | PPL TinyStories | KLD | top-1 | PPL WikiText-2 | KLD | top-1 |")
        lines.append("|----:|------|------------:|----------------:|----:|------:|---------------:|----:|------:|")
        for eps in EPS:
            for mode in ("pre", "post"):
                out = os.path.join(tmp, "m.gguf")
                cal = run(["calibrate", "-m", path, "-f", calib, "--threshold", str(eps),
                           "--rope", mode, "--tokens", calib_tokens, "-o", out, "--json"])
                ts = evaluate(out, path, evalp, eval_windows)
                wk = evaluate(out, path, wiki, wiki_windows)
                lines.append("| %.2f | %s | %.3f | %.4f | %.5f | %.1f %% | %.4f | %.5f | %.1f %% |" % (
                    eps, mode, cal["kv_fraction"], ts["ppl"], ts["kld_mean"],
                    100 * ts["top1_agree"], wk["ppl"], wk["kld_mean"], 100 * wk["top1_agree"]))
                if eps == 0.1:
                    # Allotment at the same KV size as this uniform threshold.
                    cal2 = run(["calibrate", "-m", path, "-f", calib, "--kv-budget",
                                "%.6f" % cal["kv_fraction"], "--rope", mode, "--tokens",
                                calib_tokens, "-o", out, "--json"])
                    ts2 = evaluate(out, path, evalp, eval_windows)
                    wk2 = evaluate(out, path, wiki, wiki_windows)
                    allot_rows.append((name, mode, cal["kv_fraction"], ts, wk, cal2["kv_fraction"],
                                       ts2, wk2))
        lines.append("")
        print("done %s after %.0f s" % (name, time.time() - started), file=sys.stderr)
    lines.append("## Layer-wise allotment against a uniform threshold at equal KV size\n")
    lines.append("Uniform: EPS = 0.1 for every layer. Allotted: `--kv-budget` set to the uniform "
                 "run's KV fraction (ranks chosen per layer to minimise the summed layer-output "
                 "error on calibration text).\n")
    lines.append("| model | mode | KV uniform | KV allotted | KLD TinyStories uniform | allotted | KLD WikiText-2 uniform | allotted | PPL TinyStories uniform | allotted |")
    lines.append("|-------|------|-----------:|------------:|------------------------:|---------:|------------------------:|---------:|---------:|---------:|")
    for name, mode, f1, ts, wk, f2, ts2, wk2 in allot_rows:
        lines.append("| %s | %s | %.3f | %.3f | %.5f | %.5f | %.5f | %.5f | %.4f | %.4f |" % (
            name, mode, f1, f2, ts["kld_mean"], ts2["kld_mean"], wk["kld_mean"], wk2["kld_mean"],
            ts["ppl"], ts2["ppl"]))
    lines.append("")
    lines.append("Produced by `python3 scripts/results/eigen_results.py%s` on %s (%s, %d cores) "
                 "in %.0f s." % (" --quick" if a.quick else "", datetime.date.today().isoformat(),
                                 platform.processor() or platform.machine(), os.cpu_count(),
                                 time.time() - started))
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    open(a.out, "w").write("\n".join(lines) + "\n")
    print("wrote", a.out, file=sys.stderr)


if __name__ == "__main__":
    main()
