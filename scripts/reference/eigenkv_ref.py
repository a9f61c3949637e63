#!/usr/bin/python3
"""eigenkv_ref: independent float64 reference for eigenkv (Python standard library + numpy).

Run with Debian's /usr/bin/python3 (needs numpy). Commands (JSON on stdout):

  info        --model PATH
  logits      --model PATH (--tokens 1,2,3 | --tokens-file IDS.json) [--out F.npy]
  perplexity  --model PATH --tokens-file IDS.json --ctx 256 [--max-windows W]
  kld         --base PATH --model PATH --tokens-file IDS.json --ctx 256 [--max-windows W]
  dequant     --model PATH --tensor NAME --out F.npy
  generate    --model PATH [--tokens 1] [--n 40]          (greedy; prints ids and text)
  loglik      --model PATH --requests-file REQ.json
              REQ.json: {"requests": [{"context": [ids], "continuation": [ids]}, ...]};
              prints {"loglik": [...]}: per request the summed log-probability of the
              continuation ids given the context ids (one float64 forward pass each)

PATH is a GGUF file (llama) or a Hugging Face model directory (config.json + safetensors) of
the llama, mistral, qwen2, opt or mpt family.
IDS.json is {"ids": [...]} (BOS first), as `eigenkv tokenize --json` prints it.
Perplexity protocol (docs/DESIGN.md §5): consecutive non-overlapping windows of ctx tokens,
last partial window dropped, every token of a window but the first scored from its
predecessors inside the window; PPL = exp(mean NLL).
"""

import argparse
import json
import math
import os
import sys
import time

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from dequant import DequantError  # noqa: E402
from gguf_reader import GGUFError, GGUFFile  # noqa: E402
from models import ModelError, load_model  # noqa: E402
from safetensors_reader import SafetensorsError, SafetensorsModel  # noqa: E402

# target size of the largest float64 intermediate per batch of windows
_BATCH_BYTES = 192 << 20


def _emit(obj):
    json.dump(obj, sys.stdout, indent=None)
    sys.stdout.write("\n")


