#!/usr/bin/python3
"""Expected zero-shot scores of the hand-made tasks in tests/data/zeroshot/, from the float64
reference.

For every tiny task this script builds the prompts by lm-evaluation-harness's conventions
(written here again, independently of the C++), encodes each (context, continuation) pair as the
harness does (trailing whitespace of the context moved onto the continuation; the continuation's
ids are enc(context + continuation)[len(enc(context)):], or from the longest common prefix on
where a token spans the boundary) with `eigenkv tokenize`, scores the
continuations with `eigenkv_ref.py loglik` (numpy, float64), and derives acc and acc_norm
(numpy argmax; acc_norm divides by the choice's length in characters). One case repeats a task
with a 16-token context, cut from the left as the harness cuts. Writes
tests/data/zeroshot/expected_stories260K.json, which tests/zeroshot_test.cc checks.

  /usr/bin/python3 scripts/reference/make_zeroshot_fixture.py [--eigenkv build/eigenkv]
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = "tests/data/zeroshot"
MODEL = "../shared/models/stories260K.gguf"


def read_jsonl(rel):
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def question(q):
    q = q.rstrip()
    return (q if q.startswith("Question:") else "Question: " + q) + "\nAnswer:"


def query_items(rel, prompt):
    return [(prompt(d["query"]), [" " + c for c in d["choices"]], list(d["choices"]), d["gold"])
            for d in read_jsonl(rel)]


def copa_items(rel):
    out = []
    for d in read_jsonl(rel):
        q = d["query"].rstrip()
        for conn in ("because", "therefore"):
            if q.endswith(", " + conn):
                q = q[:-len(", " + conn)] + " " + conn
        ch = [c[0].lower() + c[1:] for c in d["choices"]]
        out.append((q, [" " + c for c in ch], ch, d["gold"]))
    return out


def winogrande_items(rel):
    out = []
    for d in read_jsonl(rel):
        rest = d["continuation"].strip()
        # partial scoring: one context per option, the same continuation
        out.append((list(d["context_options"]), [" " + rest] * 2, [rest] * 2, d["gold"]))
    return out


def hs_pre(text):
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def hellaswag_items(rel):
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        lines = f.read().rstrip("\n").split("\n")
    out = []
    for i in range(0, len(lines), 6):
        endings = [hs_pre(e) for e in lines[i + 2:i + 6]]
        out.append((hs_pre(lines[i]), [" " + e for e in endings], endings, int(lines[i + 1])))
    return out


def mmlu_items(rel, dev_rel, k):
    def text(d):
        s = d["question"].strip()
        for i, c in enumerate(d["choices"]):
            s += "\n%s. %s" % ("ABCDEFGHIJKLMNOPQRSTUVWXYZ"[i], c)
        return s + "\nAnswer:"

    def gold(d):
        a = d["answer"]
        return "ABCDEFGHIJKLMNOPQRSTUVWXYZ".index(a) if isinstance(a, str) else a

    dev = read_jsonl(dev_rel)
    out = []
    for d in read_jsonl(rel):
        shots = [s for s in dev if s["subject"] == d["subject"]][:k]
        prompt = ("The following are multiple choice questions (with answers) about %s.\n\n"
                  % " ".join(d["subject"].split("_")))
        prompt += "".join(text(s) + " " + "ABCD"[gold(s)] + "\n\n" for s in shots)
        letters = list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"[:len(d["choices"])])
        out.append((prompt + text(d), [" " + x for x in letters], letters, gold(d)))
    return out


class Tokenizer:
    def __init__(self, binary, model):
        self.binary, self.model, self.cache = binary, model, {}

    def __call__(self, text):
        if text not in self.cache:
            out = subprocess.run([self.binary, "tokenize", "-m", self.model, "-p", text, "--json"],
                                 check=True, capture_output=True, text=True).stdout
            self.cache[text] = json.loads(out)["ids"]
        return self.cache[text]


def encode_pair(tok, context, continuation):
    n = len(context) - len(context.rstrip())
    if n:
        continuation = context[-n:] + continuation
        context = context[:-n]
    whole = tok(context + continuation)
    ctx = tok(context)
    # where a token spans the boundary, split at the longest common prefix (docs/ZEROSHOT.md)
    n = 0
    while n < min(len(ctx), len(whole)) and ctx[n] == whole[n]:
        n += 1
    return whole[:n], whole[n:]


def loglik(requests):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"requests": [{"context": c, "continuation": k} for c, k in requests]}, f)
    try:
        out = subprocess.run(["/usr/bin/python3", os.path.join(ROOT, "scripts/reference/eigenkv_ref.py"),
                              "loglik", "-m", os.path.join(ROOT, MODEL), "--requests-file", f.name],
                             check=True, capture_output=True, text=True).stdout
    finally:
        os.unlink(f.name)
    return json.loads(out)["loglik"]


def score_case(tok, name, spec, items, has_norm, max_length=0, extra=None):
    reqs, shape, truncated = [], [], 0
    for ctxs, conts, _, _ in items:
        ctxs = ctxs if isinstance(ctxs, list) else [ctxs] * len(conts)
        cut = False
        for c, k in zip(ctxs, conts):
            ce, ke = encode_pair(tok, c, k)
            whole = ce + ke
            if max_length and len(whole) > max_length + 1:
                whole, cut = whole[-(max_length + 1):], True
            reqs.append((whole[:len(whole) - len(ke)], ke))
        truncated += cut
        shape.append(len(conts))
    flat = loglik(reqs)
    lls, acc, acc_norm, pred, pred_norm, margins = [], [], [], [], [], []
    pos = 0
    for (_, _, norm_text, gold), n in zip(items, shape):
        ll = np.array(flat[pos:pos + n])
        pos += n
        normed = ll / np.array([float(max(1, len(t))) for t in norm_text])
        lls.append(ll.tolist())
        pred.append(int(np.argmax(ll)))
        pred_norm.append(int(np.argmax(normed)))
        acc.append(float(pred[-1] == gold))
        acc_norm.append(float(pred_norm[-1] == gold))
        for v in (ll, normed):
            s = np.sort(v)
            margins.append(float(s[-1] - s[-2]))
    case = {"name": name, "spec": spec, "max_length": max_length, "n": len(items),
            "truncated": truncated, "loglik": lls, "pred": pred,
            "acc": float(np.mean(acc)), "acc_stderr": float(np.std(acc, ddof=1) / np.sqrt(len(acc))),
            "min_margin": min(margins)}
    if has_norm:
        case.update({"pred_norm": pred_norm, "acc_norm": float(np.mean(acc_norm)),
                     "acc_norm_stderr": float(np.std(acc_norm, ddof=1) / np.sqrt(len(acc)))})
    case.update(extra or {})
    return case


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--eigenkv", default=os.path.join(ROOT, "build", "eigenkv"))
    a = ap.parse_args()
    tok = Tokenizer(a.eigenkv, os.path.join(ROOT, MODEL))
    d = DATA
    cases = [
        score_case(tok, "tiny_arc", "arc_easy=%s/tiny_arc.jsonl" % d,
                   query_items(d + "/tiny_arc.jsonl", question), True),
        score_case(tok, "tiny_arc_ctx16", "arc_easy=%s/tiny_arc.jsonl" % d,
                   query_items(d + "/tiny_arc.jsonl", question), True, max_length=16),
        score_case(tok, "tiny_obqa", "openbookqa=%s/tiny_obqa.jsonl" % d,
                   query_items(d + "/tiny_obqa.jsonl", lambda q: q), True),
        score_case(tok, "tiny_copa", "copa=%s/tiny_copa.jsonl" % d,
                   copa_items(d + "/tiny_copa.jsonl"), True),
        score_case(tok, "tiny_winogrande", "winogrande=%s/tiny_winogrande.jsonl" % d,
                   winogrande_items(d + "/tiny_winogrande.jsonl"), False),
        score_case(tok, "tiny_hellaswag", "hellaswag=%s/tiny_hellaswag.txt" % d,
                   hellaswag_items(d + "/tiny_hellaswag.txt"), True),
        score_case(tok, "tiny_mmlu_1shot", "mmlu=%s/tiny_mmlu_test.jsonl" % d,
                   mmlu_items(d + "/tiny_mmlu_test.jsonl", d + "/tiny_mmlu_dev.jsonl", 1), False,
                   extra={"fewshot_file": d + "/tiny_mmlu_dev.jsonl", "num_fewshot": 1}),
    ]
    out = {"model": "models/stories260K.gguf",
           "generated_by": "scripts/reference/make_zeroshot_fixture.py (float64 numpy reference)",
           "cases": cases}
    path = os.path.join(ROOT, DATA, "expected_stories260K.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    for c in cases:
        print("%-16s n=%d truncated=%d acc=%.3f acc_norm=%s min margin %.3g"
              % (c["name"], c["n"], c["truncated"], c["acc"], c.get("acc_norm", "-"),
                 c["min_margin"]), file=sys.stderr)


if __name__ == "__main__":
    main()
