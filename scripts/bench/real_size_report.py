#!/usr/bin/env python3
"""The real-size section of docs/BENCH.md: eigenkv beside llama.cpp on random-weight GGUF files of
real models' shapes (made by build/tools/eigenkv-shape-model; RANDOM WEIGHTS, for speed and
memory only), the same file and thread count, runs interleaved (eigenkv, llama.cpp, eigenkv, ...)
and medians taken.

  python3 scripts/bench/real_size_report.py --models DIR --llama-dir LLAMA_BIN_DIR \
      [--threads 1,2] [--repeats 3] [--out docs/BENCH.md]

Rows: prefill of --n-prompt tokens (pp, default 512) and decode of --n-gen tokens (tg, default
32) in tokens/s, the ratio
eigenkv / llama.cpp, eigenkv's weight bytes read per decoded token and their fraction of the copy
bandwidth measured in the same run, and the peak RSS of a short greedy `generate` of each (with
the bound the issue sets: file size + KV cache + 10 % + 100 MB).
"""
import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from machine import cpu_line  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "build", "eigenkv")
def markers(section):
    """The comment lines around one machine's section ("" is the first, unnamed one)."""
    tag = f"real-size {section}" if section else "real-size"
    return (f"<!-- {tag}: begin (scripts/bench/real_size_report.py) -->", f"<!-- {tag}: end -->")


BEGIN, END = markers("")
PROMPT = "Once upon a time"


