"""Pieces shared by the model families of the float64 reference: errors, the config holder,
Hugging Face config / vocabulary reading, token decoding, LayerNorm, exact GELU and causal
attention with an optional additive score bias. Everything is float64."""

import json
import math
import os

import numpy as np


class ModelError(Exception):
    pass


class Config:
    def __init__(self, **kw):
        self.__dict__.update(kw)

    def to_json(self):
        d = dict(self.__dict__)
        for k, v in d.items():
            if isinstance(v, np.ndarray):
                d[k] = [float(x) for x in v]
        return d


def read_hf_config(path):
    cpath = os.path.join(path, "config.json")
    if not os.path.exists(cpath):
        raise ModelError("%s: no config.json" % path)
    with open(cpath) as f:
        return json.load(f)


def hf_tensor_types(st):
    return sorted({f.entries[n]["dtype"] for f in st.files for n in f.entries})


class VocabMixin:
    """vocab_tokens / vocab_kind / special_ids from a tokenizer.json, and decode()."""

    vocab_tokens = None      # list of token strings (for decoding), when known
    vocab_kind = None        # "spm" (▁ and <0xNN>) or "bytelevel"

    def load_hf_vocab(self, path):
        self.special_ids = set()
        tpath = os.path.join(path, "tokenizer.json")
        if not os.path.exists(tpath):
            return
        with open(tpath, encoding="utf-8") as f:
            tj = json.load(f)
        vocab = tj.get("model", {}).get("vocab", {})
        if isinstance(vocab, dict) and vocab:
            toks = [""] * (max(vocab.values()) + 1)
            for t, i in vocab.items():
                toks[i] = t
            for a in tj.get("added_tokens", []):
                if a["id"] >= len(toks):
                    toks.extend([""] * (a["id"] + 1 - len(toks)))
                toks[a["id"]] = a["content"]
                if a.get("special"):
                    self.special_ids.add(a["id"])
            self.vocab_tokens = toks
            self.vocab_kind = "spm" if tj.get("model", {}).get("byte_fallback") or \
                "ByteFallback" in json.dumps(tj.get("decoder")) else "bytelevel"

    def decode(self, ids):
        if self.vocab_tokens is None:
            raise ModelError("no vocabulary in this model")
        out = bytearray()
        for i in ids:
            if i in self.special_ids:
                continue
            t = self.vocab_tokens[i]
            if self.vocab_kind == "spm":
                if len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
                    out.append(int(t[3:5], 16))
                else:
                    out += t.replace("\u2581", " ").encode("utf-8")
            else:
                out += bytes(_BYTE_DECODER.get(ch, ord("?")) for ch in t)
        s = out.decode("utf-8", errors="replace")
        if self.vocab_kind == "spm" and s.startswith(" "):
            s = s[1:]
        return s


def _bytes_to_unicode():
    """GPT-2 byte-level alphabet: printable bytes map to themselves, the rest to 256+n."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + \
        list(range(0xAE, 0x100))
    m = {}
    n = 0
    for b in range(256):
        if b in keep:
            m[b] = chr(b)
        else:
            m[b] = chr(256 + n)
            n += 1
    return m


_BYTE_DECODER = {v: k for k, v in _bytes_to_unicode().items()}


def check_shapes(what, tensors, want):
    """tensors: {name: array}; want: {name: shape}. Absent names are not checked."""
    for k, v in tensors.items():
        if k in want and v.shape != tuple(want[k]):
            raise ModelError("%s: %s has shape %s, expected %s" % (what, k, v.shape, want[k]))


def layer_norm(x, w, b, eps):
    """torch.nn.LayerNorm over the last axis (biased variance); w or b may be None."""
    mu = x.mean(axis=-1, keepdims=True)
    z = x - mu
    y = z / np.sqrt(np.mean(z * z, axis=-1, keepdims=True) + eps)
    if w is not None:
        y = y * w
    if b is not None:
        y = y + b
    return y


# erf by Taylor series about the nearest of the centres c_j = j/4, j = 0..24 (|x - c_j| <= 1/8):
# erf^(k)(c) = 2/sqrt(pi) * (-1)^(k-1) * H_(k-1)(c) * exp(-c^2) (physicists' Hermite
# polynomials), erf(c_j) from math.erf; 24 terms leave a remainder below 1e-17. |x| >= 6.125:
# math.erf element by element (+-1 to double precision). Checked against math.erf to 2e-15.
_ERF_STEP = 0.25
_ERF_TERMS = 24


def _erf_table():
    cs = np.arange(25) * _ERF_STEP
    tab = np.zeros((len(cs), _ERF_TERMS + 1))
    for j, c in enumerate(cs):
        h_prev, h = 0.0, 1.0                       # H_(-1) (unused), H_0
        tab[j, 0] = math.erf(c)
        fact = 1.0
        for k in range(1, _ERF_TERMS + 1):         # coefficient of h^k: erf^(k)(c) / k!
            fact *= k
            tab[j, k] = 2.0 / math.sqrt(math.pi) * (-1) ** (k - 1) * h * math.exp(-c * c) / fact
            n = k - 1                              # H_(n+1) = 2c H_n - 2n H_(n-1)
            h_prev, h = h, 2.0 * c * h - 2.0 * n * h_prev
    return tab


_ERF_TAB = _erf_table()
_ERF_ROWS = _ERF_TAB[:, ::-1].T.copy()             # (terms, centres), highest power first
_math_erf = np.frompyfunc(math.erf, 1, 1)


def erf(x):
    x = np.asarray(x, dtype=np.float64)
    ax = np.abs(x)
    j = np.minimum(np.rint(ax / _ERF_STEP).astype(np.int64), len(_ERF_TAB) - 1)
    h = ax - j * _ERF_STEP
    acc = np.take(_ERF_ROWS[0], j)
    for row in _ERF_ROWS[1:]:
        acc *= h
        acc += np.take(row, j)
    out = np.copysign(acc, x)
    big = ax > len(_ERF_TAB) * _ERF_STEP - _ERF_STEP / 2
    if np.any(big):
        out[big] = _math_erf(x[big]).astype(np.float64)
    return out


def gelu_exact(x):
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def causal_attention(q, k, v, scale, bias=None):
    """q: (B, H, T, dh); k, v: (B, KV, T, dh) with H a multiple of KV (query head h uses KV
    head h // (H/KV)); bias: None or (H, T, T) added to the scaled scores before the causal mask.
    Returns (B, T, H*dh)."""
    B, H, T, dh = q.shape
    KV = k.shape[1]
    g = H // KV
    s = q.reshape(B, KV, g * T, dh) @ k.swapaxes(-1, -2)          # (B, KV, g*T, T)
    s = s.reshape(B, KV, g, T, T)
    s *= scale
    if bias is not None:
        s += bias.reshape(KV, g, T, T)
    s += np.triu(np.full((T, T), -np.inf), k=1)
    s -= s.max(axis=-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    o = s.reshape(B, KV, g * T, T) @ v                              # (B, KV, g*T, dh)
    return o.reshape(B, H, T, dh).transpose(0, 2, 1, 3).reshape(B, T, H * dh)


def check_tokens(tokens, vocab_size):
    tokens = np.asarray(tokens, dtype=np.int64)
    squeeze = tokens.ndim == 1
    if squeeze:
        tokens = tokens[None, :]
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ModelError("token id out of range [0, %d)" % vocab_size)
    return tokens, squeeze
