"""Results files (JSON + CSV), the scaling fit, PNG plots and the README's results block.

A results document: ``{"format", "benchmark", "created", "quick", "machine", "config", "rows"}``;
every row carries its own configuration beside its numbers. The CSV has one line per row, the
union of the rows' keys as header, and the machine's fields (``machine_*``) on every line.
Plots and the README block are made from these files only, never from a live run.
"""
from __future__ import annotations

import csv
import datetime as _dt
import glob
import json
import math
import os
import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

FORMAT = "barrierkit-bench/1"
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
LEAD_COLUMNS = ["benchmark", "workload", "method", "device", "n", "status"]


class PlotUnavailable(RuntimeError):
    """matplotlib is missing: the message says what to install."""


class BadResults(ValueError):
    """A file that is not a usable results document; the message names the file and says why."""


# ----------------------------------------------------------------------------- the scaling fit


def fit_exponent(ns: Sequence[float], times: Sequence[float]) -> Dict[str, float]:
    """Least squares of log(time) on log(N): time ~ prefactor * N ** exponent; with r^2."""
    x, y = np.log(np.asarray(ns, dtype=float)), np.log(np.asarray(times, dtype=float))
    if len(x) < 2 or np.ptp(x) == 0:
        raise ValueError("fit_exponent: need at least two distinct N")
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (slope * x + intercept)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(resid ** 2)) / ss_tot if ss_tot > 0 else 1.0
    return {"exponent": float(slope), "prefactor": float(math.exp(intercept)), "r2": r2}


# ----------------------------------------------------------------------------- results files


def _flat(value):
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    return "" if value is None else value


def _stamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def document(benchmark: str, rows: List[Dict], machine: Dict, config: Dict, quick: bool) -> Dict:
    for row in rows:
        row.setdefault("benchmark", benchmark)
    return {"format": FORMAT, "benchmark": benchmark, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
            "quick": bool(quick), "machine": machine, "config": config, "rows": rows}


def write_results(doc: Dict, out_dir: str) -> Tuple[str, str]:
    """Write ``doc`` as JSON and CSV under ``out_dir``; returns both paths."""
    os.makedirs(out_dir, exist_ok=True)
    commit = re.sub(r"[^A-Za-z0-9]+", "-", str(doc["machine"].get("commit", "unknown"))).strip("-")
    stem = f"{doc['benchmark']}-{_stamp()}-{commit}{'-quick' if doc.get('quick') else ''}"
    path = os.path.join(out_dir, stem + ".json")
    k = 1
    while os.path.exists(path):  # two files in the same second
        path = os.path.join(out_dir, f"{stem}.{k}.json")
        k += 1
    with open(path, "w") as fh:
        json.dump(doc, fh, indent=2, default=str)
        fh.write("\n")
    csv_path = path[:-5] + ".csv"
    write_csv(doc, csv_path)
    return path, csv_path


def write_csv(doc: Dict, path: str) -> None:
    machine = {f"machine_{k}": _flat(v) for k, v in doc["machine"].items()}
    keys: List[str] = []
    for row in doc["rows"]:
        for k in row:
            if k not in keys:
                keys.append(k)
    header = [k for k in LEAD_COLUMNS if k in keys] + [k for k in keys if k not in LEAD_COLUMNS]
    header += ["quick", "created"] + list(machine)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for row in doc["rows"]:
            full = {**{k: _flat(v) for k, v in row.items()}, "quick": doc.get("quick"), "created": doc.get("created"), **machine}
            w.writerow([full.get(k, "") for k in header])


def load_results(path: str) -> Dict:
    """A results document from its JSON, or rebuilt from its CSV (numbers parsed back)."""
    if path.endswith(".csv"):
        with open(path, newline="") as fh:
            raw = list(csv.DictReader(fh))
        rows, machine = [], {}
        for r in raw:
            machine = {k[len("machine_"):]: v for k, v in r.items() if k.startswith("machine_")}
            rows.append({k: _parse(v) for k, v in r.items() if not k.startswith("machine_") and k not in ("quick", "created")})
        first = raw[0] if raw else {}
        return {"format": FORMAT, "benchmark": rows[0].get("benchmark", "?") if rows else "?", "created": first.get("created"),
                "quick": first.get("quick") == "True", "machine": machine, "config": {}, "rows": rows}
    with open(path) as fh:
        return json.load(fh)