def eigenkv_bench(model, threads, n_prompt, n_gen):
    out = subprocess.run([BIN, "bench", "-m", model, "-t", str(threads), "-p", str(n_prompt), "-n",
                          str(n_gen), "-r", "1", "--json"], check=True, capture_output=True,
                         text=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    rows = {row["test"]: row for row in r["rows"]}
    return {"pp": rows["pp"]["tokens_per_s"], "tg": rows["tg"]["tokens_per_s"],
            "bytes": rows["tg"]["bytes_per_token"], "bw": rows["tg"]["bandwidth_fraction"],
            "prefill_path": r.get("prefill_path", "?")}


def llama_bench(llama_dir, model, threads, n_prompt, n_gen):
    out = subprocess.run([os.path.join(llama_dir, "llama-bench"), "-m", model, "-t", str(threads),
                          "-p", str(n_prompt), "-n", str(n_gen), "-r", "1", "-o", "json"],
                         check=True, capture_output=True, text=True).stdout
    result = {}
    for row in json.loads(out):
        result["pp" if row.get("n_prompt", 0) > 0 else "tg"] = row["avg_ts"]
    return result


def peak_rss(cmd):
    """Peak resident set of a command in bytes (GNU time's %M, KiB)."""
    p = subprocess.run(["/usr/bin/time", "-f", "RSS %M"] + cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {p.stderr[-500:]}")
    return int(re.findall(r"RSS (\d+)", p.stderr)[-1]) * 1024


def llama_generate_cmd(llama_dir, model, threads, n):
    simple = os.path.join(llama_dir, "llama-simple")
    if os.path.exists(simple):
        return [simple, "-m", model, "-n", str(n), PROMPT]
    return [os.path.join(llama_dir, "llama-cli"), "-m", model, "-n", str(n), "-t", str(threads),
            "-p", PROMPT, "-no-cnv", "--temp", "0", "-c", "64"]


def timed(cmd, env=None):
    """(wall seconds, peak RSS bytes, stdout) of a command, through GNU time."""
    t0 = time.time()
    p = subprocess.run(["/usr/bin/time", "-f", "RSS %M"] + cmd, capture_output=True, text=True,
                       env=env)
    wall = time.time() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {p.stderr[-800:]}")
    return wall, int(re.findall(r"RSS (\d+)", p.stderr)[-1]) * 1024, p.stdout


def serve_once(model, threads):
    """Starts `eigenkv serve`, sends one completion, stops it: (tokens/s, peak RSS bytes)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import serve_client  # noqa: E402 (beside this script)
    with serve_client.Server(BIN, model, "--parallel", "2", "--ctx", "512",
                             threads=threads) as server:
        t0 = time.time()
        status, text = serve_client.post(server.url, "/v1/completions",
                                         {"prompt": PROMPT, "max_tokens": 16, "temperature": 0})
        wall = time.time() - t0
        if status != 200:
            raise RuntimeError(f"serve answered {status}: {text[:300]}")
        tokens = json.loads(text)["usage"]["completion_tokens"]
        rss = 0
        for line in open(f"/proc/{server.proc.pid}/status"):
            if line.startswith("VmHWM:"):
                rss = int(line.split()[1]) * 1024
    return tokens / wall, rss


def big_model_section(path, threads, calib_text):
    """generate, perplexity, serve and calibrate run on one large file: RSS, speed, minutes."""
    name = os.path.basename(path)
    rows = []
    wall, rss, out = timed([BIN, "generate", "-m", path, "-n", "32", "--temp", "0", "-t",
                            str(threads), "-p", PROMPT, "--json"])
    g = json.loads(out.strip().splitlines()[-1])
    rows.append(("generate -n 32", f"{g['tokens_per_s']:.2f} tok/s decode", rss, wall))
    wall, rss, out = timed([BIN, "perplexity", "-m", path, "-f", calib_text, "--ctx", "256",
                            "--max-windows", "1", "-t", str(threads), "--json"])
    ppl = json.loads(out.strip().splitlines()[-1])
    rows.append(("perplexity --ctx 256, 1 window",
                 f"{ppl['tokens_scored'] / ppl['seconds']:.1f} tok/s scored (PPL {ppl['ppl']:.0f}, "
                 "random weights)", rss, wall))
    tps, rss = serve_once(path, threads)
    rows.append(("serve: one /v1/completions of 16 tokens", f"{tps:.2f} tok/s end to end", rss,
                 None))
    out_model = os.path.join(os.path.dirname(path), "calibrated-" + name)
    wall, rss, out = timed([BIN, "calibrate", "-m", path, "-f", calib_text, "--kv-budget", "0.5",
                            "--rope", "post", "--tokens", "2048", "--error-windows", "1", "-t",
                            str(threads), "-o", out_model, "--json"])
    c = json.loads(out.strip().splitlines()[-1])
    ratio = os.path.getsize(out_model) / os.path.getsize(path)
    rows.append(("calibrate --kv-budget 0.5 --rope post --tokens 2048 --error-windows 1",
                 f"KV {c['kv_fraction']:.3f} of full, file {ratio:.3f} x source", rss, wall))
    os.remove(out_model)
    lines = ["", f"### {name}: the whole workflow ({threads} threads, random weights)", "",
             f"File {os.path.getsize(path) / 1e9:.2f} GB.", "",
             "| command | result | peak RSS | wall |", "|---|---|---:|---:|"]
    for cmd, result, rss, wall in rows:
        lines.append(f"| `{cmd}` | {result} | {rss / 1e9:.2f} GB | "
                     f"{'' if wall is None else f'{wall / 60:.1f} min'} |")
    return lines


def depth_section(path, threads, calib_text, depths, n_gen, repeats):
    """Decode at growing depth: the model with an f16 and an int8 cache beside its 50 % post-RoPE
    Eigen compression with an int8 cache; sweeps interleaved, medians per cell."""
    name = os.path.basename(path)
    compressed = os.path.join(os.path.dirname(path), "eigen50-post-" + name)
    wall, _, out = timed([BIN, "calibrate", "-m", path, "-f", calib_text, "--kv-budget", "0.5",
                          "--rope", "post", "--tokens", "1024", "--error-windows", "1", "-t",
                          str(threads), "-o", compressed, "--json"])
    kv_fraction = json.loads(out.strip().splitlines()[-1])["kv_fraction"]
    cells = {}
    for _ in range(repeats):
        out = subprocess.run([BIN, "bench", "-m", path, "--kv-sweep", "--cache-types", "int8",
                              "--compare", compressed, "-d", ",".join(str(d) for d in depths),
                              "-n", str(n_gen), "-r", "1", "-t", str(threads), "--json"],
                             check=True, capture_output=True, text=True).stdout
        for row in json.loads(out.strip().splitlines()[-1])["rows"]:
            model = "compressed" if row["model"] != name else "original"
            cells.setdefault((model, row["cache"], row["depth"]), []).append(row)
    os.remove(compressed)
    order = []
    for key in cells:
        if key[:2] not in order:
            order.append(key[:2])
    med = lambda rows, k: statistics.median(r[k] for r in rows)
    lines = ["", f"### Decode with depth: {name}, 50 % post-RoPE Eigen compression, int8 cache "
             f"({threads} threads, random weights)", "",
             f"`eigenkv calibrate --kv-budget 0.5 --rope post --tokens 1024 --error-windows 1` "
             f"({wall / 60:.1f} min; KV {kv_fraction:.3f} of full), then `eigenkv bench "
             f"--kv-sweep --cache-types int8 --compare COMPRESSED -n {n_gen}`, {repeats} sweeps "
             "interleaved, medians. Decode tok/s and its ratio to the original model with an f16 "
             "cache at the same depth in the same sweep (depths past the shape's 2,048-token trained context are "
             "speed only).", "",
             "| model | cache | KV bytes/token | " +
             " | ".join(f"depth {d}" for d in depths) + " |",
             "|---|---|---:|" + "---:|" * len(depths)]
    for model, cache in order:
        row = [model, cache, f"{cells[(model, cache, depths[0])][0]['kv_bytes_per_token']}"]
        for d in depths:
            rows = cells[(model, cache, d)]
            row.append(f"{med(rows, 'tokens_per_s'):.2f} ({med(rows, 'decode_speedup'):.2f}x)")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def info(model):
    out = subprocess.run([BIN, "info", "-m", model, "--json"], check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", required=True, help="folder of random-weight GGUF files")
    ap.add_argument("--llama-dir", required=True, help="llama.cpp's build/bin")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n-prompt", type=int, default=512)
    ap.add_argument("--n-gen", type=int, default=32)
    ap.add_argument("--only", default="", help="comma-separated file names to include")
    ap.add_argument("--big", default="", help="a large file to run generate, perplexity, serve "
                    "and calibrate on")
    ap.add_argument("--big-threads", type=int, default=2)
    ap.add_argument("--depth-model", default="", help="a file (in --models) for the decode-with-"
                    "depth section: original f16/int8 cache vs 50 %% Eigen post-RoPE, int8")
    ap.add_argument("--depths", default="512,2048,4096,8192")
    ap.add_argument("--depth-threads", type=int, default=2)
    ap.add_argument("--depth-repeats", type=int, default=0,
                    help="sweeps of the depth section (default: --repeats)")
    ap.add_argument("--calib-text", default=os.path.join(os.path.dirname(ROOT), "shared", "data",
                                                         "tinystories", "valid_a.txt"))
    ap.add_argument("--llama-commit", default="", help="llama.cpp's commit, when --llama-dir is "
                    "not in a git checkout (a snapshot)")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "BENCH.md"))
    ap.add_argument("--section", default="", help="a name for this machine's section (e.g. "
                    "zen3): sections of other names are left as they are")
    ap.add_argument("--append", action="store_true", help="keep the section as it stands and add "
                    "only the --depth-model and --big parts, measured now")
    a = ap.parse_args()
    global BEGIN, END
    BEGIN, END = markers(a.section)
    files = sorted(f for f in os.listdir(a.models) if f.endswith(".gguf"))
    if a.only:
        files = [f for f in files if f in a.only.split(",")]
    load = os.getloadavg()[0]
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    llama_commit = subprocess.run(["git", "-C", os.path.dirname(os.path.dirname(a.llama_dir)),
                                   "rev-parse", "--short", "HEAD"], capture_output=True,
                                  text=True).stdout.strip() or a.llama_commit or "?"
    title = "## Real-size models beside llama.cpp (random weights)"
    if a.section:
        title += f": {cpu_line().split(',')[0]}"
    lines = [BEGIN, "", title, "",
             f"Made by `python3 scripts/bench/real_size_report.py --models DIR --llama-dir DIR "
             f"--threads {a.threads} --repeats {a.repeats} --n-prompt {a.n_prompt} --n-gen "
             f"{a.n_gen}{' --big ' + os.path.basename(a.big) if a.big else ''}"
             f"{' --section ' + a.section if a.section else ''}` on {datetime.date.today()}, eigenkv "
             f"{commit}, llama.cpp {llama_commit} (built here from a fetched snapshot, "
             f"`-DGGML_NATIVE=ON`), on {cpu_line()}. Load average at the start: {load:.1f}.", "",
             "**The weights are random** (`build/tools/eigenkv-shape-model`: real shapes, "
             "normal(0, 0.02) numbers): the files exist for speed and memory only; their text "
             "means nothing. Each cell is the median of "
             f"{a.repeats} interleaved runs (eigenkv, then llama.cpp, repeated) of the same file "
             "and thread count; ratios are eigenkv / llama.cpp. Bytes/token: the weight and KV "
             "bytes eigenkv reads per decoded token, as stored; of copy BW: those bytes times "
             "tok/s over the copy bandwidth measured in the same run. RSS: peak resident set of "
             f"a greedy `generate` of 16 tokens after \"{PROMPT}\" (llama.cpp: "
             "llama-simple); bound: file + KV cache + 10 % + 100 MB.", "",
             f"| file | size | threads | pp{a.n_prompt} eigenkv | pp{a.n_prompt} llama.cpp | ratio | "
             f"tg{a.n_gen} eigenkv | tg{a.n_gen} llama.cpp | ratio | bytes/token | of copy BW | "
             "RSS eigenkv | RSS llama.cpp | RSS bound |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    if a.append:
        text = open(a.out).read()
        if BEGIN not in text or END not in text:
            sys.exit(f"--append: {a.out} has no real-size section to add to")
        kept = text[text.index(BEGIN):text.index(END)].rstrip("\n").split("\n")
        lines = [l for l in kept if l != "(run in progress or stopped here)"]
        while lines and not lines[-1].strip():
            lines.pop()
        lines += ["", f"The parts below were added by `real_size_report.py --append` on "
                      f"{datetime.date.today()}, eigenkv {commit}, on {cpu_line()}; load average "
                      f"at their start: {load:.1f}."]
        files = []
    for f in files:
        path = os.path.join(a.models, f)
        size = os.path.getsize(path)
        meta = info(path)
        for t in [int(x) for x in a.threads.split(",")]:
            ours, theirs = [], []
            for _ in range(a.repeats):
                ours.append(eigenkv_bench(path, t, a.n_prompt, a.n_gen))
                theirs.append(llama_bench(a.llama_dir, path, t, a.n_prompt, a.n_gen))
            med = lambda rows, k: statistics.median(r[k] for r in rows)
            rss_ours = peak_rss([BIN, "generate", "-m", path, "-n", "16", "--temp", "0", "-t",
                                 str(t), "-p", PROMPT])
            rss_theirs = peak_rss(llama_generate_cmd(a.llama_dir, path, t, 16))
            kv = meta["kv_bytes_per_token"] * 64
            bound = size + kv + 0.1 * size + 100e6
            pp, tg = med(ours, "pp"), med(ours, "tg")
            lpp, ltg = med(theirs, "pp"), med(theirs, "tg")
            lines.append(
                f"| {f} | {size / 1e9:.2f} GB | {t} | {pp:.1f} | {lpp:.1f} | {pp / lpp:.2f} | "
                f"{tg:.2f} | {ltg:.2f} | {tg / ltg:.2f} | {med(ours, 'bytes') / 1e6:.0f} MB | "
                f"{100 * med(ours, 'bw'):.0f} % | {rss_ours / 1e9:.2f} GB | "
                f"{rss_theirs / 1e9:.2f} GB | {bound / 1e9:.2f} GB |")
            print(lines[-1], flush=True)
            write_section(a.out, lines + ["", "(run in progress or stopped here)", "", END])
            prefill_path = ours[0]["prefill_path"]
    if files:
        lines += ["", f"eigenkv's prefill of the quantized matrices in this run: {prefill_path} "
                      "(`EIGENKV_PREFILL`, docs/DESIGN.md); F16 goes to SGEMM."]
    if a.depth_model:
        lines += depth_section(os.path.join(a.models, a.depth_model), a.depth_threads,
                               a.calib_text, [int(d) for d in a.depths.split(",")], a.n_gen,
                               a.depth_repeats or a.repeats)
        write_section(a.out, lines + ["", "(run in progress or stopped here)", "", END])
    if a.big:
        lines += big_model_section(a.big, a.big_threads, a.calib_text)
    lines += ["", END]
    write_section(a.out, lines)


def write_section(out, lines):
    """Replaces the real-size section of `out` (or appends it) with `lines`."""
    section = "\n".join(lines)
    text = open(out).read() if os.path.exists(out) else "# eigenkv benchmarks\n"
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    open(out, "w").write(text)


if __name__ == "__main__":
    sys.exit(main())
