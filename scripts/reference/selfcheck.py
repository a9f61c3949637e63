#!/usr/bin/python3
"""Self-checks of the float64 reference against facts stated in ../shared/README.md.

  /usr/bin/python3 scripts/reference/selfcheck.py [--models ../shared/models]
                                                  [--tokens-file IDS.json] [--windows 4]

(a) GGUF and HF copies of the same weights give the same logits (different RoPE layouts);
(b) stories260K greedy text from BOS; (c) TinyStories-656K greedy text from its BOS;
(d) KL divergence of the quantized GQA models from the F32 one, on the ids of
    --tokens-file (first --windows windows of 256), else on 400 greedy stories260K ids;
(e) opt-tiny-hf, mpt-tiny-hf, qwen2-tiny-hf against their golden_logits.json (made by an
    independent float64 implementation of each family's HF semantics): last-position logits of
    each sequence to 1e-6 relative (max|ours - golden| / max|golden|), the argmax at every
    position, and the greedy continuation of BOS + "Once upon a time".
Exits non-zero when (a)-(c) or (e) fail; prints JSON lines. Missing models are skipped.
"""

import argparse
import json
import os
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from models import load_model  # noqa: E402


def log(obj):
    print(json.dumps(obj), flush=True)


def greedy(m, toks, n):
    toks = list(toks)
    for _ in range(n):
        toks.append(int(np.argmax(m.forward(np.asarray(toks))[-1])))
    return toks


def log_softmax(x):
    z = x - x.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def main():
    p = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    p.add_argument("--models", default=os.path.join(here, "..", "..", "..", "shared", "models"))
    p.add_argument("--tokens-file")
    p.add_argument("--windows", type=int, default=4)
    a = p.parse_args()
    M = os.path.abspath(a.models)
    ok = True
    have = lambda n: os.path.exists(os.path.join(M, n))

    # (a) same weights, two formats
    rng = np.random.default_rng(0)
    for g, h in (("stories260K.gguf", "stories260K-hf"),
                 ("tinystories-c4-gqa.gguf", "tinystories-c4-gqa-hf")):
        if not (have(g) and have(h)):
            log({"check": "a", "skip": "missing %s or %s" % (g, h)})
            continue
        A, B = load_model(os.path.join(M, g)), load_model(os.path.join(M, h))
        toks = np.concatenate([[1], rng.integers(3, A.cfg.vocab_size, 511)])
        la, lb = A.forward(toks), B.forward(toks)
        d = float(np.abs(la - lb).max())
        good = d < 1e-10
        ok &= good
        log({"check": "a", "gguf": g, "hf": h, "tokens": len(toks), "max_abs_logit_diff": d,
             "max_abs_logit": float(np.abs(la).max()), "pass": good})

    # (b), (c) greedy text
    for name, want, n in (
            ("stories260K.gguf", "Once upon a time, there was a little girl named Lily. She loved "
             "to play outside in the park.", 40),
            ("TinyStories-656K", "Once upon a time, there was a little girl named Lily.", 20)):
        if not have(name):
            log({"check": "greedy", "skip": "missing " + name})
            continue
        m = load_model(os.path.join(M, name))
        t0 = time.time()
        ids = greedy(m, [m.cfg.bos_token_id], n)
        text = m.decode(ids)
        good = text.startswith(want)
        ok &= good
        log({"check": "greedy", "model": name, "ids": ids, "text": text, "pass": good,
             "seconds": round(time.time() - t0, 2)})

    # (d) quantized vs F32
    base_path = os.path.join(M, "tinystories-c4-gqa.gguf")
    if have("tinystories-c4-gqa.gguf"):
        base = load_model(base_path)
        if a.tokens_file:
            with open(a.tokens_file) as f:
                ids = np.asarray(json.load(f)["ids"])
            wins = ids[:a.windows * 256].reshape(-1, 256)
            src = "%s, first %d windows of 256" % (a.tokens_file, len(wins))
        else:
            s = load_model(os.path.join(M, "stories260K.gguf"))
            wins = np.asarray(greedy(s, [1], 399))[None, :]
            src = "400 greedy stories260K ids"
        lb = log_softmax(base.forward(wins)[:, :-1])
        pb = np.exp(lb)
        for q in ("Q8_0", "Q6_K", "Q4_K_M", "Q4_0"):
            qp = os.path.join(M, "quantized", "tinystories-c4-gqa-%s.gguf" % q)
            if not os.path.exists(qp):
                log({"check": "d", "skip": "missing " + qp})
                continue
            lq = log_softmax(load_model(qp).forward(wins)[:, :-1])
            kl = (pb * (lb - lq)).sum(-1).reshape(-1)
            log({"check": "d", "quant": q, "tokens": src, "scored": int(kl.size),
                 "kld_mean": float(kl.mean()), "kld_p99": float(np.percentile(kl, 99)),
                 "top1_agreement": float((lb.argmax(-1) == lq.argmax(-1)).mean())})

    # (e) the OPT, MPT and Qwen2 families against their golden logits
    for name in ("opt-tiny-hf", "mpt-tiny-hf", "qwen2-tiny-hf"):
        gpath = os.path.join(M, name, "golden_logits.json")
        if not os.path.exists(gpath):
            log({"check": "e", "skip": "missing " + gpath})
            continue
        with open(gpath) as f:
            golden = json.load(f)
        m = load_model(os.path.join(M, name))
        worst = 0.0
        for seq, g in golden["sequences"].items():
            lg = m.forward(np.asarray(g["ids"]))
            ref = np.asarray(g["last_logits"])
            rel = float(np.abs(lg[-1] - ref).max() / np.abs(ref).max())
            argmax_ok = lg.argmax(-1).tolist() == g["argmax_per_position"]
            good = rel < 1e-6 and argmax_ok
            ok &= good
            worst = max(worst, rel)
            log({"check": "e", "model": name, "sequence": seq, "tokens": len(g["ids"]),
                 "max_rel_logit_diff": rel, "argmax_equal": argmax_ok, "pass": good})
        want = golden["greedy_from_bos_once_upon_a_time"]
        prompt = want[:5]   # BOS + "Once upon a time"
        ids = greedy(m, prompt, len(want) - len(prompt))
        good = ids == want
        ok &= good
        log({"check": "e", "model": name, "greedy": m.decode(ids), "pass": good,
             "worst_rel_logit_diff": worst})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
