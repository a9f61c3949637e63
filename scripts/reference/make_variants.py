#!/usr/bin/python3
"""Random-weight Hugging Face directories that turn on what the trained tiny models leave off.

  /usr/bin/python3 scripts/reference/make_variants.py OUT_DIR [--shared ../shared] [--seed 0]
                                                      [--only NAME[,NAME...]]

Writes OUT_DIR/NAME/{config.json, model.safetensors (F32, written here), tokenizer.json,
tokenizer_config.json (copied from the matching ../shared/models/*-tiny-hf)} for:

  opt-postln-proj   OPT, do_layer_norm_before = false (post-LN, hence no final LayerNorm),
                    word_embed_proj_dim 64 != hidden_size 128 (project_in / project_out)
  opt-postln        the same post-LN OPT without the projection (word_embed_proj_dim = hidden)
  mpt-clip-bias     MPT, no_bias = false (Wqkv, out_proj, up/down_proj and LayerNorm biases),
                    clip_qkv 0.8 (clamps about 40 % of q, k, v), 6 heads (not a power of
                    two: MosaicML's interleaved ALiBi slopes), ALiBi bias max 8
  mpt-gqa           MPT, attn_type grouped_query_attention with kv_n_heads 2 of 8 heads,
                    softmax_scale 0.2, expansion_ratio 2, no biases
  qwen2-untied-gqa  Qwen2, separate lm_head.weight, tie_word_embeddings absent from config.json
                    (Qwen2Config's default: false), 8 query heads over 2 KV heads

All: vocab 512 (the tiny models' tokenizer), 2 layers, head_dim 16 or 32, weights N(0, 0.1)
(LayerNorm/RMSNorm weights 1 + N(0, 0.1), biases N(0, 0.05)), deterministic from --seed.
Prints {"variants": {NAME: path}} as JSON.
"""

import argparse
import json
import os
import shutil
import struct
import sys

sys.dont_write_bytecode = True

import numpy as np  # noqa: E402

VOCAB = 512


def write_safetensors(path, tensors, metadata=None):
    """tensors: {name: array} written as little-endian F32, row-major, in name order; the JSON
    header is padded with spaces to a multiple of 8 bytes."""
    header = {}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], dtype="<f4")
        raw = a.tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    header["__metadata__"] = dict(metadata or {"format": "pt"})
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


class Gen:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def w(self, *shape, std=0.1):
        return self.rng.normal(0.0, std, shape)

    def norm(self, n):
        return 1.0 + self.rng.normal(0.0, 0.1, n)

    def bias(self, n):
        return self.rng.normal(0.0, 0.05, n)


def opt_variant(g, proj):
    d, H, F, L, P, ctx = 128, 4, 256, 2, (64 if proj else 128), 512
    cfg = {
        "architectures": ["OPTForCausalLM"], "model_type": "opt", "vocab_size": VOCAB,
        "hidden_size": d, "num_hidden_layers": L, "ffn_dim": F, "num_attention_heads": H,
        "max_position_embeddings": ctx, "do_layer_norm_before": False,
        "_remove_final_layer_norm": False, "word_embed_proj_dim": P, "dropout": 0.1,
        "attention_dropout": 0.0, "activation_function": "relu", "layerdrop": 0.0,
        "init_std": 0.02, "use_cache": True, "enable_bias": True,
        "layer_norm_elementwise_affine": True, "bos_token_id": 1, "eos_token_id": 2,
        "pad_token_id": None, "tie_word_embeddings": True, "torch_dtype": "float32",
    }
    dec = "model.decoder."
    t = {dec + "embed_tokens.weight": g.w(VOCAB, P),
         dec + "embed_positions.weight": g.w(ctx + 2, d)}
    if proj:
        t[dec + "project_in.weight"] = g.w(d, P)
        t[dec + "project_out.weight"] = g.w(P, d)
    for i in range(L):
        p = dec + "layers.%d." % i
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            t[p + "self_attn.%s.weight" % n] = g.w(d, d)
            t[p + "self_attn.%s.bias" % n] = g.bias(d)
        for n in ("self_attn_layer_norm", "final_layer_norm"):
            t[p + n + ".weight"] = g.norm(d)
            t[p + n + ".bias"] = g.bias(d)
        t[p + "fc1.weight"] = g.w(F, d)
        t[p + "fc1.bias"] = g.bias(F)
        t[p + "fc2.weight"] = g.w(d, F)
        t[p + "fc2.bias"] = g.bias(d)
    # post-LN: transformers builds no model.decoder.final_layer_norm, so none is stored
    return cfg, t


