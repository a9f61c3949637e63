"""Minimal GGUF (v2/v3) reader: metadata and raw tensor bytes.

Written from the published GGUF format description (ggml/docs/gguf.md):

    header:   magic "GGUF" | u32 version | u64 tensor_count | u64 kv_count
    kv:       string key | u32 value_type | value
    tensor:   string name | u32 n_dims | u64 ne[n_dims] | u32 ggml_type | u64 offset
    data:     starts at the first multiple of `general.alignment` (default 32) after the
              tensor infos; each tensor's offset is relative to that start.

Strings are u64 length + UTF-8 bytes. ne[0] is the innermost (contiguous) dimension, so
the numpy shape of a tensor is reversed(ne) (outer dimension first).
Everything is little-endian (big-endian GGUF files are rejected).
"""

import mmap
import struct

import numpy as np

from dequant import GGML_TYPES, dequantize, type_name

GGUF_MAGIC = b"GGUF"

# metadata value types
_SCALAR_FMT = {
    0: "<B",   # UINT8
    1: "<b",   # INT8
    2: "<H",   # UINT16
    3: "<h",   # INT16
    4: "<I",   # UINT32
    5: "<i",   # INT32
    6: "<f",   # FLOAT32
    7: "<?",   # BOOL
    10: "<Q",  # UINT64
    11: "<q",  # INT64
    12: "<d",  # FLOAT64
}
_NP_FOR_SCALAR = {
    0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32,
    6: np.float32, 7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64,
}
_T_STRING = 8
_T_ARRAY = 9


class GGUFError(Exception):
    pass


class TensorInfo:
    __slots__ = ("name", "ne", "ggml_type", "offset")

    def __init__(self, name, ne, ggml_type, offset):
        self.name = name
        self.ne = ne              # ggml order: ne[0] innermost
        self.ggml_type = ggml_type
        self.offset = offset      # absolute file offset

    @property
    def shape(self):
        """numpy shape, outer dimension first."""
        return tuple(reversed(self.ne))

    @property
    def type_name(self):
        return type_name(self.ggml_type)

    @property
    def n_elements(self):
        n = 1
        for d in self.ne:
            n *= d
        return n

    def n_bytes(self):
        t = GGML_TYPES.get(self.ggml_type)
        if t is None:
            raise GGUFError("tensor %r has unsupported ggml type %d (%s)"
                            % (self.name, self.ggml_type, self.type_name))
        _, block, bsize = t
        n = self.n_elements
        if self.ne[0] % block:
            raise GGUFError("tensor %r: row length %d is not a multiple of the %s block size %d"
                            % (self.name, self.ne[0], t[0], block))
        return n // block * bsize


class GGUFFile:
    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._pos = 0
        self.metadata = {}
        self.tensors = {}       # name -> TensorInfo, in file order
        self._parse()

    # -- low-level readers -------------------------------------------------------------
    def _need(self, n):
        if self._pos + n > len(self._mm):
            raise GGUFError("%s: truncated file (wanted %d bytes at offset %d, size %d)"
                            % (self.path, n, self._pos, len(self._mm)))

    def _unpack(self, fmt):
        size = struct.calcsize(fmt)
        self._need(size)
        v = struct.unpack_from(fmt, self._mm, self._pos)[0]
        self._pos += size
        return v

    def _string(self):
        n = self._unpack("<Q")
        self._need(n)
        b = self._mm[self._pos:self._pos + n]
        self._pos += n
        return b.decode("utf-8", errors="surrogateescape")

    def _value(self, vtype):
        if vtype in _SCALAR_FMT:
            return self._unpack(_SCALAR_FMT[vtype])
        if vtype == _T_STRING:
            return self._string()
        if vtype == _T_ARRAY:
            etype = self._unpack("<I")
            count = self._unpack("<Q")
            if etype in _NP_FOR_SCALAR:
                dt = np.dtype(_NP_FOR_SCALAR[etype]).newbyteorder("<")
                nbytes = dt.itemsize * count
                self._need(nbytes)
                arr = np.frombuffer(self._mm, dtype=dt, count=count, offset=self._pos).copy()
                self._pos += nbytes
                return arr.tolist()
            return [self._value(etype) for _ in range(count)]
        raise GGUFError("%s: unknown metadata value type %d at offset %d"
                        % (self.path, vtype, self._pos))

    # -- parsing -----------------------------------------------------------------------
    def _parse(self):
        self._need(4)
        magic = self._mm[0:4]
        if magic != GGUF_MAGIC:
            raise GGUFError("%s: not a GGUF file (magic %r)" % (self.path, bytes(magic)))
        self._pos = 4
        self.version = self._unpack("<I")
        if self.version not in (2, 3):
            if self.version > 0xFFFF:
                raise GGUFError("%s: big-endian GGUF files are not supported" % self.path)
            raise GGUFError("%s: unsupported GGUF version %d" % (self.path, self.version))
        n_tensors = self._unpack("<Q")
        n_kv = self._unpack("<Q")
        for _ in range(n_kv):
            key = self._string()
            vtype = self._unpack("<I")
            self.metadata[key] = self._value(vtype)
        infos = []
        for _ in range(n_tensors):
            name = self._string()
            n_dims = self._unpack("<I")
            if n_dims > 4:
                raise GGUFError("%s: tensor %r has %d dimensions" % (self.path, name, n_dims))
            ne = [self._unpack("<Q") for _ in range(n_dims)]
            ttype = self._unpack("<I")
            off = self._unpack("<Q")
            infos.append((name, ne, ttype, off))
        align = int(self.metadata.get("general.alignment", 32))
        if align <= 0 or align & (align - 1):
            raise GGUFError("%s: bad general.alignment %d" % (self.path, align))
        self.data_offset = (self._pos + align - 1) // align * align
        for name, ne, ttype, off in infos:
            if name in self.tensors:
                raise GGUFError("%s: duplicate tensor name %r" % (self.path, name))
            ti = TensorInfo(name, ne, ttype, self.data_offset + off)
            if ttype in GGML_TYPES:
                end = ti.offset + ti.n_bytes()
                if end > len(self._mm):
                    raise GGUFError("%s: tensor %r extends past end of file" % (self.path, name))
            self.tensors[name] = ti

    # -- access ------------------------------------------------------------------------
    def raw(self, name):
        ti = self.tensors[name]
        return np.frombuffer(self._mm, dtype=np.uint8, count=ti.n_bytes(), offset=ti.offset)

    def tensor(self, name, dtype=np.float64):
        """Dequantized tensor, numpy shape (outer dimension first)."""
        if name not in self.tensors:
            raise GGUFError("%s: no tensor named %r" % (self.path, name))
        ti = self.tensors[name]
        if ti.ggml_type not in GGML_TYPES:
            raise GGUFError("%s: tensor %r has ggml type %d (%s), which this reference does "
                            "not support (supported: %s)"
                            % (self.path, name, ti.ggml_type, ti.type_name,
                               ", ".join(v[0] for v in GGML_TYPES.values())))
        flat = dequantize(self.raw(name), ti.ggml_type, ti.n_elements)
        return flat.reshape(ti.shape).astype(dtype, copy=False)

    def get(self, key, default=None):
        return self.metadata.get(key, default)
