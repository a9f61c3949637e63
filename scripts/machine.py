"""The machine a measurement ran on, as the result and bench scripts print it under their tables."""
import os

# The SIMD features that pick eigenkv's kernels (Highway targets) and llama.cpp's.
FEATURES = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni")


def cpu_line():
    """'<model name>, <cores> cores, <features>' from /proc/cpuinfo."""
    name, flags = "unknown CPU", set()
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name") and name == "unknown CPU":
            name = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
    feats = [f for f in FEATURES if f in flags]
    return f"{name}, {os.cpu_count()} cores, {' '.join(feats)}"
