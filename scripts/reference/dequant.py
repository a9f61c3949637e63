"""Vectorised numpy dequantisation of ggml tensor types.

Block layouts follow ggml's published block structs (ggml-common.h); every block is
little-endian and packed. QK_K = 256 for the k-quants.

Values: llama.cpp dequantises each element with float32 arithmetic in which at most one
operation rounds (products of an f16 scale and a small integer are exact in float32; the
rounding step is the final subtraction/addition of the min, or the last product in Q6_K/Q8_K).
We therefore compute every element exactly in float64 and round once to float32, which
gives llama.cpp's float32 weights bit for bit, and return them as float32 (callers widen to
float64). See dequantize().
"""

import numpy as np

QK_K = 256

# ggml type id -> (name, elements per block, bytes per block)
GGML_TYPES = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    10: ("Q2_K", QK_K, 84),
    11: ("Q3_K", QK_K, 110),
    12: ("Q4_K", QK_K, 144),
    13: ("Q5_K", QK_K, 176),
    14: ("Q6_K", QK_K, 210),
    15: ("Q8_K", QK_K, 292),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    30: ("BF16", 1, 2),
}
GGML_TYPE_BY_NAME = {v[0]: k for k, v in GGML_TYPES.items()}

# ggml types this reference knows by name but does not dequantise
UNSUPPORTED_NAMES = {
    9: "Q8_1", 16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL",
    21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS", 29: "IQ1_M", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4",
}


def type_name(t):
    if t in GGML_TYPES:
        return GGML_TYPES[t][0]
    return UNSUPPORTED_NAMES.get(t, "unknown type %d" % t)


class DequantError(Exception):
    pass


def _f16(blocks, off):
    """f16 field at byte offset `off` of each block -> float64 column (nb, 1)."""
    return blocks[:, off:off + 2].copy().view("<f2").astype(np.float64)


def _nibbles(qs):
    """(nb, n) uint8 -> low nibbles (nb, n), high nibbles (nb, n) as int64."""
    q = qs.astype(np.int64)
    return q & 0xF, q >> 4


def _q4_0(b):
    d = _f16(b, 0)
    lo, hi = _nibbles(b[:, 2:18])
    q = np.concatenate([lo, hi], axis=1) - 8          # element j: low nibble of qs[j]; j+16: high
    return d * q


def _q4_1(b):
    d = _f16(b, 0)
    m = _f16(b, 2)
    lo, hi = _nibbles(b[:, 4:20])
    return d * np.concatenate([lo, hi], axis=1) + m


def _q5_high_bits(qh_bytes):
    """4 bytes of qh (little-endian u32) -> (nb, 32) bits; bit j is the 5th bit of element j."""
    qh = qh_bytes.copy().view("<u4").astype(np.int64)            # (nb, 1)
    return (qh >> np.arange(32, dtype=np.int64)) & 1             # (nb, 32)


def _q5_0(b):
    d = _f16(b, 0)
    h = _q5_high_bits(b[:, 2:6])
    lo, hi = _nibbles(b[:, 6:22])
    q = np.concatenate([lo, hi], axis=1) | (h << 4)
    return d * (q - 16)


def _q5_1(b):
    d = _f16(b, 0)
    m = _f16(b, 2)
    h = _q5_high_bits(b[:, 4:8])
    lo, hi = _nibbles(b[:, 8:24])
    q = np.concatenate([lo, hi], axis=1) | (h << 4)
    return d * q + m


def _q8_0(b):
    d = _f16(b, 0)
    q = b[:, 2:34].copy().view(np.int8).astype(np.int64)
    return d * q


def _q8_k(b):
    d = b[:, 0:4].copy().view("<f4").astype(np.float64)
    q = b[:, 4:260].copy().view(np.int8).astype(np.int64)
    return d * q


