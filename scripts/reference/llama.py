"""Float64 Llama forward pass for GGUF ("llama" architecture) and Hugging Face
(LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM) checkpoints.

Qwen2 is this forward pass with biases on q, k and v (always present; o_proj and the MLP have
none), rotate-half RoPE and `tie_word_embeddings` defaulting to false (as in Llama's config).

Per layer:  h = x + Wo · attn(RoPE(Wq·n), RoPE(Wk·n), Wv·n),  n = RMSNorm(x)
            y = h + Wdown · (silu(Wgate·m) * Wup·m),          m = RMSNorm(h)
Output:     logits = Wout · RMSNorm(y)   (Wout = token embeddings when tied)

RoPE pairs: GGUF "llama" rotates adjacent pairs (x[2i], x[2i+1]); Hugging Face rotates halves
(x[i], x[i + n_rot/2]). Each format is run in its own layout; weights are never permuted.
Frequency of pair i: theta_i = base^(-2i/n_rot) / f_i, where f_i comes from GGUF's
`rope_freqs.weight` or from HF's llama3 rope_scaling rule (linear scaling divides all by the
factor). Everything, including the dequantised weights, is float64.
"""

import math
import os

import numpy as np

from common import Config, ModelError, VocabMixin, hf_tensor_types, read_hf_config
from gguf_reader import GGUFFile, GGUFError
from safetensors_reader import SafetensorsModel


def _llama3_factors(n_rot, base, rs):
    """HF rope_type "llama3": per-pair divisor f_i of the inverse frequency."""
    factor = float(rs["factor"])
    low = float(rs.get("low_freq_factor", 1.0))
    high = float(rs.get("high_freq_factor", 4.0))
    old_ctx = float(rs.get("original_max_position_embeddings", 8192))
    inv = base ** (-np.arange(0, n_rot, 2, dtype=np.float64) / n_rot)
    wavelen = 2.0 * math.pi / inv
    low_wl = old_ctx / low
    high_wl = old_ctx / high
    f = np.ones_like(inv)
    f[wavelen > low_wl] = factor
    mid = (wavelen <= low_wl) & (wavelen >= high_wl)
    smooth = (old_ctx / wavelen[mid] - low) / (high - low)
    # new inv freq = (1 - smooth) * inv / factor + smooth * inv  =>  divisor:
    f[mid] = 1.0 / ((1.0 - smooth) / factor + smooth)
    return f


