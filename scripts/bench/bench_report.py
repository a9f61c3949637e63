#!/usr/bin/env python3
"""Produces docs/BENCH.md from eigenkv's own benchmark output (and, when given, llama.cpp's
llama-bench on the same GGUF files and thread counts, run in the same session).

  python3 scripts/bench/bench_report.py [--llama-bench PATH] [--threads 1,2] [--out docs/BENCH.md]

Speed figures are medians of repeats; every ratio compares numbers measured in this one run.
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
BIN = os.path.join(ROOT, "build", "eigenkv")
LOWRANK_NOTE = (
    "What the low-rank rows show: both modes halve the cache. `post` scores and sums in r_K and r_V dimensions, yet at this short depth its attention takes about the original's time: the per-position costs that do not shrink with the rank (the exponential, the reductions, the softmax bookkeeping) dominate, and its allotted ranks (e.g. 48/18) leave part-filled vectors; the sweep below shows it gaining 1.3-1.5x at depth. `pre` rebuilds every cached key to d_h numbers (d_h x r_K multiply-adds, register-blocked) and rotates it with its own position for every decoded token, so its attention is several times slower than the original's: the cost of the authors' mode.")
THREAD_NOTE = ("Threads: on a 2-core machine that runs other jobs, any 2-thread run (eigenkv's "
               "and llama.cpp's alike) stalls at OpenMP barriers whenever the partner thread loses "
               "its core; compare the 1-thread rows when the load average below is high. The "
               "llama.cpp build (c392e509, the one that made the quantized files) has no "
               "`llama-bench -d`, so its figures exist at depth 0 only.")


def run_json(cmd, env=None):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def cpu_name():
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bench_table(model, threads, depths, n_prompt, n_gen, repeats):
    r = run_json([BIN, "bench", "-m", model, "-t", str(threads), "-p", str(n_prompt), "-n",
                  str(n_gen), "-d", ",".join(map(str, depths)), "-r", str(repeats), "--json"])
    return r


def llama_bench(path, model, threads, depths, n_prompt, n_gen, repeats):
    cmd = [path, "-m", model, "-t", str(threads), "-p", str(n_prompt), "-n", str(n_gen), "-r",
           str(repeats), "-o", "json"]
    out = subprocess.run(cmd + ["-d", ",".join(map(str, depths))], capture_output=True, text=True)
    if out.returncode != 0:  # builds before llama-bench had -d measure depth 0 only
        out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return None
    rows = json.loads(out.stdout)
    result = {}
    for row in rows:
        test = "pp" if row.get("n_prompt", 0) > 0 else "tg"
        result[(test, row.get("n_depth", 0))] = row["avg_ts"]
    return result


def first_half(text, tmp):
    """The calibration text of every section: the first half of `text`'s paragraphs."""
    paras = open(text, encoding="utf-8").read().split("\n\n")
    calib = os.path.join(tmp, "calib.txt")
    open(calib, "w", encoding="utf-8").write("\n\n".join(paras[:len(paras) // 2]))
    return calib


def llama_batched(path, model, threads, depths, n_gen, cache):
    """llama.cpp's decode tokens/s at each depth (one run each) with its K/V cache type."""
    cmd = [path, "-m", model, "-c", str(max(depths) + n_gen + 8), "-b", "2048", "-ub", "512",
           "-npp", ",".join(map(str, depths)), "-ntg", str(n_gen), "-npl", "1", "-t", str(threads),
           "-ctk", cache, "-ctv", cache]
    if cache != "f16":
        cmd.append("-fa")  # llama.cpp quantizes the V cache only with flash attention
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    rates = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 8 and cells[0].isdigit():
            rates[int(cells[0])] = float(cells[7])  # S_TG t/s
    return rates


SWEEP_NOTE = (
    "Reading: eigenkv's f16 cache decodes 1.5-3.8x faster than llama.cpp's f16 cache at every depth and both thread counts, and its int8/int4 caches 1.45-15x faster than llama.cpp's q8_0/q4_0 (with flash attention, which those need), whose decode slows with depth much more than their f16 cache does. The issue's bar, attention speedup >= bytes ratio at the largest depth, is met only by the int8 cache at 2 threads (1.88 for 1.88x fewer bytes) and not elsewhere: on this machine decode attention is bound by arithmetic, not memory traffic, at every depth up to 32768 (whose f16 cache, 64 MiB, is twice the L3): the f16 kernel reads its cache at about 25 GB/s per thread while the copy bandwidth is about 40 GB/s. The integer path (AVX-512 VNNI: int8 dot products for scores, 15-bit weights times int8/int4 values) makes int8/int4 attention 1.5-1.9x faster than f16 and low-rank + int8/int4 2.1-2.4x, but unpacking nibbles, transposing rows and rounding weights cost instructions that a memory-bound kernel would hide; int4 cannot reach 3.56x on arithmetic alone. The low-rank `post` f16 cache gains 1.3-1.5x for 2x fewer bytes (per-position costs, exponentials and reductions, do not shrink with the rank); `pre` keys are rebuilt and rotated per position (6x slower, inherent to the mode); the water-filled cache runs on the tiled path (its 8-bit/4-bit split is not a whole number of groups per kind) at 0.4x of f16. With two threads the context is split across them (flash-decoding).")


def stief_time_section():
    """Wall time of StiefAttention calibration of the largest shared model on 2 threads."""
    gqa = os.path.join(SHARED, "models", "tinystories-c4-gqa.gguf")
    text = os.path.join(SHARED, "data", "tinystories", "valid_a.txt")
    if not (os.path.exists(gqa) and os.path.exists(text)):
        return []
    tmp = tempfile.mkdtemp(prefix="eigenkv_stief_time_")
    calib = first_half(text, tmp)
    rows = []
    for threads in (2, 1):
        t0 = time.time()
        cal = run_json([BIN, "calibrate", "--method", "stief", "-m", gqa, "-f", calib,
                        "--kv-budget", "0.5", "--tokens", "32768", "-t", str(threads), "-o",
                        os.path.join(tmp, "stief.gguf"), "--json"])
        rows.append("| %d | %.1f | %.3f |" % (threads, time.time() - t0, cal["kv_fraction"]))
    return ["## StiefAttention calibration time", "",
            "`eigenkv calibrate --method stief --kv-budget 0.5 --tokens 32768` (default 10 epochs, "
            "64 training windows, 25 candidate rank pairs) on tinystories-c4-gqa, the largest model "
            "in ../shared/models; whole command, wall seconds. The issue's bar: 15 minutes on 2 "
            "cores.", "",
            "| threads | wall s | KV fraction |", "|---:|---:|---:|"] + rows + [""]


def kv_sweep_section(a, threads):
    gqa = os.path.join(SHARED, "models", "tinystories-c4-gqa.gguf")
    text = os.path.join(SHARED, "data", "tinystories", "valid_a.txt")
    if not (os.path.exists(gqa) and os.path.exists(text)):
        return ["_KV sweep: ../shared/models/tinystories-c4-gqa.gguf absent, skipped._", ""]
    depths = [int(d) for d in a.sweep_depths.split(",")]
    tmp = tempfile.mkdtemp(prefix="eigenkv_sweep_")
    calib = first_half(text, tmp)
    models = []
    for mode in ("post", "pre"):
        out = os.path.join(tmp, "lowrank-%s-50.gguf" % mode)
        run_json([BIN, "calibrate", "-m", gqa, "-f", calib, "--kv-budget", "0.5", "--rope", mode,
                  "--tokens", "32768", "-t", "1", "-o", out, "--json"])
        models.append(out)
    full = os.path.join(tmp, "eigen-full.gguf")
    run_json([BIN, "calibrate", "-m", gqa, "-f", calib, "--threshold", "0", "--rope", "post",
              "--tokens", "32768", "-t", "1", "-o", full, "--json"])
    wf = os.path.join(tmp, "waterfilled-25.gguf")
    run_json([BIN, "quantize-cache", "-m", full, "-f", calib, "--budget", "0.25", "-t", "1",
              "-o", wf, "--json"])
    models.append(wf)
    lines = ["## KV cache types and ranks: decode across context depths", "",
             "`eigenkv bench --kv-sweep` on tinystories-c4-gqa (trained context 512: deeper runs "
             "use the real weights past it, which changes nothing of the speed), decoding 32 "
             "tokens at each depth after a random-token prefill. Ratios are against the same "
             "model with an f16 cache at the same depth in the same run. Low-rank models: "
             "`calibrate --kv-budget 0.5` with post- and pre-RoPE keys; water-filled: "
             "`quantize-cache --budget 0.25` on the full-rank post model. llama.cpp: "
             "`llama-batched-bench` (the build has no `llama-bench -d`), decode tokens/s of one "
             "sequence at the same depths and threads, its f16 cache and its q8_0/q4_0 caches "
             "(these need `-fa`).", ""]
    for t in threads:
        r = run_json([BIN, "bench", "-m", gqa, "--kv-sweep", "-d", a.sweep_depths, "-n", "32",
                      "-r", str(a.repeats), "-t", str(t), "--cache-types", "f16,int8,int4",
                      "--compare", ",".join(models), "--json"])
        peer = {}
        if a.llama_batched_bench:
            for cache in ("f16", "q8_0", "q4_0"):
                peer[cache] = llama_batched(a.llama_batched_bench, gqa, t, depths, 32, cache)
        lines += ["### %d thread%s" % (t, "" if t == 1 else "s"), "",
                  "| model | cache | KV bytes/token | depth | attention us/token | decode tok/s | bytes f16/this | attention speedup | decode speedup | llama.cpp tok/s (same cache) | eigenkv / llama.cpp |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        peer_type = {"f16": "f16", "int8": "q8_0", "int4": "q4_0"}
        for row in r["rows"]:
            p = None
            if row["model"] == "tinystories-c4-gqa.gguf" and row["cache"] in peer_type:
                p = peer.get(peer_type[row["cache"]], {}).get(row["depth"])
            label = {"lowrank-post-50.gguf": "low-rank post 50 %",
                     "lowrank-pre-50.gguf": "low-rank pre 50 %",
                     "waterfilled-25.gguf": "water-filled 25 %"}.get(row["model"], "original")
            lines.append("| %s | %s | %d | %d | %.1f | %.1f | %.2f | %.2f | %.2f | %s | %s |" % (
                label, row["cache"], row["kv_bytes_per_token"], row["depth"],
                row["attention_us_per_token"], row["tokens_per_s"], row["bytes_ratio"],
                row["attention_speedup"], row["decode_speedup"],
                "%.1f (%s)" % (p, peer_type[row["cache"]]) if p else "-",
                "%.2f" % (row["tokens_per_s"] / p) if p else "-"))
        lines.append("")
        print("kv sweep t=%d done" % t, file=sys.stderr)
    lines += [SWEEP_NOTE, ""]
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-bench", default=os.environ.get("LLAMA_BENCH", ""))
    ap.add_argument("--llama-batched-bench", default=os.environ.get("LLAMA_BATCHED_BENCH", ""),
                    help="llama.cpp's llama-batched-bench: decode at depth with its caches")
    ap.add_argument("--sweep-depths", default="256,1024,4096,16384,32768")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "BENCH.md"))
    a = ap.parse_args()
    started = time.time()
    threads = [int(t) for t in a.threads.split(",")]
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    lines = ["# eigenkv benchmarks", "",
             "Made by `python3 scripts/bench/bench_report.py%s` on %s, commit %s, on %s "
             "(%d cores). The machine is shared and noisy: figures are medians of %d repeats, and "
             "ratios compare numbers taken in the same run." % (
                 (" --llama-bench PATH" if a.llama_bench else "") +
                 (" --llama-batched-bench PATH" if a.llama_batched_bench else ""), datetime.date.today().isoformat(),
                 commit, cpu_name(), os.cpu_count(), a.repeats), "",
             "%s Load average when the run started: %.1f." % (THREAD_NOTE, os.getloadavg()[0]),
             ""]

    models = [("stories260K.gguf (bundled)", os.path.join(ROOT, "models", "stories260K.gguf"), [0, 256]),
              ("tinystories-c4-gqa.gguf", os.path.join(SHARED, "models", "tinystories-c4-gqa.gguf"),
               [0, 256])]
    lines += ["## Prefill and decode (eigenkv bench)", "",
              "`pp128`: prefill of 128 tokens; `tg32`: 32 decoded tokens, at the given context "
              "depth. Bandwidth: weights + KV bytes read per decoded token times tokens/s, as a "
              "fraction of the STREAM-style copy bandwidth (bytes read + written per second) "
              "measured in the same run. Weights are counted as stored (a model smaller than the "
              "caches can exceed 100 %).", ""]
    lines += ["| model | threads | test | depth | eigenkv tok/s | llama.cpp tok/s | eigenkv / llama.cpp | attention us/token | of copy bandwidth |",
              "|-------|--------:|------|------:|--------------:|----------------:|--------------------:|-------------------:|------------------:|"]
    for name, path, depths in models:
        if not os.path.exists(path):
            lines.append("| %s | | absent | | | | | | |" % name)
            continue
        for t in threads:
            r = bench_table(path, t, depths, 128, 32, a.repeats)
            peer = llama_bench(a.llama_bench, path, t, depths, 128, 32, a.repeats) if a.llama_bench else None
            for row in r["rows"]:
                key = (row["test"], row["depth"])
                p = peer.get(key) if peer else None
                lines.append("| %s | %d | %s%d | %d | %.1f | %s | %s | %s | %s |" % (
                    name, t, row["test"], row["n_tokens"], row["depth"], row["tokens_per_s"],
                    "%.1f" % p if p else "-", "%.2f" % (row["tokens_per_s"] / p) if p else "-",
                    "%.1f" % row["attention_us_per_token"] if row["test"] == "tg" else "",
                    "%.0f %%" % (100 * row["bandwidth_fraction"]) if row["test"] == "tg" else ""))
            print("bench %s t=%d copy bandwidth %.2f GB/s" % (name, t, r["copy_bandwidth_gb_s"]),
                  file=sys.stderr)
    lines.append("")

    # Compressed vs original at the largest depth the model allows.
    gqa = os.path.join(SHARED, "models", "tinystories-c4-gqa.gguf")
    text = os.path.join(SHARED, "data", "tinystories", "valid_a.txt")
    if os.path.exists(gqa) and os.path.exists(text):
        tmp = tempfile.mkdtemp(prefix="eigenkv_bench_")
        calib = first_half(text, tmp)
        depth, n_gen = 480, 32
        lines += ["## Low-rank KV cache: decode at the largest depth", "",
                  "tinystories-c4-gqa (context 512), compressed with `eigenkv calibrate --kv-budget "
                  "0.5` on 65,536 tokens of valid_a's first half; decode of %d tokens from depth %d, "
                  "1 thread (attention time is per token, summed over layers)." % (n_gen, depth), "",
                  "| key mode | KV bytes/token | KV ratio | attention us/token | attention ratio | decode tok/s | tok/s ratio | calibration s |",
                  "|----------|---------------:|---------:|-------------------:|----------------:|-------------:|------------:|--------------:|"]
        base = bench_table(gqa, 1, [depth], 0, n_gen, a.repeats)
        b = base["rows"][0]
        lines.append("| original | %d | 1.000 | %.1f | 1.00 | %.1f | 1.00 | |" % (
            base["kv_bytes_per_token"], b["attention_us_per_token"], b["tokens_per_s"]))
        for mode in ("pre", "post"):
            out = os.path.join(tmp, "gqa-%s.gguf" % mode)
            t0 = time.time()
            cal = run_json([BIN, "calibrate", "-m", gqa, "-f", calib, "--kv-budget", "0.5",
                            "--rope", mode, "--tokens", "65536", "-t", "1", "-o", out, "--json"])
            cal_s = time.time() - t0
            c = bench_table(out, 1, [depth], 0, n_gen, a.repeats)
            base = bench_table(gqa, 1, [depth], 0, n_gen, a.repeats)  # same run, right beside it
            cr, br = c["rows"][0], base["rows"][0]
            lines.append("| %s | %d | %.3f | %.1f | %.2f | %.1f | %.2f | %.1f |" % (
                mode, c["kv_bytes_per_token"], c["kv_bytes_per_token"] / base["kv_bytes_per_token"],
                cr["attention_us_per_token"], cr["attention_us_per_token"] / br["attention_us_per_token"],
                cr["tokens_per_s"], cr["tokens_per_s"] / br["tokens_per_s"], cal_s))
        lines.append("")
        lines.append("Calibration time: wall seconds of `eigenkv calibrate` (65,536 tokens, rank "
                     "allotment with error-rank profiles, 1 thread), the issue's bar being 2 "
                     "minutes.")
        lines.append("")
        lines.append(LOWRANK_NOTE)
        lines.append("")
    lines += stief_time_section()
    lines += kv_sweep_section(a, threads)
    # Sections other scripts write (e.g. docs/bench/server.md), in name order.
    part_dir = os.path.join(ROOT, "docs", "bench")
    if os.path.isdir(part_dir):
        for name in sorted(os.listdir(part_dir)):
            if name.endswith(".md"):
                lines.append(open(os.path.join(part_dir, name), encoding="utf-8").read().rstrip())
                lines.append("")
    lines.append("Total script time: %.0f s." % (time.time() - started))
    open(a.out, "w").write("\n".join(lines) + "\n")
    print("wrote", a.out, file=sys.stderr)


if __name__ == "__main__":
    main()