def mpt_variant(g, d, H, attn, no_bias, ratio):
    L, ctx = 2, 512
    KV = attn.get("kv_n_heads", H) if attn.get("attn_type") == "grouped_query_attention" else H
    dh = d // H
    F = int(ratio * d)
    attn_config = {"attn_type": "multihead_attention", "attn_pdrop": 0.0, "attn_impl": "torch",
                   "clip_qkv": None, "softmax_scale": None, "prefix_lm": False, "qk_ln": False,
                   "attn_uses_sequence_id": False, "alibi": True, "alibi_bias_max": 8}
    attn_config.update(attn)
    cfg = {
        "architectures": ["MptForCausalLM"], "model_type": "mpt", "d_model": d, "n_heads": H,
        "n_layers": L, "expansion_ratio": ratio, "max_seq_len": ctx, "vocab_size": VOCAB,
        "resid_pdrop": 0.1, "layer_norm_epsilon": 1e-05, "emb_pdrop": 0.0,
        "learned_pos_emb": False, "attn_config": attn_config, "init_device": "cpu",
        "logit_scale": None, "no_bias": no_bias, "verbose": 0, "embedding_fraction": 1.0,
        "norm_type": "low_precision_layernorm", "use_cache": False, "initializer_range": 0.02,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": None, "tie_word_embeddings": True,
        "torch_dtype": "float32",
    }
    tr = "transformer."
    qkv = d + 2 * KV * dh
    t = {tr + "wte.weight": g.w(VOCAB, d), tr + "norm_f.weight": g.norm(d)}
    if not no_bias:
        t[tr + "norm_f.bias"] = g.bias(d)
    for i in range(L):
        p = tr + "blocks.%d." % i
        shapes = {"norm_1": None, "attn.Wqkv": (qkv, d), "attn.out_proj": (d, d),
                  "norm_2": None, "ffn.up_proj": (F, d), "ffn.down_proj": (d, F)}
        for n, shape in shapes.items():
            out = d if shape is None else shape[0]
            t[p + n + ".weight"] = g.norm(d) if shape is None else g.w(*shape)
            if not no_bias:
                t[p + n + ".bias"] = g.bias(out)
    return cfg, t


def qwen2_variant(g):
    d, H, KV, F, L, ctx = 128, 8, 2, 256, 2, 512
    dh = d // H
    cfg = {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": VOCAB,
        "hidden_size": d, "intermediate_size": F, "num_hidden_layers": L,
        "num_attention_heads": H, "num_key_value_heads": KV, "hidden_act": "silu",
        "max_position_embeddings": ctx, "initializer_range": 0.02, "rms_norm_eps": 1e-06,
        "use_cache": True, "rope_theta": 10000.0, "rope_scaling": None,
        "use_sliding_window": False, "sliding_window": None, "max_window_layers": L,
        "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2,
        "torch_dtype": "float32",
        # no "tie_word_embeddings": Qwen2Config's default (false) applies
    }
    m = "model."
    t = {m + "embed_tokens.weight": g.w(VOCAB, d), m + "norm.weight": g.norm(d),
         "lm_head.weight": g.w(VOCAB, d)}
    for i in range(L):
        p = m + "layers.%d." % i
        t[p + "input_layernorm.weight"] = g.norm(d)
        t[p + "post_attention_layernorm.weight"] = g.norm(d)
        for n, rows in (("q_proj", H * dh), ("k_proj", KV * dh), ("v_proj", KV * dh)):
            t[p + "self_attn.%s.weight" % n] = g.w(rows, d)
            t[p + "self_attn.%s.bias" % n] = g.bias(rows)
        t[p + "self_attn.o_proj.weight"] = g.w(d, H * dh)
        t[p + "mlp.gate_proj.weight"] = g.w(F, d)
        t[p + "mlp.up_proj.weight"] = g.w(F, d)
        t[p + "mlp.down_proj.weight"] = g.w(d, F)
    return cfg, t


# name -> (tokenizer source under shared/models, seed offset, builder)
VARIANTS = {
    "opt-postln-proj": ("opt-tiny-hf", 1, lambda g: opt_variant(g, proj=True)),
    "opt-postln": ("opt-tiny-hf", 2, lambda g: opt_variant(g, proj=False)),
    "mpt-clip-bias": ("mpt-tiny-hf", 3, lambda g: mpt_variant(
        g, d=96, H=6, attn={"clip_qkv": 0.8}, no_bias=False, ratio=4)),
    "mpt-gqa": ("mpt-tiny-hf", 4, lambda g: mpt_variant(
        g, d=128, H=8, attn={"attn_type": "grouped_query_attention", "kv_n_heads": 2,
                             "softmax_scale": 0.2}, no_bias=True, ratio=2)),
    "qwen2-untied-gqa": ("qwen2-tiny-hf", 5, qwen2_variant),
}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out")
    p.add_argument("--shared", default=os.path.join(here, "..", "..", "..", "shared"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", help="comma-separated variant names (default: all)")
    a = p.parse_args()
    names = a.only.split(",") if a.only else list(VARIANTS)
    for n in names:
        if n not in VARIANTS:
            print("error: unknown variant %r (have: %s)" % (n, ", ".join(VARIANTS)),
                  file=sys.stderr)
            return 1
    done = {}
    for n in names:
        src, offset, build = VARIANTS[n]
        tok_dir = os.path.join(a.shared, "models", src)
        if not os.path.exists(os.path.join(tok_dir, "tokenizer.json")):
            print("error: %s: no tokenizer.json" % tok_dir, file=sys.stderr)
            return 1
        cfg, tensors = build(Gen(a.seed * 1000 + offset))
        d = os.path.join(a.out, n)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
            f.write("\n")
        write_safetensors(os.path.join(d, "model.safetensors"), tensors)
        for fn in ("tokenizer.json", "tokenizer_config.json"):
            if os.path.exists(os.path.join(tok_dir, fn)):
                shutil.copyfile(os.path.join(tok_dir, fn), os.path.join(d, fn))
        done[n] = os.path.abspath(d)
    json.dump({"variants": done}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
