"""Float64 MPT forward pass (Hugging Face MptForCausalLM / MosaicML's MPTForCausalLM).

Per block:  qkv = Wqkv · LN1(x) (+ bias);  qkv = clamp(qkv, -clip_qkv, clip_qkv) when set;
            rows of Wqkv: q (d_model) | k (kv_heads·head_dim) | v (kv_heads·head_dim)
            scores = softmax_scale · q·k + ALiBi,  softmax_scale default 1/sqrt(head_dim)
            x = x + Wout · attn (+ bias)
            x = x + Wdown · gelu(Wup · LN2(x) (+ bias)) (+ bias),   exact erf GELU
Output:     logits = E · LN_f(x)  (tied to transformer.wte unless tie_word_embeddings = false)

ALiBi (MosaicML's gen_slopes / build_alibi_bias): with n' = the next power of two >= n_heads,
m_i = 2^(-(i+1)·alibi_bias_max/n') for i = 0..n'-1; when n' != n_heads the slopes are
m[1::2] followed by m[0::2], cut to n_heads. Head h adds m_h·(key_pos - query_pos) to its scores
(MosaicML adds m_h·(key_pos - (T-1)); softmax is shift-invariant per row, so this is the same).
alibi_bias_max is read from attn_config as MosaicML's code and llama.cpp do; transformers'
MptForCausalLM ignores it (always 8), so the two readings only differ when it is not 8.
Without ALiBi, MosaicML's learned_pos_emb (default true) adds transformer.wpe[t] (no offset).

Biases and LayerNorm biases exist when no_bias is false (MosaicML's reading; transformers'
port never has them). LayerNorm eps = layer_norm_epsilon. FFN width = expansion_ratio·d_model
(transformers assumes 4; the tensors' shapes are checked). attn_type multihead_attention,
multiquery_attention (kv_heads 1) or grouped_query_attention (kv_n_heads). Refused: qk_ln,
qk_gn, prefix_lm, rope, sliding windows, logit_scale, other norm or FFN types.
"""

import math

import numpy as np

from common import (Config, ModelError, VocabMixin, causal_attention, check_shapes, check_tokens,
                    gelu_exact, hf_tensor_types, layer_norm, read_hf_config)
from safetensors_reader import SafetensorsModel


def alibi_slopes(n_heads, bias_max):
    n2 = 1 << (n_heads - 1).bit_length()
    m = np.array([2.0 ** (-(i + 1) * bias_max / n2) for i in range(n2)])
    if n2 != n_heads:
        m = np.concatenate([m[1::2], m[0::2]])[:n_heads]
    return m


