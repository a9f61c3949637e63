"""Float64 OPT forward pass (Hugging Face OPTForCausalLM), from OPT's published semantics.

Embedding:  e = E[tokens] (vocab x P, P = word_embed_proj_dim); e = Win · e when P != d
            (project_in, no bias); x = e + Pos[t + 2] (learned positions, offset 2: token t of a
            window, counted from 0, reads row t + 2 of the (max_position_embeddings + 2) x d table).
Pre-LN (do_layer_norm_before, the default):
            x = x + Wo · attn(n) + bo,   n = LN1(x)       q = (Wq·n + bq) · head_dim^-0.5
            x = x + W2 · relu(W1 · LN2(x) + b1) + b2
Post-LN (do_layer_norm_before = false, e.g. opt-350m):
            x = LN1(x + Wo · attn(x) + bo);  x = LN2(x + W2 · relu(W1·x + b1) + b2)
Output:     final LayerNorm only when pre-LN and not _remove_final_layer_norm; then
            Wout · x when P != d (project_out, no bias); logits = E · x (tied lm_head unless
            tie_word_embeddings = false and lm_head.weight is stored).
LayerNorms are torch's (eps 1e-5, weight and bias; neither when layer_norm_elementwise_affine
is false). Linear biases exist when enable_bias (default true). Multi-head attention, causal.
"""

import math

import numpy as np

from common import (Config, ModelError, VocabMixin, causal_attention, check_shapes, check_tokens,
                    hf_tensor_types, layer_norm, read_hf_config)
from safetensors_reader import SafetensorsModel

_POSITION_OFFSET = 2
_LN_EPS = 1e-5  # torch.nn.LayerNorm's default; OPT does not change it