def _scale_min_k4(sc):
    """12 packed bytes (nb, 12) -> 8 six-bit scales and 8 six-bit mins, each (nb, 8).

    j < 4:  scale = sc[j] & 63,                         min = sc[j+4] & 63
    j >= 4: scale = (sc[j+4] & 15) | (sc[j-4] >> 6) << 4, min = (sc[j+4] >> 4) | (sc[j] >> 6) << 4
    """
    s = sc.astype(np.int64)
    scales = np.empty((s.shape[0], 8), np.int64)
    mins = np.empty((s.shape[0], 8), np.int64)
    scales[:, :4] = s[:, 0:4] & 63
    mins[:, :4] = s[:, 4:8] & 63
    scales[:, 4:] = (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)
    mins[:, 4:] = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
    return scales, mins


def _q4_k(b):
    d = _f16(b, 0)
    dmin = _f16(b, 2)
    scales, mins = _scale_min_k4(b[:, 4:16])
    qs = b[:, 16:144].astype(np.int64).reshape(-1, 4, 32)       # 4 chunks of 32 bytes
    # chunk c gives 64 elements: 32 low nibbles (sub-block 2c), then 32 high nibbles (2c+1)
    q = np.stack([qs & 0xF, qs >> 4], axis=2).reshape(-1, 8, 32)   # (nb, sub-block, 32)
    y = (d * scales)[:, :, None] * q - (dmin * mins)[:, :, None]
    return y.reshape(-1, QK_K)


def _q5_k(b):
    d = _f16(b, 0)
    dmin = _f16(b, 2)
    scales, mins = _scale_min_k4(b[:, 4:16])
    qh = b[:, 16:48].astype(np.int64)                            # (nb, 32)
    qs = b[:, 48:176].astype(np.int64).reshape(-1, 4, 32)
    q = np.stack([qs & 0xF, qs >> 4], axis=2).reshape(-1, 8, 32)
    # sub-block s takes its 5th bit from bit s of qh[l]
    hb = (qh[:, None, :] >> np.arange(8, dtype=np.int64)[None, :, None]) & 1   # (nb, 8, 32)
    q = q + (hb << 4)
    y = (d * scales)[:, :, None] * q - (dmin * mins)[:, :, None]
    return y.reshape(-1, QK_K)


def _q6_k(b):
    ql = b[:, 0:128].astype(np.int64).reshape(-1, 2, 64)        # per half of 128 elements
    qh = b[:, 128:192].astype(np.int64).reshape(-1, 2, 32)
    sc = b[:, 192:208].copy().view(np.int8).astype(np.int64)    # (nb, 16)
    d = _f16(b, 208)
    # within a half (128 elements), for l in 0..31:
    #   y[l]    = low  nibble ql[l]    | bits 0-1 of qh[l]
    #   y[l+32] = low  nibble ql[l+32] | bits 2-3
    #   y[l+64] = high nibble ql[l]    | bits 4-5
    #   y[l+96] = high nibble ql[l+32] | bits 6-7
    q1 = (ql[:, :, 0:32] & 0xF) | (((qh >> 0) & 3) << 4)
    q2 = (ql[:, :, 32:64] & 0xF) | (((qh >> 2) & 3) << 4)
    q3 = (ql[:, :, 0:32] >> 4) | (((qh >> 4) & 3) << 4)
    q4 = (ql[:, :, 32:64] >> 4) | (((qh >> 6) & 3) << 4)
    q = np.stack([q1, q2, q3, q4], axis=2) - 32                  # (nb, 2, 4, 32)
    q = q.reshape(-1, 16, 16)                                    # 16 groups of 16, in order
    # group g (of 16 elements) uses scale sc[g]: half h, quarter k, l<16 or not -> 8h + 2k + l//16
    y = (d * sc)[:, :, None] * q
    return y.reshape(-1, QK_K)


def _q2_k(b):
    sc = b[:, 0:16].astype(np.int64)
    qs = b[:, 16:80].astype(np.int64).reshape(-1, 2, 32)        # per half of 128 elements
    d = _f16(b, 80)
    dmin = _f16(b, 82)
    shifts = np.array([0, 2, 4, 6], dtype=np.int64)
    # half h, shift index k: elements 32k..32k+31 of the half are (qs[l] >> 2k) & 3
    q = (qs[:, :, None, :] >> shifts[None, None, :, None]) & 3   # (nb, 2, 4, 32)
    q = q.reshape(-1, 16, 16)                                    # group g uses scale byte g
    y = (d * (sc & 0xF))[:, :, None] * q - (dmin * (sc >> 4))[:, :, None]
    return y.reshape(-1, QK_K)


