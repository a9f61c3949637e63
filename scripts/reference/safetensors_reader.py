"""Minimal safetensors reader (single file or sharded via model.safetensors.index.json).

Format: u64 little-endian header length N | N bytes of JSON header | raw data.
Header: {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}};
offsets are relative to the start of the data (8 + N). Row-major, little-endian.
"""

import json
import mmap
import os
import struct

import numpy as np

_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?",
}


class SafetensorsError(Exception):
    pass


class _OneFile:
    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        if len(self._mm) < 8:
            raise SafetensorsError("%s: too short for a safetensors file" % path)
        n = struct.unpack_from("<Q", self._mm, 0)[0]
        if 8 + n > len(self._mm):
            raise SafetensorsError("%s: header length %d exceeds file size" % (path, n))
        try:
            header = json.loads(bytes(self._mm[8:8 + n]).decode("utf-8"))
        except ValueError as e:
            raise SafetensorsError("%s: bad JSON header: %s" % (path, e))
        self.metadata = header.pop("__metadata__", None) or {}
        self.entries = header
        self.data_start = 8 + n
        for name, e in header.items():
            b, end = e["data_offsets"]
            if self.data_start + end > len(self._mm) or b > end:
                raise SafetensorsError("%s: tensor %r has bad data_offsets" % (path, name))

    def tensor(self, name):
        e = self.entries[name]
        dt = e["dtype"]
        shape = tuple(e["shape"])
        b, end = e["data_offsets"]
        nbytes = end - b
        if dt == "BF16":
            u = np.frombuffer(self._mm, dtype="<u2", count=nbytes // 2,
                              offset=self.data_start + b).astype(np.uint32) << 16
            arr = u.view(np.float32)
        elif dt in _DTYPES:
            d = np.dtype(_DTYPES[dt])
            arr = np.frombuffer(self._mm, dtype=d, count=nbytes // d.itemsize,
                                offset=self.data_start + b)
        else:
            raise SafetensorsError("%s: tensor %r has unsupported dtype %s (supported: %s)"
                                   % (self.path, name, dt, ", ".join(list(_DTYPES) + ["BF16"])))
        n = 1
        for s in shape:
            n *= s
        if arr.size != n:
            raise SafetensorsError("%s: tensor %r: %d bytes do not hold shape %s of %s"
                                   % (self.path, name, nbytes, shape, dt))
        return arr.reshape(shape)


class SafetensorsModel:
    """All tensors of an HF model directory (or a single .safetensors file)."""

    def __init__(self, path):
        self.files = []
        self.where = {}          # tensor name -> _OneFile
        self.metadata = {}
        if os.path.isdir(path):
            index = os.path.join(path, "model.safetensors.index.json")
            single = os.path.join(path, "model.safetensors")
            if os.path.exists(index):
                with open(index) as f:
                    wm = json.load(f).get("weight_map", {})
                shards = sorted(set(wm.values()))
                paths = [os.path.join(path, s) for s in shards]
            elif os.path.exists(single):
                paths = [single]
            else:
                paths = sorted(os.path.join(path, p) for p in os.listdir(path)
                               if p.endswith(".safetensors"))
                if not paths:
                    raise SafetensorsError("%s: no model.safetensors, no index, no *.safetensors"
                                           % path)
        else:
            paths = [path]
        for p in paths:
            f = _OneFile(p)
            self.files.append(f)
            self.metadata.update(f.metadata)
            for name in f.entries:
                if name in self.where:
                    raise SafetensorsError("tensor %r appears in both %s and %s"
                                           % (name, self.where[name].path, p))
                self.where[name] = f

    def names(self):
        return list(self.where)

    def resolve(self, name):
        """Name of the stored tensor that holds `name` (follows __metadata__ aliases, as
        transformers writes for tied weights stored once), or None."""
        seen = set()
        while name not in self.where:
            if name in seen:
                return None
            seen.add(name)
            alias = self.metadata.get(name)
            if not isinstance(alias, str):
                return None
            name = alias
        return name

    def has(self, name):
        return self.resolve(name) is not None

    def tensor(self, name, dtype=np.float64):
        real = self.resolve(name)
        if real is None:
            raise SafetensorsError("no tensor named %r" % name)
        return self.where[real].tensor(real).astype(dtype)