def _parse_tokens(s):
    try:
        return [int(t) for t in s.replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise SystemExit("error: --tokens must be comma-separated integers, got %r" % s)


def _read_ids(path):
    with open(path) as f:
        obj = json.load(f)
    ids = obj["ids"] if isinstance(obj, dict) else obj
    if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
        raise SystemExit("error: %s: expected {\"ids\": [int, ...]}" % path)
    return np.asarray(ids, dtype=np.int64)


def _windows(ids, ctx, max_windows):
    if ctx < 2:
        raise SystemExit("error: --ctx must be at least 2")
    n = len(ids) // ctx
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise SystemExit("error: %d tokens do not fill one window of %d" % (len(ids), ctx))
    return ids[:n * ctx].reshape(n, ctx)


def _batch_size(model, ctx):
    c = model.cfg
    per_window = 8 * ctx * max(c.vocab_size, c.n_head * ctx, c.d_ff, c.d_model)
    return max(1, _BATCH_BYTES // per_window)


def _log_softmax(logits):
    m = logits.max(axis=-1, keepdims=True)
    z = logits - m
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def cmd_info(a):
    m = load_model(a.model)
    d = m.cfg.to_json()
    d["path"] = a.model
    d["n_params"] = m.n_params()
    _emit(d)


def cmd_logits(a):
    m = load_model(a.model)
    if (a.tokens is None) == (a.tokens_file is None):
        raise SystemExit("error: give exactly one of --tokens and --tokens-file")
    toks = _parse_tokens(a.tokens) if a.tokens else _read_ids(a.tokens_file).tolist()
    if not toks:
        raise SystemExit("error: no tokens")
    t0 = time.time()
    lg = m.forward(np.asarray(toks))
    res = {"n_tokens": len(toks), "vocab_size": int(lg.shape[-1]),
           "seconds": round(time.time() - t0, 3)}
    if a.out:
        np.save(a.out, lg)
        res["out"] = a.out
        res["shape"] = list(lg.shape)
    else:
        res["last_logits"] = [float(x) for x in lg[-1]]
    _emit(res)


def _score_windows(model, wins):
    """Yields (batch_rows, logprobs of the scored positions (b, ctx-1, V))."""
    bs = _batch_size(model, wins.shape[1])
    for s in range(0, len(wins), bs):
        w = wins[s:s + bs]
        yield w, _log_softmax(model.forward(w)[:, :-1])


def _protocol(m, wins, a):
    """-> (windows, index of the first scored logit row)."""
    if not a.llamacpp_protocol:
        return wins, 0
    # llama.cpp's perplexity tool: BOS replaces each window's first token, and only the
    # second half of each window is scored (logit rows ctx/2 .. ctx-2).
    if m.cfg.bos_token_id is None:
        raise SystemExit("error: --llamacpp-protocol needs a BOS token id")
    wins = wins.copy()
    wins[:, 0] = m.cfg.bos_token_id
    return wins, wins.shape[1] // 2


def cmd_perplexity(a):
    m = load_model(a.model)
    ids = _read_ids(a.tokens_file)
    wins, first = _protocol(m, _windows(ids, a.ctx, a.max_windows), a)
    t0 = time.time()
    nll_sum = 0.0
    n = 0
    for w, lp in _score_windows(m, wins):
        tgt = w[:, 1:]
        nll = -np.take_along_axis(lp, tgt[..., None], axis=-1)[..., 0][:, first:]
        nll_sum += float(nll.sum())
        n += nll.size
    mean = nll_sum / n
    _emit({"ppl": math.exp(mean), "nll_mean": mean, "tokens_scored": n,
           "windows": int(len(wins)), "ctx": a.ctx, "n_ids": int(len(ids)),
           "protocol": "llama.cpp" if a.llamacpp_protocol else "eigenkv",
           "seconds": round(time.time() - t0, 2)})


def cmd_kld(a):
    base = load_model(a.base)
    m = load_model(a.model)
    if base.cfg.vocab_size != m.cfg.vocab_size:
        raise SystemExit("error: vocab sizes differ (%d vs %d)"
                         % (base.cfg.vocab_size, m.cfg.vocab_size))
    ids = _read_ids(a.tokens_file)
    wins, first = _protocol(base, _windows(ids, a.ctx, a.max_windows), a)
    t0 = time.time()
    kls, nll_b, nll_m, agree = [], 0.0, 0.0, 0
    bs = min(_batch_size(base, a.ctx), _batch_size(m, a.ctx))
    for s in range(0, len(wins), bs):
        w = wins[s:s + bs]
        lb = _log_softmax(base.forward(w)[:, first:-1])
        lm = _log_softmax(m.forward(w)[:, first:-1])
        kls.append((np.exp(lb) * (lb - lm)).sum(axis=-1).reshape(-1))
        tgt = w[:, first + 1:, None]
        nll_b -= float(np.take_along_axis(lb, tgt, axis=-1).sum())
        nll_m -= float(np.take_along_axis(lm, tgt, axis=-1).sum())
        agree += int((lb.argmax(-1) == lm.argmax(-1)).sum())
    kl = np.concatenate(kls)
    n = kl.size
    _emit({"kld_mean": float(kl.mean()), "kld_p99": float(np.percentile(kl, 99)),
           "kld_max": float(kl.max()), "top1_agreement": agree / n,
           "ppl_base": math.exp(nll_b / n), "ppl_model": math.exp(nll_m / n),
           "tokens_scored": n, "windows": int(len(wins)), "ctx": a.ctx,
           "protocol": "llama.cpp" if a.llamacpp_protocol else "eigenkv",
           "seconds": round(time.time() - t0, 2)})


def cmd_dequant(a):
    if os.path.isdir(a.model) or a.model.endswith(".safetensors"):
        st = SafetensorsModel(a.model)
        if not st.has(a.tensor):
            raise SystemExit("error: no tensor %r (have: %s)" % (a.tensor, ", ".join(st.names())))
        t = st.tensor(a.tensor)
        ttype = st.where[st.resolve(a.tensor)].entries[st.resolve(a.tensor)]["dtype"]
    else:
        g = GGUFFile(a.model)
        if a.tensor not in g.tensors:
            raise SystemExit("error: no tensor %r (have: %s)" % (a.tensor, ", ".join(g.tensors)))
        t = g.tensor(a.tensor)
        ttype = g.tensors[a.tensor].type_name
    np.save(a.out, t.astype(np.float64))
    _emit({"tensor": a.tensor, "type": ttype, "shape": list(t.shape), "out": a.out})


def cmd_generate(a):
    m = load_model(a.model)
    toks = _parse_tokens(a.tokens) if a.tokens else [int(m.cfg.bos_token_id or 1)]
    t0 = time.time()
    for _ in range(a.n):
        nxt = int(np.argmax(m.forward(np.asarray(toks))[-1]))
        toks.append(nxt)
        if a.stop_eos and nxt == m.cfg.eos_token_id:
            break
    res = {"ids": toks, "seconds": round(time.time() - t0, 2)}
    if m.vocab_tokens is not None:
        res["text"] = m.decode(toks)
    _emit(res)


def cmd_loglik(a):
    m = load_model(a.model)
    with open(a.requests_file) as f:
        reqs = json.load(f)["requests"]
    t0 = time.time()
    out = []
    for i, r in enumerate(reqs):
        ctx, cont = list(r["context"]), list(r["continuation"])
        if not ctx or not cont:
            raise SystemExit("error: request %d: context and continuation must be non-empty" % i)
        whole = ctx + cont
        lp = _log_softmax(m.forward(np.asarray(whole[:-1])))   # (len(whole) - 1, vocab)
        rows = np.arange(len(ctx) - 1, len(whole) - 1)
        out.append(float(lp[rows, np.asarray(cont)].sum()))
    _emit({"loglik": out, "seconds": round(time.time() - t0, 2)})


def main(argv=None):
    p = argparse.ArgumentParser(prog="eigenkv_ref.py", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("info")
    s.add_argument("--model", "-m", required=True)
    s = sub.add_parser("logits")
    s.add_argument("--model", "-m", required=True)
    s.add_argument("--tokens", help="comma-separated ids, e.g. 1,403,407")
    s.add_argument("--tokens-file", help='{"ids": [...]} instead of --tokens')
    s.add_argument("--out")
    for name in ("perplexity", "kld"):
        s = sub.add_parser(name)
        if name == "kld":
            s.add_argument("--base", required=True)
        s.add_argument("--model", "-m", required=True)
        s.add_argument("--tokens-file", required=True)
        s.add_argument("--ctx", type=int, default=256)
        s.add_argument("--max-windows", type=int)
        s.add_argument("--llamacpp-protocol", action="store_true",
                       help="BOS at each window start, score only the second half "
                            "(to compare with llama-perplexity; not the eigenkv protocol)")
    s = sub.add_parser("dequant")
    s.add_argument("--model", "-m", required=True)
    s.add_argument("--tensor", required=True)
    s.add_argument("--out", required=True)
    s = sub.add_parser("generate")
    s.add_argument("--model", "-m", required=True)
    s.add_argument("--tokens")
    s.add_argument("--n", type=int, default=40)
    s.add_argument("--stop-eos", action="store_true")
    s = sub.add_parser("loglik")
    s.add_argument("--model", "-m", required=True)
    s.add_argument("--requests-file", required=True)
    a = p.parse_args(argv)
    fn = {"loglik": cmd_loglik, "info": cmd_info, "logits": cmd_logits, "perplexity": cmd_perplexity,
          "kld": cmd_kld, "dequant": cmd_dequant, "generate": cmd_generate}[a.cmd]
    try:
        fn(a)
    except (ModelError, GGUFError, SafetensorsError, DequantError, OSError) as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