def read_results(path: str) -> Dict:
    """:func:`load_results`, checked: a results document whose rows are all rows (dicts with a
    ``benchmark``), else :class:`BadResults` saying why in one line."""
    try:
        doc = load_results(path)
    except FileNotFoundError:
        raise BadResults(f"{path}: no such file") from None
    except IsADirectoryError:
        raise BadResults(f"{path}: is a folder, not a results file") from None
    except OSError as exc:
        raise BadResults(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise BadResults(f"{path}: not a text file (a results file is JSON or CSV)") from None
    except json.JSONDecodeError as exc:
        raise BadResults(f"{path}: not JSON ({exc})") from None
    except (csv.Error, ValueError) as exc:
        raise BadResults(f"{path}: not a results file ({type(exc).__name__}: {exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise BadResults(f"{path}: not a bench results document (no \"format\": \"{FORMAT}\")")
    rows = doc.get("rows")
    if not isinstance(rows, list) or not all(isinstance(r, dict) and r.get("benchmark") for r in rows):
        raise BadResults(f"{path}: not a bench results document (\"rows\" is not a list of rows with a \"benchmark\")")
    return doc


def _parse(v: str):
    if v == "":
        return None
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def latest_results(directory: str = RESULTS_DIR, need: str = "throughput") -> Optional[str]:
    """The newest results JSON in ``directory`` with ``need`` rows (a full run before a quick one)."""
    found = []
    for path in glob.glob(os.path.join(directory, "*.json")):
        try:
            doc = load_results(path)
        except (OSError, ValueError):
            continue
        if doc.get("format") != FORMAT or not any(r.get("benchmark") == need for r in doc.get("rows", [])):
            continue
        found.append((not doc.get("quick"), doc.get("created") or "", path))
    return max(found)[2] if found else None


# ----------------------------------------------------------------------------- README block


def _fmt(v, digits: int = 3) -> str:
    if v is None or v == "":
        return "–"
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}g}"
    return str(v)