class LlamaModel(VocabMixin):
    """Weights in float64, shapes (out, in) as stored by both formats."""

    def __init__(self, path):
        self.path = path
        self.special_ids = set()
        if os.path.isdir(path) or path.endswith(".safetensors"):
            self._load_hf(path if os.path.isdir(path) else os.path.dirname(path) or ".")
        elif os.path.isfile(path):
            with open(path, "rb") as f:
                magic = f.read(4)
            if magic != b"GGUF":
                raise ModelError("%s: neither a GGUF file nor a Hugging Face directory" % path)
            self._load_gguf(path)
        else:
            raise ModelError("%s: no such file or directory" % path)
        self._check_shapes()
        self._rope_cache = {}

    # ---------------------------------------------------------------- loading: GGUF
    def _load_gguf(self, path):
        g = GGUFFile(path)
        self.gguf = g
        arch = g.get("general.architecture")
        if arch != "llama":
            raise ModelError("%s: GGUF architecture %r is not supported by this reference "
                             "(supported: llama)" % (path, arch))

        def need(key):
            v = g.get("llama." + key)
            if v is None:
                raise ModelError("%s: missing metadata llama.%s" % (path, key))
            return v

        d = int(need("embedding_length"))
        n_head = int(need("attention.head_count"))
        n_kv = int(g.get("llama.attention.head_count_kv", n_head))
        head_dim = int(g.get("llama.attention.key_length", d // n_head))
        vdim = int(g.get("llama.attention.value_length", head_dim))
        if vdim != head_dim:
            raise ModelError("%s: key_length %d != value_length %d is not supported"
                             % (path, head_dim, vdim))
        n_rot = int(g.get("llama.rope.dimension_count", head_dim))
        base = float(g.get("llama.rope.freq_base", 10000.0))
        factors = np.ones(n_rot // 2)
        stype = g.get("llama.rope.scaling.type", "none")
        if stype == "linear":
            sf = g.get("llama.rope.scaling.factor")
            if sf is None:  # older key
                sf = 1.0 / float(g.get("llama.rope.scale_linear", 1.0))
            factors = factors * float(sf)
        elif stype not in ("none", None):
            raise ModelError("%s: rope scaling type %r is not supported (supported: none, "
                             "linear, rope_freqs tensor)" % (path, stype))
        if "rope_freqs.weight" in g.tensors:
            rf = g.tensor("rope_freqs.weight").reshape(-1)
            if rf.size != n_rot // 2:
                raise ModelError("%s: rope_freqs has %d entries, expected %d"
                                 % (path, rf.size, n_rot // 2))
            factors = factors * rf
        self.cfg = Config(
            format="gguf", arch="llama",
            n_layer=int(need("block_count")), d_model=d, n_head=n_head, n_kv_head=n_kv,
            head_dim=head_dim, n_rot=n_rot, d_ff=int(need("feed_forward_length")),
            vocab_size=None, rms_eps=float(need("attention.layer_norm_rms_epsilon")),
            rope_base=base, rope_style="adjacent",
            rope_freq_factors=None if np.all(factors == 1.0) else factors,
            context_length=int(g.get("llama.context_length", 0)),
            tied_embeddings="output.weight" not in g.tensors,
            bos_token_id=g.get("tokenizer.ggml.bos_token_id"),
            eos_token_id=g.get("tokenizer.ggml.eos_token_id"),
            tensor_types=sorted({t.type_name for t in g.tensors.values()}),
        )
        T = g.tensor
        self.tok_embd = T("token_embd.weight")
        self.cfg.vocab_size = self.tok_embd.shape[0]
        self.out_norm = T("output_norm.weight")
        self.output = self.tok_embd if self.cfg.tied_embeddings else T("output.weight")
        self.layers = []
        for i in range(self.cfg.n_layer):
            p = "blk.%d." % i
            L = dict(
                attn_norm=T(p + "attn_norm.weight"),
                wq=T(p + "attn_q.weight"), wk=T(p + "attn_k.weight"),
                wv=T(p + "attn_v.weight"), wo=T(p + "attn_output.weight"),
                ffn_norm=T(p + "ffn_norm.weight"),
                w_gate=T(p + "ffn_gate.weight"), w_up=T(p + "ffn_up.weight"),
                w_down=T(p + "ffn_down.weight"),
            )
            for b, n in (("bq", "attn_q.bias"), ("bk", "attn_k.bias"), ("bv", "attn_v.bias"),
                         ("bo", "attn_output.bias")):
                if p + n in g.tensors:
                    L[b] = T(p + n)
            if p + "ffn_gate_inp.weight" in g.tensors:
                raise ModelError("%s: mixture-of-experts llama GGUFs are not supported" % path)
            self.layers.append(L)
        toks = g.get("tokenizer.ggml.tokens")
        if toks is not None:
            self.vocab_tokens = toks
            model = g.get("tokenizer.ggml.model", "llama")
            self.vocab_kind = "bytelevel" if model == "gpt2" else "spm"
            ttypes = g.get("tokenizer.ggml.token_type") or []
            self.special_ids = {i for i, t in enumerate(ttypes) if t == 3}  # CONTROL

    # ---------------------------------------------------------------- loading: HF
    def _load_hf(self, path):
        c = read_hf_config(path)
        mtype = c.get("model_type")
        archs = c.get("architectures") or []
        known = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                 "qwen2": "Qwen2ForCausalLM"}
        if mtype not in known or (archs and known[mtype] not in archs):
            raise ModelError("%s: model_type %r / architectures %r not supported by llama.py "
                             "(supported: llama, mistral, qwen2)" % (path, mtype, archs))
        qwen2 = mtype == "qwen2"
        if mtype == "mistral" and c.get("sliding_window"):
            raise ModelError("%s: sliding-window attention is not supported" % path)
        if qwen2 and c.get("use_sliding_window"):
            raise ModelError("%s: use_sliding_window = true is not supported" % path)
        if qwen2 and any(t != "full_attention" for t in (c.get("layer_types") or [])):
            raise ModelError("%s: layer_types other than full_attention are not supported" % path)
        if c.get("hidden_act", "silu") != "silu":
            raise ModelError("%s: hidden_act %r not supported" % (path, c.get("hidden_act")))
        st = SafetensorsModel(path)
        d = int(c["hidden_size"])
        n_head = int(c["num_attention_heads"])
        n_kv = int(c.get("num_key_value_heads") or n_head)
        head_dim = int(c.get("head_dim") or d // n_head)
        base = float(c.get("rope_theta", 10000.0))
        n_rot = head_dim
        factors = None
        rs = c.get("rope_scaling")
        if rs:
            rt = rs.get("rope_type", rs.get("type"))
            if rt == "llama3":
                factors = _llama3_factors(n_rot, base, rs)
            elif rt == "linear":
                factors = np.full(n_rot // 2, float(rs["factor"]))
            elif rt not in ("default", None):
                raise ModelError("%s: rope_scaling type %r not supported (supported: llama3, "
                                 "linear)" % (path, rt))
        has_embed = st.has("model.embed_tokens.weight")
        has_head = st.has("lm_head.weight")
        tie = bool(c.get("tie_word_embeddings", False))
        self.cfg = Config(
            format="hf", arch=mtype if qwen2 else "llama",
            n_layer=int(c["num_hidden_layers"]), d_model=d, n_head=n_head, n_kv_head=n_kv,
            head_dim=head_dim, n_rot=n_rot, d_ff=int(c["intermediate_size"]),
            vocab_size=int(c["vocab_size"]), rms_eps=float(c.get("rms_norm_eps", 1e-6)),
            rope_base=base, rope_style="halves", rope_freq_factors=factors,
            context_length=int(c.get("max_position_embeddings", 0)),
            tied_embeddings=tie or not has_head or not has_embed,
            bos_token_id=c.get("bos_token_id"), eos_token_id=c.get("eos_token_id"),
            tensor_types=hf_tensor_types(st),
        )
        if has_embed:
            self.tok_embd = st.tensor("model.embed_tokens.weight")
        elif has_head:
            self.tok_embd = st.tensor("lm_head.weight")
        else:
            raise ModelError("%s: neither model.embed_tokens.weight nor lm_head.weight" % path)
        if has_head and not tie:
            self.output = st.tensor("lm_head.weight")
        else:
            self.output = self.tok_embd
        self.out_norm = st.tensor("model.norm.weight")
        self.layers = []
        for i in range(self.cfg.n_layer):
            p = "model.layers.%d." % i
            T = lambda n: st.tensor(p + n)
            L = dict(
                attn_norm=T("input_layernorm.weight"),
                wq=T("self_attn.q_proj.weight"), wk=T("self_attn.k_proj.weight"),
                wv=T("self_attn.v_proj.weight"), wo=T("self_attn.o_proj.weight"),
                ffn_norm=T("post_attention_layernorm.weight"),
                w_gate=T("mlp.gate_proj.weight"), w_up=T("mlp.up_proj.weight"),
                w_down=T("mlp.down_proj.weight"),
            )
            for b, n in (("bq", "self_attn.q_proj.bias"), ("bk", "self_attn.k_proj.bias"),
                         ("bv", "self_attn.v_proj.bias"), ("bo", "self_attn.o_proj.bias")):
                if st.has(p + n):
                    L[b] = T(n)
            if qwen2:  # Qwen2Attention: q/k/v Linear layers with bias=True, o_proj without
                missing = [b for b in ("bq", "bk", "bv") if b not in L]
                if missing or "bo" in L:
                    raise ModelError("%s: Qwen2 layer %d: expected q/k/v biases and no o_proj "
                                     "bias (missing: %s)" % (path, i, ", ".join(missing)))
            for n in ("mlp.gate_proj.bias", "mlp.up_proj.bias", "mlp.down_proj.bias"):
                if st.has(p + n):
                    raise ModelError("%s: MLP biases are not supported" % path)
            self.layers.append(L)
        self.load_hf_vocab(path)

    def _check_shapes(self):
        c = self.cfg
        d, H, KV, dh, ff, V = c.d_model, c.n_head, c.n_kv_head, c.head_dim, c.d_ff, c.vocab_size
        if H % KV:
            raise ModelError("n_head %d is not a multiple of n_kv_head %d" % (H, KV))
        if c.n_rot > dh or c.n_rot % 2:
            raise ModelError("rope dimension %d invalid for head_dim %d" % (c.n_rot, dh))
        want = dict(attn_norm=(d,), wq=(H * dh, d), wk=(KV * dh, d), wv=(KV * dh, d),
                    wo=(d, H * dh), ffn_norm=(d,), w_gate=(ff, d), w_up=(ff, d), w_down=(d, ff),
                    bq=(H * dh,), bk=(KV * dh,), bv=(KV * dh,), bo=(d,))
        for i, L in enumerate(self.layers):
            for k, v in L.items():
                if v.shape != want[k]:
                    raise ModelError("layer %d: %s has shape %s, expected %s"
                                     % (i, k, v.shape, want[k]))
        if self.tok_embd.shape != (V, d):
            raise ModelError("token embeddings have shape %s, expected %s"
                             % (self.tok_embd.shape, (V, d)))
        if self.output.shape != (V, d):
            raise ModelError("output weight has shape %s, expected %s" % (self.output.shape, (V, d)))
        if self.out_norm.shape != (d,):
            raise ModelError("output norm has shape %s" % (self.out_norm.shape,))

    # ---------------------------------------------------------------- forward
    def _rope_tables(self, T):
        if T not in self._rope_cache:
            c = self.cfg
            half = c.n_rot // 2
            inv = c.rope_base ** (-np.arange(0, c.n_rot, 2, dtype=np.float64) / c.n_rot)
            if c.rope_freq_factors is not None:
                inv = inv / c.rope_freq_factors
            ang = np.arange(T, dtype=np.float64)[:, None] * inv[None, :]      # (T, half)
            self._rope_cache[T] = (np.cos(ang), np.sin(ang))
            assert ang.shape[1] == half
        return self._rope_cache[T]

    def _rope(self, x):
        """x: (B, heads, T, head_dim), positions 0..T-1."""
        c = self.cfg
        T = x.shape[2]
        cos, sin = self._rope_tables(T)
        out = x.copy()
        if c.rope_style == "adjacent":
            a = x[..., 0:c.n_rot:2]
            b = x[..., 1:c.n_rot:2]
            out[..., 0:c.n_rot:2] = a * cos - b * sin
            out[..., 1:c.n_rot:2] = a * sin + b * cos
        else:
            h = c.n_rot // 2
            a = x[..., 0:h]
            b = x[..., h:c.n_rot]
            out[..., 0:h] = a * cos - b * sin
            out[..., h:c.n_rot] = a * sin + b * cos
        return out

    def _rmsnorm(self, x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.cfg.rms_eps) * w

    def forward(self, tokens):
        """tokens: int array (B, T) or (T,), each row starting at position 0.
        Returns float64 logits (B, T, vocab) (or (T, vocab))."""
        tokens = np.asarray(tokens, dtype=np.int64)
        squeeze = tokens.ndim == 1
        if squeeze:
            tokens = tokens[None, :]
        c = self.cfg
        if tokens.size and (tokens.min() < 0 or tokens.max() >= c.vocab_size):
            raise ModelError("token id out of range [0, %d)" % c.vocab_size)
        B, T = tokens.shape
        H, KV, dh = c.n_head, c.n_kv_head, c.head_dim
        g = H // KV
        x = self.tok_embd[tokens]                                           # (B, T, d)
        mask = np.triu(np.full((T, T), -np.inf), k=1)
        scale = 1.0 / math.sqrt(dh)
        for L in self.layers:
            n = self._rmsnorm(x, L["attn_norm"])
            q = n @ L["wq"].T
            k = n @ L["wk"].T
            v = n @ L["wv"].T
            if "bq" in L:
                q += L["bq"]
            if "bk" in L:
                k += L["bk"]
            if "bv" in L:
                v += L["bv"]
            q = self._rope(q.reshape(B, T, H, dh).transpose(0, 2, 1, 3))    # (B, H, T, dh)
            k = self._rope(k.reshape(B, T, KV, dh).transpose(0, 2, 1, 3))   # (B, KV, T, dh)
            v = v.reshape(B, T, KV, dh).transpose(0, 2, 1, 3)
            # query head h uses KV head h // g: stack the g query heads of a group along the
            # rows so that each product is one plain (BLAS) matmul per (window, KV head)
            q = q.reshape(B, KV, g * T, dh)
            s = q @ k.swapaxes(-1, -2)                                      # (B, KV, g*T, T)
            s = s.reshape(B, KV, g, T, T)
            s *= scale
            s += mask
            s -= s.max(axis=-1, keepdims=True)
            np.exp(s, out=s)
            s /= s.sum(axis=-1, keepdims=True)
            o = s.reshape(B, KV, g * T, T) @ v                              # (B, KV, g*T, dh)
            o = o.reshape(B, H, T, dh).transpose(0, 2, 1, 3).reshape(B, T, H * dh)
            a = o @ L["wo"].T
            if "bo" in L:
                a += L["bo"]
            x = x + a
            m = self._rmsnorm(x, L["ffn_norm"])
            gate = m @ L["w_gate"].T
            up = m @ L["w_up"].T
            x = x + (gate / (1.0 + np.exp(-gate)) * up) @ L["w_down"].T
        logits = self._rmsnorm(x, self.out_norm) @ self.output.T
        return logits[0] if squeeze else logits

    def n_params(self):
        return int(sum(v.size for L in self.layers for v in L.values()) + self.tok_embd.size
                   + self.out_norm.size + (0 if self.output is self.tok_embd else self.output.size))


def load_model(path):
    try:
        return LlamaModel(path)
    except GGUFError as e:
        raise ModelError(str(e))
