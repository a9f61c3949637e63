#!/usr/bin/env python3
"""Assembles docs/RESULTS.md from the hand-written reading of the numbers (docs/results/summary.md)
and the tables the result scripts wrote (docs/results/*.md)."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PARTS = ["summary.md", "reference.md", "llamacpp.md", "eigen.md", "families.md", "stief.md", "stief_variants.md",
         "stief_variants_rest.md", "kvquant.md", "kvquant_decode.md", "zeroshot.md"]


def main():
    out = ["# eigenkv results (quality)", "",
           "Every table below is written by a committed script from eigenkv's own `--json` output "
           "(the command, machine and date are under each table); the prose in the first section "
           "is our reading of them. Regenerate with `python3 scripts/results/reference_check.py`, "
           "`python3 scripts/results/eigen_results.py`, `llamacpp_parity.py`, `stief_results.py` (also "
           "for the families' section, with the arguments under its table), `kvquant_results.py`, `kvquant_decode_results.py`, "
           "`zeroshot_results.py`, then this script.", ""]
    for part in PARTS:
        path = os.path.join(ROOT, "docs", "results", part)
        if os.path.exists(path):
            out.append(open(path).read().rstrip() + "\n")
    open(os.path.join(ROOT, "docs", "RESULTS.md"), "w").write("\n".join(out))


if __name__ == "__main__":
    main()
