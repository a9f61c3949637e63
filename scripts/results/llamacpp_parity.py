#!/usr/bin/env python3
"""llama.cpp beside eigenkv on the GGUF files `eigenkv convert` writes: the tokens each gives the
same text (llama-tokenize vs eigenkv tokenize) and the perplexity each measures by llama-perplexity's
protocol (BOS at each window start, second half of each window scored; eigenkv perplexity
--llamacpp-protocol), on the same file, text and context.

  python3 scripts/results/llamacpp_parity.py --llama-dir LLAMA_BIN_DIR \
      [--models models/mpt-tiny-hf,models/qwen2-tiny-hf] [--types f32,f16] [--ctx 128] \
      [--chunks 40] [--out docs/RESULTS.md]

LLAMA_BIN_DIR holds llama-perplexity and llama-tokenize built from a llama.cpp snapshot. Models are
paths under ../shared. With --out, the section between this script's markers in that file is
replaced (or appended).
"""
import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from machine import cpu_line  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
BIN = os.path.join(ROOT, "build", "eigenkv")
BEGIN = "<!-- llama.cpp parity: begin (scripts/results/llamacpp_parity.py) -->"
END = "<!-- llama.cpp parity: end -->"


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-2000:]}{p.stderr[-2000:]}")
    return p.stdout, p.stderr


def llama_tokens(llama_dir, gguf, text_file):
    out, _ = run([os.path.join(llama_dir, "llama-tokenize"), "-m", gguf, "-f", text_file, "--ids",
                  "--log-disable"])
    return json.loads(out.strip().splitlines()[-1])


def eigenkv_tokens(gguf, text_file):
    out, _ = run([BIN, "tokenize", "-m", gguf, "-f", text_file, "--json"])
    return json.loads(out)["ids"]


def llama_ppl(llama_dir, gguf, text_file, ctx, chunks, threads):
    out, err = run([os.path.join(llama_dir, "llama-perplexity"), "-m", gguf, "-f", text_file, "-c",
                    str(ctx), "-b", str(ctx), "--chunks", str(chunks), "-t", str(threads)])
    m = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", out + err)
    if not m:
        sys.exit(f"error: no final estimate in llama-perplexity's output:\n{(out + err)[-2000:]}")
    return float(m.group(1))


def eigenkv_ppl(gguf, text_file, ctx, chunks, threads):
    out, _ = run([BIN, "perplexity", "-m", gguf, "-f", text_file, "--ctx", str(ctx),
                  "--max-windows", str(chunks), "--llamacpp-protocol", "--json", "-t",
                  str(threads)])
    r = json.loads(out.strip().splitlines()[-1])
    return r["ppl"], r["windows"], r["tokens_scored"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--llama-dir", required=True)
    ap.add_argument("--llama-commit", default="", help="the snapshot's commit, for the record")
    ap.add_argument("--models", default="models/mpt-tiny-hf,models/qwen2-tiny-hf")
    ap.add_argument("--types", default="f32,f16")
    ap.add_argument("--text", default="data/tinystories/valid_a.txt")
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--chunks", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    text_file = os.path.join(SHARED, a.text)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in a.models.split(","):
            for t in a.types.split(","):
                gguf = os.path.join(tmp, os.path.basename(model) + "-" + t + ".gguf")
                run([BIN, "convert", "-m", os.path.join(SHARED, model), "-o", gguf, "--type", t])
                same_tokens = llama_tokens(a.llama_dir, gguf, text_file) == eigenkv_tokens(gguf, text_file)
                ours, windows, scored = eigenkv_ppl(gguf, text_file, a.ctx, a.chunks, a.threads)
                theirs = llama_ppl(a.llama_dir, gguf, text_file, a.ctx, a.chunks, a.threads)
                rel = abs(ours - theirs) / theirs
                rows.append((model, t, same_tokens, windows, scored, ours, theirs, rel))
                print(f"{model} {t}: tokens {'equal' if same_tokens else 'DIFFER'}, "
                      f"eigenkv {ours:.4f} llama.cpp {theirs:.4f} rel {rel:.2e}", flush=True)
    lines = [BEGIN, "",
             f"Command: `python3 scripts/results/llamacpp_parity.py --llama-dir {a.llama_dir}"
             f" --models {a.models} --types {a.types} --ctx {a.ctx} --chunks {a.chunks}`  ",
             f"Machine: {cpu_line()}; {datetime.date.today().isoformat()}; llama.cpp "
             f"{a.llama_commit or '(commit not given)'}.  ",
             f"Text: ../shared/{a.text}; each GGUF written by `eigenkv convert --type T` from the "
             "Hugging Face directory; llama-perplexity -c CTX -b CTX --chunks N beside eigenkv "
             "perplexity --llamacpp-protocol --ctx CTX --max-windows N on the same file. llama.cpp "
             "prints PPL to 4 decimals.",
             "",
             "| model | type | same tokens | windows | scored | eigenkv PPL | llama.cpp PPL | rel. diff |",
             "|---|---|---|---|---|---|---|---|"]
    for model, t, same, windows, scored, ours, theirs, rel in rows:
        lines.append(f"| {os.path.basename(model)} | {t} | {'yes' if same else 'NO'} | {windows} | "
                     f"{scored} | {ours:.4f} | {theirs:.4f} | {rel:.1e} |")
    lines += ["", END]
    section = "\n".join(lines)
    print(section)
    if a.out:
        doc = open(a.out).read() if os.path.exists(a.out) else ""
        if BEGIN in doc and END in doc:
            doc = doc[:doc.index(BEGIN)] + section + doc[doc.index(END) + len(END):]
        else:
            doc = doc.rstrip("\n") + "\n\n## llama.cpp on eigenkv's converted files\n\n" + section + "\n"
        open(a.out, "w").write(doc)
    if any(not r[2] or r[7] > 1e-3 for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