def readme_block(doc: Dict, source: str) -> str:
    """Markdown generated from one results document (the text between the README markers)."""
    m = doc.get("machine", {})
    rel = os.path.relpath(source, os.path.dirname(README)) if os.path.isabs(source) else source
    lines = [f"Generated by `python -m bench readme` from `{rel}` ({doc.get('created', '?')}); do not edit by hand.",
             "",
             f"Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, GPU {m.get('gpu') or 'none'}; "
             f"torch {m.get('torch', '?')}, Python {m.get('python', '?')}; commit {m.get('commit', '?')}."]
    if doc.get("quick"):
        lines += ["", "**Quick run (tiny sizes): a check of the harness, not a measurement.**"]
    rows = doc.get("rows", [])
    tp = [r for r in rows if r.get("benchmark") == "throughput" and r.get("status") == "ok"]
    if tp:
        roof = any(r.get("roofline_fraction") is not None for r in tp)
        lines += ["", "Trajectory-steps per second (median of repeated runs; best in brackets); × loop: against the "
                      "per-trajectory nn.Module + torch.optim.SGD loop on the same workload.", "",
                  "| workload | method | device | N | steps/s median (best) | × loop | peak RSS MB (+ this case) |" + (" roofline |" if roof else ""),
                  "| --- | --- | --- | ---: | ---: | ---: | ---: |" + (" ---: |" if roof else "")]
        for r in tp:
            cells = [r.get("workload_title") or r.get("workload"), r.get("method"), r.get("device"), _fmt(r.get("n")),
                     f"{_fmt(r.get('steps_per_s_median'))} ({_fmt(r.get('steps_per_s_best'))})", _fmt(r.get("speedup_vs_loop")),
                     f"{_fmt(r.get('peak_rss_mb'))} (+{_fmt(r.get('peak_rss_delta_mb'))})"]
            if roof:
                cells.append(_fmt(r.get("roofline_fraction")))
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    skipped = [r for r in rows if r.get("benchmark") == "throughput" and r.get("status") != "ok"]
    if skipped:
        seen = {}
        for r in skipped:
            seen.setdefault((r.get("method"), r.get("status"), r.get("reason")), []).append(r.get("workload"))
        lines += [""] + [f"- {meth} {status}: {reason}" for (meth, status, reason) in seen]
    cert = [r for r in rows if r.get("benchmark") == "certify"]
    if cert:
        lines += ["", "Certification (`barrierkit.api.certify`):", "",
                  "| config | status | probes | total s | certifications/h | certified probes/h | trajectory-steps/s |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
        for r in cert:
            lines.append(f"| {r.get('certify_config')} | {r.get('status')} | {_fmt(r.get('probes'))} | {_fmt(r.get('total_s'))} | "
                         f"{_fmt(r.get('certifications_per_hour'))} | {_fmt(r.get('certified_probes_per_hour'))} | "
                         f"{_fmt(r.get('trajectory_steps_per_s'))} |")
    fits = [r for r in rows if r.get("benchmark") in ("scaling_fit", "scp_fit")]
    if fits:
        lines += ["", "Fitted exponents (time ~ N^k, log-log least squares):", "",
                  "| benchmark | workload / solver | method / mode | N range | k | r² |", "| --- | --- | --- | --- | ---: | ---: |"]
        for r in fits:
            lines.append(f"| {r['benchmark'][:-4]} | {r.get('workload') or r.get('solver')} | {r.get('method') or r.get('mode')} | "
                         f"{r.get('n_min')}–{r.get('n_max')} | {_fmt(r.get('exponent'))} | {_fmt(r.get('r2'))} |")
    return "\n".join(lines)


def reportable(doc: Dict) -> bool:
    """Whether ``doc`` has anything for :func:`readme_block`'s tables."""
    return any(r.get("benchmark") in ("throughput", "certify", "scaling_fit", "scp_fit") for r in doc.get("rows", []))


def rewrite_readme(block: str, readme: str = README) -> None:
    """Replace what lies between the bench markers in ``readme`` by ``block``."""
    with open(readme) as fh:
        text = fh.read()
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{readme}: no '{BEGIN}' ... '{END}' markers")
    new = text[:start + len(BEGIN)] + "\n" + block.strip("\n") + "\n" + text[end:]
    with open(readme, "w") as fh:
        fh.write(new)


# ----------------------------------------------------------------------------- plots


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise PlotUnavailable("bench plot needs matplotlib, which is not installed: pip install matplotlib "
                              "(add it to the 'dev' extra in pyproject.toml)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _positive(v) -> bool:
    """A number a log axis can show."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def plottable(rows: List[Dict]) -> Dict[str, List[Dict]]:
    """The rows each plot is drawn from (a finished row with positive numbers to draw), by plot."""
    def done(r: Dict, benchmark: str, default: Optional[str] = None) -> bool:
        return r.get("benchmark") == benchmark and r.get("status", default) == "ok"

    def seconds(r: Dict):
        return r.get("time_per_step_s", r.get("min_s"))

    return {
        "throughput": [r for r in rows if done(r, "throughput") and _positive(r.get("steps_per_s_median"))],
        "scaling": [r for r in rows if done(r, "scaling", "ok") and _positive(r.get("n")) and _positive(seconds(r))],
        "scp": [r for r in rows if done(r, "scp", "ok") and _positive(r.get("n")) and _positive(seconds(r))],
        "roofline": [r for r in rows if done(r, "roofline") and _positive(r.get("model_intensity"))
                     and _positive(r.get("achieved_gflops"))],
    }


def plot(path: str, out_dir: Optional[str] = None) -> List[str]:
    """PNG plots of one results file; returns the paths written. A file with nothing to plot
    raises :class:`BadResults` (before matplotlib is needed)."""
    doc = read_results(path)
    rows = doc["rows"]
    drawn = plottable(rows)
    if not any(drawn.values()):
        raise BadResults(f"{path}: nothing to plot (no finished throughput, scaling, scp or roofline rows)")
    plt = _pyplot()
    out_dir = out_dir or os.path.dirname(os.path.abspath(path))
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.splitext(os.path.basename(path))[0]
    title = f"{doc.get('machine', {}).get('cpu', '?')} / GPU {doc.get('machine', {}).get('gpu') or 'none'}"
    written = []

    def save(fig, what: str) -> None:
        p = os.path.join(out_dir, f"{stem}-{what}.png")
        fig.tight_layout()
        fig.savefig(p, dpi=120)
        plt.close(fig)
        written.append(p)

    tp = drawn["throughput"]
    if tp:
        fig, ax = plt.subplots(figsize=(8, 0.35 * len(tp) + 1.5))
        labels = [f"{r.get('workload')} / {r.get('method')}" for r in tp]
        ax.barh(range(len(tp)), [r["steps_per_s_median"] for r in tp], color="tab:blue")
        ax.set_yticks(range(len(tp)), labels)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("trajectory-steps / s (median)")
        ax.set_title(f"throughput: {title}", fontsize=9)
        save(fig, "throughput")
    for bench_name, key_a, key_b, xlab in (("scaling", "workload", "method", "N (trajectories)"),
                                            ("scp", "solver", "mode", "N_v (verification runs)")):
        pts = drawn[bench_name]
        if not pts:
            continue
        fits = {(r.get(key_a), r.get(key_b)): r for r in rows if r.get("benchmark") == bench_name + "_fit"}
        groups = sorted({r.get(key_a) for r in pts})
        fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), squeeze=False)
        for ax, g in zip(axes[0], groups):
            for sub in sorted({r.get(key_b) for r in pts if r.get(key_a) == g}):
                sel = sorted((r for r in pts if r.get(key_a) == g and r.get(key_b) == sub), key=lambda r: r["n"])
                ys = [r.get("time_per_step_s", r.get("min_s")) for r in sel]
                fit = fits.get((g, sub))
                label = f"{sub}" + (f" (k={fit['exponent']:.2f})" if fit and isinstance(fit.get("exponent"), (int, float)) else "")
                ax.loglog([r["n"] for r in sel], ys, "o-", label=label)
            ax.set_xlabel(xlab)
            ax.set_ylabel("seconds per step" if bench_name == "scaling" else "seconds per solve")
            ax.set_title(f"{bench_name}: {g}", fontsize=9)
            ax.legend(fontsize=7)
        save(fig, bench_name)
    rl = drawn["roofline"]
    if rl:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for r in rl:
            ax.loglog(r["model_intensity"], r["achieved_gflops"], "o")
            ax.annotate(f"{r.get('workload')}/{r.get('method')}", (r["model_intensity"], r["achieved_gflops"]), fontsize=6)
        peak_f = next((r.get("peak_flops") for r in rl if r.get("peak_flops")), None)
        peak_b = next((r.get("peak_bytes_per_s") for r in rl if r.get("peak_bytes_per_s")), None)
        if peak_f and peak_b:
            xs = np.logspace(-1, 3, 100)
            ax.loglog(xs, np.minimum(peak_f, peak_b * xs) / 1e9, "k-", lw=1, label="roofline")
            ax.legend(fontsize=7)
        ax.set_xlabel("model FLOP / byte")
        ax.set_ylabel("achieved GFLOP/s (model FLOPs / measured time)")
        ax.set_title(f"roofline: {title}", fontsize=9)
        save(fig, "roofline")
    return written


def rows_of(docs: Iterable[Dict]) -> List[Dict]:
    return [r for d in docs for r in d.get("rows", [])]