class MPTModel(VocabMixin):
    def __init__(self, path):
        self.path = path
        c = read_hf_config(path)
        archs = c.get("architectures") or []
        if c.get("model_type") != "mpt" or (archs and not any(
                a in ("MptForCausalLM", "MPTForCausalLM") for a in archs)):
            raise ModelError("%s: not an MptForCausalLM config" % path)
        ac = dict(c.get("attn_config") or {})
        for key in ("qk_ln", "qk_gn", "prefix_lm", "rope", "attn_uses_sequence_id"):
            if ac.get(key):
                raise ModelError("%s: attn_config.%s = true is not supported" % (path, key))
        if ac.get("sliding_window_size", -1) not in (-1, None):
            raise ModelError("%s: attn_config.sliding_window_size is not supported" % path)
        if c.get("logit_scale") is not None:
            raise ModelError("%s: logit_scale is not supported" % path)
        norm = c.get("norm_type", "low_precision_layernorm")
        if norm not in ("low_precision_layernorm", "layernorm"):
            raise ModelError("%s: norm_type %r is not supported" % (path, norm))
        fc = c.get("ffn_config") or {}
        if fc.get("ffn_type", "mptmlp") != "mptmlp":
            raise ModelError("%s: ffn_config.ffn_type %r is not supported" % (path, fc["ffn_type"]))
        act = fc.get("ffn_act_fn")
        if act and (act.get("name", "gelu") != "gelu" or act.get("approximate", "none") != "none"):
            raise ModelError("%s: ffn_config.ffn_act_fn %r is not supported" % (path, act))
        st = SafetensorsModel(path)
        d = int(c["d_model"])
        H = int(c["n_heads"])
        if d % H:
            raise ModelError("%s: d_model %d is not a multiple of n_heads %d" % (path, d, H))
        dh = d // H
        atype = ac.get("attn_type", "multihead_attention")
        if atype == "multihead_attention":
            KV = H
        elif atype == "multiquery_attention":
            KV = 1
        elif atype == "grouped_query_attention":
            KV = int(ac["kv_n_heads"])
        else:
            raise ModelError("%s: attn_config.attn_type %r is not supported" % (path, atype))
        if H % KV:
            raise ModelError("%s: n_heads %d is not a multiple of kv_n_heads %d" % (path, H, KV))
        ratio = float(c.get("expansion_ratio", 4))
        F = int(ratio * d)
        alibi = bool(ac.get("alibi", False))
        bias_max = float(ac.get("alibi_bias_max", 8) if ac.get("alibi_bias_max") is not None else 8)
        clip = ac.get("clip_qkv") or None  # MosaicML: `if self.clip_qkv:` (0 = off)
        scale = ac.get("softmax_scale")
        no_bias = bool(c.get("no_bias", True))
        learned = not alibi and bool(c.get("learned_pos_emb", True))
        self.cfg = Config(
            format="hf", arch="mpt",
            n_layer=int(c["n_layers"]), d_model=d, n_head=H, n_kv_head=KV, head_dim=dh,
            d_ff=F, vocab_size=int(c["vocab_size"]), ln_eps=float(c.get("layer_norm_epsilon", 1e-5)),
            no_bias=no_bias, alibi=alibi, alibi_bias_max=bias_max,
            alibi_slopes=alibi_slopes(H, bias_max) if alibi else None,
            learned_pos_emb=learned,
            clip_qkv=None if clip is None else float(clip),
            softmax_scale=1.0 / math.sqrt(dh) if scale is None else float(scale),
            context_length=int(c.get("max_seq_len", 2048)),
            tied_embeddings=bool(c.get("tie_word_embeddings", True)) or not st.has("lm_head.weight"),
            bos_token_id=c.get("bos_token_id"), eos_token_id=c.get("eos_token_id"),
            tensor_types=hf_tensor_types(st),
        )
        cfg = self.cfg

        def need(n):
            if not st.has(n):
                raise ModelError("%s: missing tensor %s" % (path, n))
            return st.tensor(n)

        tr = "transformer."
        self.tok_embd = need(tr + "wte.weight")
        self.output = self.tok_embd if cfg.tied_embeddings else need("lm_head.weight")
        self.pos_embd = need(tr + "wpe.weight") if learned else None
        self.out_norm = (need(tr + "norm_f.weight"), None if no_bias else need(tr + "norm_f.bias"))
        self.layers = []
        names = dict(ln1_w="norm_1.weight", ln1_b="norm_1.bias", wqkv="attn.Wqkv.weight",
                     bqkv="attn.Wqkv.bias", wo="attn.out_proj.weight", bo="attn.out_proj.bias",
                     ln2_w="norm_2.weight", ln2_b="norm_2.bias", w_up="ffn.up_proj.weight",
                     b_up="ffn.up_proj.bias", w_down="ffn.down_proj.weight",
                     b_down="ffn.down_proj.bias")
        for i in range(cfg.n_layer):
            p = tr + "blocks.%d." % i
            L = {}
            for k, n in names.items():
                if k.startswith("b") or k.endswith("_b"):
                    if no_bias:
                        if st.has(p + n):
                            raise ModelError("%s: %s stored although no_bias is true"
                                             % (path, p + n))
                        continue
                L[k] = need(p + n)
            self.layers.append(L)
        qkv = d + 2 * KV * dh
        want = dict(ln1_w=(d,), ln1_b=(d,), wqkv=(qkv, d), bqkv=(qkv,), wo=(d, d), bo=(d,),
                    ln2_w=(d,), ln2_b=(d,), w_up=(F, d), b_up=(F,), w_down=(d, F), b_down=(d,))
        for i, L in enumerate(self.layers):
            check_shapes("%s: layer %d" % (path, i), L, want)
        V = cfg.vocab_size
        check_shapes(path, dict(wte=self.tok_embd, lm_head=self.output),
                     dict(wte=(V, d), lm_head=(V, d)))
        if learned:
            check_shapes(path, dict(wpe=self.pos_embd), dict(wpe=(cfg.context_length, d)))
        self.load_hf_vocab(path)

    def n_params(self):
        n = sum(v.size for L in self.layers for v in L.values()) + self.tok_embd.size
        n += sum(0 if t is None else t.size for t in self.out_norm)
        n += 0 if self.pos_embd is None else self.pos_embd.size
        n += 0 if self.output is self.tok_embd else self.output.size
        return int(n)

    def forward(self, tokens):
        """tokens: int array (B, T) or (T,), each row a window starting at position 0.
        Returns float64 logits (B, T, vocab) (or (T, vocab))."""
        c = self.cfg
        tokens, squeeze = check_tokens(tokens, c.vocab_size)
        B, T = tokens.shape
        H, KV, dh, d = c.n_head, c.n_kv_head, c.head_dim, c.d_model
        x = self.tok_embd[tokens]
        if self.pos_embd is not None:
            if T > c.context_length:
                raise ModelError("%d tokens exceed the %d learned positions"
                                 % (T, c.context_length))
            x = x + self.pos_embd[:T]
        bias = None
        if c.alibi:
            pos = np.arange(T, dtype=np.float64)
            bias = c.alibi_slopes[:, None, None] * (pos[None, None, :] - pos[None, :, None])
        for L in self.layers:
            n = layer_norm(x, L["ln1_w"], L.get("ln1_b"), c.ln_eps)
            qkv = n @ L["wqkv"].T
            if "bqkv" in L:
                qkv += L["bqkv"]
            if c.clip_qkv is not None:
                np.clip(qkv, -c.clip_qkv, c.clip_qkv, out=qkv)
            q = qkv[..., :d].reshape(B, T, H, dh).transpose(0, 2, 1, 3)
            k = qkv[..., d:d + KV * dh].reshape(B, T, KV, dh).transpose(0, 2, 1, 3)
            v = qkv[..., d + KV * dh:].reshape(B, T, KV, dh).transpose(0, 2, 1, 3)
            o = causal_attention(q, k, v, c.softmax_scale, bias)
            a = o @ L["wo"].T
            if "bo" in L:
                a += L["bo"]
            x = x + a
            m = layer_norm(x, L["ln2_w"], L.get("ln2_b"), c.ln_eps)
            h = m @ L["w_up"].T
            if "b_up" in L:
                h += L["b_up"]
            y = gelu_exact(h) @ L["w_down"].T
            if "b_down" in L:
                y += L["b_down"]
            x = x + y
        logits = layer_norm(x, *self.out_norm, c.ln_eps) @ self.output.T
        return logits[0] if squeeze else logits