def _q3_k(b):
    hmask = b[:, 0:32].astype(np.int64)
    qs = b[:, 32:96].astype(np.int64).reshape(-1, 2, 32)
    s = b[:, 96:108].astype(np.int64)
    d = _f16(b, 108)
    # 16 six-bit scales: low 4 bits from s[i % 8] (nibble i // 8), high 2 bits from
    # s[8 + i % 4] (bit pair i // 4); stored with an offset of 32.
    i = np.arange(16)
    low = (s[:, i % 8] >> (4 * (i // 8))) & 0xF
    high = (s[:, 8 + i % 4] >> (2 * (i // 4))) & 3
    scales = (low | (high << 4)) - 32                            # (nb, 16)
    shifts = np.array([0, 2, 4, 6], dtype=np.int64)
    q = (qs[:, :, None, :] >> shifts[None, None, :, None]) & 3   # (nb, 2, 4, 32)
    # high bit: bit (4h + k) of hmask[l]; subtract 4 when it is clear
    bit = (4 * np.arange(2)[:, None] + np.arange(4)[None, :])    # (2, 4)
    hb = (hmask[:, None, None, :] >> bit[None, :, :, None]) & 1   # (nb, 2, 4, 32)
    q = (q - 4 * (1 - hb)).reshape(-1, 16, 16)
    y = (d * scales)[:, :, None] * q
    return y.reshape(-1, QK_K)


_BLOCK_FUNCS = {
    2: _q4_0, 3: _q4_1, 6: _q5_0, 7: _q5_1, 8: _q8_0,
    10: _q2_k, 11: _q3_k, 12: _q4_k, 13: _q5_k, 14: _q6_k, 15: _q8_k,
}

_PLAIN = {0: "<f4", 1: "<f2", 24: "<i1", 25: "<i2", 26: "<i4", 27: "<i8", 28: "<f8"}


def dequantize(raw, ggml_type, n_elements):
    """raw: uint8 array of the tensor's bytes -> flat array of n_elements values.

    Float types come back exactly (float32/float16 widened to float32 or float64); quantised
    types come back as float32, exactly llama.cpp's dequantised values.
    """
    if ggml_type not in GGML_TYPES:
        raise DequantError("ggml tensor type %d (%s) is not supported (supported: %s)"
                           % (ggml_type, type_name(ggml_type),
                              ", ".join(v[0] for v in GGML_TYPES.values())))
    name, block, bsize = GGML_TYPES[ggml_type]
    if n_elements % block:
        raise DequantError("%s tensor of %d elements is not a whole number of %d-element blocks"
                           % (name, n_elements, block))
    nb = n_elements // block
    if raw.size != nb * bsize:
        raise DequantError("%s tensor: expected %d bytes, got %d" % (name, nb * bsize, raw.size))
    if ggml_type in _PLAIN:
        out = np.frombuffer(raw.tobytes(), dtype=_PLAIN[ggml_type])
        return out.astype(np.float64) if ggml_type == 28 else out.astype(np.float32)
    if ggml_type == 30:  # BF16: the upper 16 bits of a float32
        u = np.frombuffer(raw.tobytes(), dtype="<u2").astype(np.uint32) << 16
        return u.view(np.float32)
    blocks = np.asarray(raw).reshape(nb, bsize)
    out = np.empty(n_elements, dtype=np.float32)
    # chunk to bound memory (int64 intermediates are ~8x the float32 output)
    step = max(1, (1 << 22) // block)
    for s in range(0, nb, step):
        y = _BLOCK_FUNCS[ggml_type](blocks[s:s + step])          # float64, exact
        out[s * block:(s + step) * block] = y.reshape(-1)        # one rounding to float32
    return out