class OPTModel(VocabMixin):
    def __init__(self, path):
        self.path = path
        c = read_hf_config(path)
        archs = c.get("architectures") or []
        if c.get("model_type") != "opt" or (archs and "OPTForCausalLM" not in archs):
            raise ModelError("%s: not an OPTForCausalLM config" % path)
        act = c.get("activation_function", "relu")
        if act != "relu":
            raise ModelError("%s: activation_function %r is not supported (supported: relu)"
                             % (path, act))
        st = SafetensorsModel(path)
        d = int(c["hidden_size"])
        H = int(c["num_attention_heads"])
        if d % H:
            raise ModelError("%s: hidden_size %d is not a multiple of num_attention_heads %d"
                             % (path, d, H))
        P = int(c.get("word_embed_proj_dim") or d)
        before = bool(c.get("do_layer_norm_before", True))
        bias = bool(c.get("enable_bias", True))
        affine = bool(c.get("layer_norm_elementwise_affine", True))
        final_norm = before and not bool(c.get("_remove_final_layer_norm", False))
        self.cfg = Config(
            format="hf", arch="opt",
            n_layer=int(c["num_hidden_layers"]), d_model=d, n_head=H, n_kv_head=H,
            head_dim=d // H, d_ff=int(c["ffn_dim"]), vocab_size=int(c["vocab_size"]),
            word_embed_proj_dim=P, do_layer_norm_before=before, enable_bias=bias,
            layer_norm_elementwise_affine=affine, final_layer_norm=final_norm,
            ln_eps=_LN_EPS, position_offset=_POSITION_OFFSET,
            context_length=int(c.get("max_position_embeddings", 2048)),
            tied_embeddings=bool(c.get("tie_word_embeddings", True)) or not st.has("lm_head.weight"),
            bos_token_id=c.get("bos_token_id"), eos_token_id=c.get("eos_token_id"),
            tensor_types=hf_tensor_types(st),
        )
        cfg = self.cfg
        dec = "model.decoder."
        T = st.tensor
        opt = lambda n: st.tensor(n) if st.has(n) else None

        def need(n):
            if not st.has(n):
                raise ModelError("%s: missing tensor %s" % (path, n))
            return T(n)

        self.tok_embd = need(dec + "embed_tokens.weight")
        self.pos_embd = need(dec + "embed_positions.weight")
        self.output = self.tok_embd if cfg.tied_embeddings else T("lm_head.weight")
        self.project_in = need(dec + "project_in.weight") if P != d else None
        self.project_out = need(dec + "project_out.weight") if P != d else None
        for n in ("project_in.weight", "project_out.weight"):
            if P == d and st.has(dec + n):
                raise ModelError("%s: %s stored although word_embed_proj_dim == hidden_size"
                                 % (path, dec + n))
        if final_norm:
            self.out_norm = (need(dec + "final_layer_norm.weight"),
                             need(dec + "final_layer_norm.bias")) if affine else (None, None)
        else:
            self.out_norm = None
            if st.has(dec + "final_layer_norm.weight"):
                raise ModelError("%s: %s stored, but this config has no final LayerNorm "
                                 "(do_layer_norm_before=%s, _remove_final_layer_norm=%s)"
                                 % (path, dec + "final_layer_norm.weight", before,
                                    c.get("_remove_final_layer_norm", False)))
        self.layers = []
        for i in range(cfg.n_layer):
            p = dec + "layers.%d." % i
            L = dict(wq=need(p + "self_attn.q_proj.weight"), wk=need(p + "self_attn.k_proj.weight"),
                     wv=need(p + "self_attn.v_proj.weight"),
                     wo=need(p + "self_attn.out_proj.weight"),
                     w1=need(p + "fc1.weight"), w2=need(p + "fc2.weight"))
            if affine:
                L.update(ln1_w=need(p + "self_attn_layer_norm.weight"),
                         ln1_b=need(p + "self_attn_layer_norm.bias"),
                         ln2_w=need(p + "final_layer_norm.weight"),
                         ln2_b=need(p + "final_layer_norm.bias"))
            for k, n in (("bq", "self_attn.q_proj.bias"), ("bk", "self_attn.k_proj.bias"),
                         ("bv", "self_attn.v_proj.bias"), ("bo", "self_attn.out_proj.bias"),
                         ("b1", "fc1.bias"), ("b2", "fc2.bias")):
                if bias:
                    L[k] = need(p + n)
                elif st.has(p + n):
                    raise ModelError("%s: %s stored although enable_bias is false" % (path, p + n))
            self.layers.append(L)
        V, F = cfg.vocab_size, cfg.d_ff
        want = dict(wq=(d, d), wk=(d, d), wv=(d, d), wo=(d, d), w1=(F, d), w2=(d, F),
                    bq=(d,), bk=(d,), bv=(d,), bo=(d,), b1=(F,), b2=(d,),
                    ln1_w=(d,), ln1_b=(d,), ln2_w=(d,), ln2_b=(d,))
        for i, L in enumerate(self.layers):
            check_shapes("%s: layer %d" % (path, i), L, want)
        check_shapes(path, dict(embed_tokens=self.tok_embd, lm_head=self.output,
                                embed_positions=self.pos_embd),
                     dict(embed_tokens=(V, P), lm_head=(V, P),
                          embed_positions=(cfg.context_length + _POSITION_OFFSET, d)))
        if P != d:
            check_shapes(path, dict(project_in=self.project_in, project_out=self.project_out),
                         dict(project_in=(d, P), project_out=(P, d)))
        self.load_hf_vocab(path)

    def n_params(self):
        n = sum(v.size for L in self.layers for v in L.values()) + self.tok_embd.size + \
            self.pos_embd.size
        for t in (self.project_in, self.project_out):
            n += 0 if t is None else t.size
        if self.out_norm is not None:
            n += sum(0 if t is None else t.size for t in self.out_norm)
        if self.output is not self.tok_embd:
            n += self.output.size
        return int(n)

    def forward(self, tokens):
        """tokens: int array (B, T) or (T,), each row a window starting at position 0.
        Returns float64 logits (B, T, vocab) (or (T, vocab))."""
        c = self.cfg
        tokens, squeeze = check_tokens(tokens, c.vocab_size)
        B, T = tokens.shape
        if T > c.context_length:
            raise ModelError("%d tokens exceed the %d learned positions" % (T, c.context_length))
        H, dh = c.n_head, c.head_dim
        x = self.tok_embd[tokens]                                            # (B, T, P)
        if self.project_in is not None:
            x = x @ self.project_in.T                                        # (B, T, d)
        x = x + self.pos_embd[np.arange(T) + _POSITION_OFFSET]
        scale = 1.0 / math.sqrt(dh)

        def ln(x, w, b):
            return layer_norm(x, w, b, _LN_EPS)

        def add(y, L, k):
            return y + L[k] if k in L else y

        for L in self.layers:
            n = ln(x, L.get("ln1_w"), L.get("ln1_b")) if c.do_layer_norm_before else x
            q = add(n @ L["wq"].T, L, "bq") * scale     # OPT scales q after its bias
            k = add(n @ L["wk"].T, L, "bk")
            v = add(n @ L["wv"].T, L, "bv")
            q = q.reshape(B, T, H, dh).transpose(0, 2, 1, 3)
            k = k.reshape(B, T, H, dh).transpose(0, 2, 1, 3)
            v = v.reshape(B, T, H, dh).transpose(0, 2, 1, 3)
            o = causal_attention(q, k, v, 1.0)
            x = x + add(o @ L["wo"].T, L, "bo")
            if not c.do_layer_norm_before:
                x = ln(x, L.get("ln1_w"), L.get("ln1_b"))
            m = ln(x, L.get("ln2_w"), L.get("ln2_b")) if c.do_layer_norm_before else x
            h = np.maximum(add(m @ L["w1"].T, L, "b1"), 0.0)
            x = x + add(h @ L["w2"].T, L, "b2")
            if not c.do_layer_norm_before:
                x = ln(x, L.get("ln2_w"), L.get("ln2_b"))
        if self.out_norm is not None:
            x = ln(x, *self.out_norm)
        if self.project_out is not None:
            x = x @ self.project_out.T                                       # (B, T, P)
        logits = x @ self.output.T
        return logits[0] if squeeze else logits

