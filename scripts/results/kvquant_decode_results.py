#!/usr/bin/env python3
"""Produces docs/results/kvquant_decode.md: perplexity through the decode kernels (issue 6).

A prefill scores a window with float arithmetic; generation decodes one token at a time, and on
x86 machines with AVX-512 VNNI the decode kernels read int8/int4 caches with integer dot products
(queries rounded to int8 per group of 32, softmax weights to 15 bits). This scores the same
windows as kvquant_results.py (second half of ../shared/data/tinystories/valid_a.txt, ctx 256,
60 windows) token by token (`eigenkv perplexity --decode`), every model, f16/int8/int4 caches,
KLD against the same model with a float32 cache, also decoded.

  python3 scripts/results/kvquant_decode_results.py [--out docs/results/kvquant_decode.md]
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from eigen_results import split_valid_a  # noqa: E402
from kvquant_results import MODELS, ROOT, SHARED, finish, ppl  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "results", "kvquant_decode.md"))
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="eigenkv_kvdecode_")
    _, evalp = split_valid_a(tmp)
    started = time.time()
    lines = ["### The decode path\n",
             "The texts of the table above fed one token at a time (`perplexity --decode`), as "
             "generation runs: decoding reads int8/int4 caches with integer dot products on "
             "AVX-512 VNNI machines (queries rounded to int8 per group of 32, softmax weights to "
             "15 bits), while a prefill scores with float arithmetic. KLD against the same model "
             "with a float32 cache, also decoded.\n",
             "| model | PPL f16 | PPL int8 | int8 / f16 | KLD int8 | PPL int4 | int4 / f16 | KLD int4 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, rel in MODELS:
        path = os.path.join(SHARED, rel)
        if not os.path.exists(path):
            lines.append("| %s | absent | | | | | | |" % name)
            continue
        r16, r8, r4 = (ppl(path, path, evalp, c, decode=True) for c in ("f16", "int8", "int4"))
        lines.append("| %s | %.4f | %.4f | %.4f | %.5f | %.4f | %.4f | %.5f |" % (
            name, r16["ppl"], r8["ppl"], r8["ppl"] / r16["ppl"], r8["kld_mean"],
            r4["ppl"], r4["ppl"] / r16["ppl"], r4["kld_mean"]))
        print("%s after %.0f s" % (name, time.time() - started), file=sys.stderr)
    lines.append("")
    finish(lines, "kvquant_decode_results.py", started, a.out)

if __name__ == "__main__":
    main()
