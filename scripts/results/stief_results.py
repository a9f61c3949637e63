#!/usr/bin/env python3
"""StiefAttention against Eigen Attention at equal KV size: docs/results/stief.md and its plot.

Protocol of the Eigen results (scripts/results/eigen_results.py): calibrate on the first 32768
tokens of the first half of ../shared/data/tinystories/valid_a.txt (paragraphs), evaluate at
ctx 256 on the first 60 windows of its second half and of WikiText-2 test. Every model in
../shared/models with head_dim >= 32 is run (others are listed as skipped).

Both methods go through `eigenkv calibrate --method stief`: Eigen is the same command with
--epochs 0 (the Eigen bases, the same candidate ranks, the same profile windows and the same
allocator), so the two differ only in the learnt bases. For each KV fraction F:
  * uniform ranks r_K = r_V = round(F d_h) in every layer (identical KV bytes for both methods):
    mean over layers of the held-out relative layer-output error and cosine;
  * `--kv-budget F` (ranks allotted per layer from each method's own calibration profile):
    KV fraction reached, mean held-out layer error at the allotted ranks, PPL, KLD and top-1
    agreement on both texts.
Every number comes from `eigenkv ... --json`.

  python3 scripts/results/stief_results.py [--quick] [--models NAME,...] [--out FILE]
"""
import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from machine import cpu_line  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
BIN = os.path.join(ROOT, "build", "eigenkv")
FRACTIONS = [0.5, 0.6, 0.7, 0.8, 0.9]


def run(args):
    out = subprocess.run([BIN] + args, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def split_valid_a(tmp):
    text = open(os.path.join(SHARED, "data/tinystories/valid_a.txt"), encoding="utf-8").read()
    paras = text.split("\n\n")
    half = len(paras) // 2
    calib = os.path.join(tmp, "valid_a_first_half.txt")
    evalp = os.path.join(tmp, "valid_a_second_half.txt")
    open(calib, "w", encoding="utf-8").write("\n\n".join(paras[:half]))
    open(evalp, "w", encoding="utf-8").write("\n\n".join(paras[half:]))
    return calib, evalp


def shared_models():
    """Every model file or Hugging Face directory under ../shared/models, by relative path."""
    base = os.path.join(SHARED, "models")
    found = []
    for root, dirs, files in os.walk(base):
        if "config.json" in files:
            found.append(os.path.relpath(root, base))
            dirs[:] = []
            continue
        found += [os.path.relpath(os.path.join(root, f), base) for f in files
                  if f.endswith(".gguf")]
    return sorted(found)


def evaluate(model, base, text, windows):
    return run(["perplexity", "-m", model, "-f", text, "--ctx", "256", "--json", "--kld-base",
                base, "--max-windows", str(windows)])


def at_ranks(points, rk, rv):
    for p in points:
        if p["key_rank"] == rk and p["value_rank"] == rv:
            return p
    raise KeyError((rk, rv))


def mean(xs):
    return sum(xs) / len(xs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer tokens, epochs and windows")
    ap.add_argument("--models", default="", help="comma-separated names under ../shared/models")
    ap.add_argument("--threads", default="2")
    ap.add_argument("--fractions", default=",".join(str(f) for f in FRACTIONS),
                    help="KV fractions F to allot (--kv-budgets) and to compare at uniform ranks")
    ap.add_argument("--ranks", default="",
                    help="candidate ranks as fractions of d_h (calibrate --ranks; default its own "
                         "0.5..0.9); must hold every F")
    ap.add_argument("--title", default="StiefAttention against Eigen Attention at equal KV size")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "results", "stief.md"))
    ap.add_argument("--plot", default=os.path.join(ROOT, "docs", "results", "stief_profile.svg"),
                    help="profile plot of the first model run ('' for none)")
    a = ap.parse_args()
    fractions = [float(f) for f in a.fractions.split(",") if f]
    rank_args = ["--ranks", a.ranks] if a.ranks else []
    candidates = a.ranks.replace(",", ", ") if a.ranks else "0.5..0.9"
    tmp = tempfile.mkdtemp(prefix="eigenkv_stief_")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    calib, evalp = split_valid_a(tmp)
    wiki = os.path.join(SHARED, "data/wikitext-2-raw/wiki.test.raw")
    windows = 20 if a.quick else 60
    tokens = "8192" if a.quick else "32768"
    train = ["--train-windows", "16"] if a.quick else []
    stief_epochs = ["--epochs", "3"] if a.quick else []
    threads = ["-t", a.threads]
    started = time.time()
    wanted = [m for m in a.models.split(",") if m] or shared_models()
    lines = ["## %s\n" % a.title,
             "Calibration: the first %s tokens of the first half of valid_a (ctx 256); Stief "
             "trains with `%s` (defaults: 64 windows, 10 epochs, lr 5e-3), profiles on the "
             "first 8 windows. Held-out layer "
             "errors: the first 8 windows of valid_a's second half. PPL/KLD/top-1: the first %d "
             "windows of valid_a's second half (TS) and of WikiText-2 test (Wiki). Eigen = the "
             "same command with `--epochs 0`: same bases as Eigen Attention, same candidate "
             "ranks %s d_h, same allocator.\n" % (tokens, " ".join(train + stief_epochs) or "defaults", windows,
                                                  candidates)]
    skipped = []
    plot_done = not a.plot
    timing = []
    for rel in wanted:
        path = os.path.join(SHARED, "models", rel)
        info = run(["info", "-m", path, "--json"])
        if info["head_dim"] < 32:
            skipped.append("%s (head_dim %d)" % (rel, info["head_dim"]))
            continue
        base_ts = evaluate(path, path, evalp, windows)
        base_wk = evaluate(path, path, wiki, windows)
        lines.append("### %s (head_dim %d, %d layers, %d KV heads)\n" %
                     (rel, info["head_dim"], info["n_layers"], info["n_kv_heads"]))
        lines.append("Original: PPL %.4f (TS), %.4f (Wiki).\n" % (base_ts["ppl"], base_wk["ppl"]))
        uniform_rows, allot_rows = [], []
        runs = {}
        for method, epochs in (("Eigen", ["--epochs", "0"]), ("Stief", stief_epochs)):
            pattern = os.path.join(tmp, method + "_{}.gguf")
            prof = os.path.join(tmp, method + "_profile.json")
            args = ["calibrate", "--method", "stief", "-m", path, "-f", calib, "--tokens", tokens,
                    "--kv-budgets", ",".join(str(f) for f in fractions), "--heldout", evalp,
                    "-o", pattern, "--profile-json", prof, "--json"] + train + epochs + threads \
                + rank_args
            if method == "Stief" and not plot_done:
                args += ["--plot", a.plot]
                plot_done = True
            t0 = time.time()
            cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cal = run(args)
            cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            if method == "Stief":
                cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
                timing.append((rel, time.time() - t0, cal["seconds"], cpu, a.threads))
                profiles = json.load(open(prof))
            runs[method] = cal
        for i, frac in enumerate(fractions):
            for method in ("Eigen", "Stief"):
                cal = runs[method]
                out = cal["outputs"][i]
                ts = evaluate(out["output"], path, evalp, windows)
                wk = evaluate(out["output"], path, wiki, windows)
                key = "stief_heldout" if method == "Stief" else "eigen_heldout"
                held = [at_ranks(l[key], c["key_rank"], c["value_rank"])
                        for l, c in zip(cal["layers"], out["chosen"])]
                err = mean([h["error"] for h in held])
                cos = mean([h["cosine"] for h in held])
                allot_rows.append("| %g | %s | %.4f | %.5f | %.6f | %.4f | %.5f | %.1f %% | "
                                  "%.4f | %.5f | %.1f %% |" % (
                                      frac, method, out["kv_fraction"], err, cos, ts["ppl"],
                                      ts["kld_mean"], 100 * ts["top1_agree"], wk["ppl"],
                                      wk["kld_mean"], 100 * wk["top1_agree"]))
        # Uniform ranks from the last Stief run's profiles (both methods' held-out profiles).
        dh = profiles["head_dim"]
        for frac in fractions:
            r = int(round(frac * dh))
            row = []
            for key in ("eigen_heldout", "stief_heldout"):
                pts = [at_ranks(l[key], r, r) for l in profiles["layers"]]
                row += [mean([p["error"] for p in pts]), mean([p["cosine"] for p in pts])]
            cal_rows = []
            for key in ("eigen", "stief"):
                pts = [at_ranks(l[key], r, r) for l in profiles["layers"]]
                cal_rows.append(mean([p["error"] for p in pts]))
            uniform_rows.append("| %g | %d | %.3f | %.5f | %.5f | %.5f | %.5f | %.6f | %.6f | "
                                "%+.1f %% |" % (frac, r, r / dh, cal_rows[0], cal_rows[1], row[0],
                                                row[2], row[1], row[3],
                                                100 * (row[2] - row[0]) / row[0]))
        lines.append("#### Layer-output error at uniform ranks (identical KV bytes)\n")
        lines.append("Mean over layers of the relative decoder-layer output error "
                     "‖Y − Ŷ‖/‖Y‖ and of the row cosine, r_K = r_V = r in every layer.\n")
        lines.append("| F | r | KV fraction | calib error Eigen | calib error Stief | held-out "
                     "error Eigen | held-out error Stief | cosine Eigen | cosine Stief | "
                     "Stief vs Eigen (held-out error) |")
        lines.append("|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
        lines += uniform_rows
        lines.append("")
        # The paper's shared key basis against eigenkv's per-KV-head one.
        shared_prof = os.path.join(tmp, "Shared_profile.json")
        run(["calibrate", "--method", "stief", "--shared-key-basis", "-m", path, "-f", calib,
             "--tokens", tokens, "--kv-budget", "0.5", "--heldout", evalp, "-o",
             os.path.join(tmp, "shared.gguf"), "--profile-json", shared_prof, "--json"]
            + train + stief_epochs + threads + rank_args)
        shared = json.load(open(shared_prof))
        lines.append("#### Key basis per KV head (default) or shared by the layer's KV heads\n")
        lines.append("`--shared-key-basis`: one U_K per layer (the paper's choice), started from "
                     "the eigenbasis of the heads' summed key Gram matrices; values per KV head "
                     "in both. Held-out mean layer error at uniform ranks.\n")
        kept = sum(1 for l in shared["layers"] if l["kept_eigen"])
        lines.append("With a shared key basis, %d of %d layers ended worse than Eigen's "
                     "per-head bases on the profile windows (and would keep those); the column "
                     "shows the shared bases' own errors.\n" % (kept, len(shared["layers"])))
        lines.append("| F | r | Eigen (per head) | Stief per-head K | Stief shared K | "
                     "cosine per-head K | cosine shared K |")
        lines.append("|--:|--:|--:|--:|--:|--:|--:|")
        for frac in fractions:
            r = int(round(frac * dh))
            e = [at_ranks(l["eigen_heldout"], r, r) for l in profiles["layers"]]
            ph = [at_ranks(l["stief_heldout"], r, r) for l in profiles["layers"]]
            # The shared basis' own errors, also where the layer fell back to Eigen's bases.
            sh = [at_ranks(l.get("stief_trained_heldout", l["stief_heldout"]), r, r)
                  for l in shared["layers"]]
            lines.append("| %g | %d | %.5f | %.5f | %.5f | %.6f | %.6f |" % (
                frac, r, mean([p["error"] for p in e]), mean([p["error"] for p in ph]),
                mean([p["error"] for p in sh]), mean([p["cosine"] for p in ph]),
                mean([p["cosine"] for p in sh])))
        lines.append("")
        lines.append("#### Allotted ranks (`--kv-budget F`, each method from its own profile)\n")
        lines.append("| F | method | KV fraction | held-out layer error | cosine | PPL TS | KLD TS "
                     "| top-1 TS | PPL Wiki | KLD Wiki | top-1 Wiki |")
        lines.append("|--:|--|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
        lines += allot_rows
        lines.append("")
        print("done %s after %.0f s" % (rel, time.time() - started), file=sys.stderr)
        write(a, lines, timing, skipped, started, wanted[wanted.index(rel) + 1:], len(fractions))
    write(a, lines, timing, skipped, started, None, len(fractions))
    print("wrote", a.out, file=sys.stderr)


def write(a, lines, timing, skipped, started, pending, n_budgets):
    """Writes the document; `pending` names the models still to run (None when complete)."""
    out = list(lines)
    if timing:
        out.append("### Calibration time\n")
        out.append("Wall times on a machine shared with other jobs (load average %.1f when "
                   "written); CPU time is the process's own.\n" % os.getloadavg()[0])
        out.append("| model | threads | `calibrate --method stief` wall time, %d budgets written "
                   "(s) | of which calibration, training and profiles (s) | CPU time (s) |" % n_budgets)
        out.append("|--|--:|--:|--:|--:|")
        for rel, wall, inside, cpu, th in timing:
            out.append("| %s | %s | %.1f | %.1f | %s |" % (
                rel, th, wall, inside, "%.1f" % cpu if cpu is not None else "-"))
        out.append("")
    if skipped:
        out.append("Skipped (head_dim < 32): %s.\n" % ", ".join(skipped))
    if pending:
        out.append("_Partial: not yet run: %s._\n" % ", ".join(pending))
    out.append("Produced by `python3 scripts/results/stief_results.py%s` on %s (%s) in %.0f s." % (
        " " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "", datetime.date.today().isoformat(),
        cpu_line(), time.time() - started))
    open(a.out, "w").write("\n".join(out) + "\n")

if __name__ == "__main__":
    main()
