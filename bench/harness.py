"""The benchmark harness: ``python -m bench throughput | certify | scaling | scp | roofline | all | plot | readme``.

    python -m bench all [--out DIR] [--quick]      # everything; one results file per part + one for all
    python -m bench throughput [--n 1000] [--certify auto|default|mnist|evasion|evasion-ibp|reduced|none]
    python -m bench certify [--certify mnist]      # one whole certification, stage by stage
    python -m bench scaling [--ns 250 500 ...]     # time per step against N, fitted exponent
    python -m bench scp [--scp-ns 1000 2000 ...]   # SCP seconds against N_v (bench/scp.py)
    python -m bench roofline [--n 4000]            # measured times beside the step_cost model
    python -m bench plot FILE [--out DIR]          # PNGs from a results file (needs matplotlib)
    python -m bench readme [FILE]                  # README's results block from the latest results

Every case is set up by ``bench.workloads.setup`` (shared with the pytest-benchmark suite in
bench/test_throughput.py). CPU: ``--warmup`` untimed calls then ``--repeats`` timed calls, best
(min) and median reported; GPU: triton.testing.do_bench (median, quantiles). ``--quick``: tiny
N and few steps, a check that the harness works (seconds), not a measurement.

Every finished row is also appended to ``PART-partial-STAMP.jsonl`` in --out as it completes, so
a run cut off by a time limit keeps what it measured; the file is removed once the part's
results file is written.

Exit status: 0 when every case ran (or was skipped as unavailable here, e.g. a GPU-only method on
a CPU); 1 when a case failed unexpectedly (its row says why, status "error"; the rows that did
run are still written); 2 for bad arguments or a bad input file, refused before any work starts.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import sys
import tempfile
import traceback
from typing import Callable, Dict, List, Optional, Tuple

import torch

from barrierkit.backends.triton_gpu import MAX_STEPS_PER_LAUNCH

from . import report, roofline
from .machine import describe
from .timing import PeakMemory, pin_threads, restore_threads, time_call
from .workloads import METHODS, WORKLOADS, Unavailable, numba_threads, setup, warm

SCALING_NS = [250, 500, 1000, 2000, 4000, 8000]
SCALING_NS_GPU = SCALING_NS + [16000]
QUICK = {"n": 4, "roofline_n": 4, "ns": [4, 8, 16], "scp_ns": [40, 80], "steps": 2, "repeats": 2, "warmup": 1,
         "loop_runs": 2, "reference_steps": 16}
FULL = {"n": 1000, "n_gpu": 4000, "roofline_n": 4000, "scp_ns": [1000, 2000, 4000, 8000], "steps": 8, "warmup": 1,
        "loop_runs": 16, "reference_steps": 400, "repeats": {"throughput": 5, "scaling": 3, "roofline": 3, "scp": 2}}


def reduced_certify_config(dataset: str = "digits", hidden: tuple = (32,), batch: int = 32):
    """A tiny certification (seconds): the --quick stand-in for a full CertifyConfig."""
    from barrierkit.barrier import BarrierConfig
    from barrierkit.config import CertifyConfig, FeatureSpec, ModelSpec, SampleConfig, TrainRecipe

    sample = SampleConfig(dataset=dataset, model=ModelSpec(hidden=hidden), recipe=TrainRecipe(steps=80, batch=batch, record_every=20),
                          features=FeatureSpec(projection_dim=4, probe_size=64))
    return CertifyConfig(sample=sample, alpha=0.1, n_verify=40, n_train=20, n_clean=10, n_pool=10, max_probes=2,
                         epsilon=0.6, beta=0.1, delta_start=0.01, barrier=BarrierConfig(epochs=50))


MNIST_SHAPE = {"dataset": "synthetic-mnist", "hidden": (64,), "batch": 64}
MNIST_N_VERIFY = 4000


def mnist_certify_config():
    """The issue's GPU target: the MNIST-shaped recipe (784-64-10, batch 64, otherwise the default
    recipe) certified with N_v = 4000 verification runs per probe; every other setting default."""
    from barrierkit.config import CertifyConfig, ModelSpec, SampleConfig, TrainRecipe

    sample = SampleConfig(dataset=MNIST_SHAPE["dataset"], model=ModelSpec(hidden=MNIST_SHAPE["hidden"]),
                          recipe=TrainRecipe(batch=MNIST_SHAPE["batch"]))
    return CertifyConfig(sample=sample, n_verify=MNIST_N_VERIFY)


EVASION_JUDGES = {"evasion": "pgd", "evasion-ibp": "ibp"}
"""The evasion certification modes: the default digits recipe, the search over δ', judged by PGD
(δ'_cert) or by the interval bound (δ'_sound)."""


def certify_config(mode: str, quick: bool):
    """(config, workload name) of a certification mode; --quick shrinks it to seconds, same shape."""
    from barrierkit.config import CertifyConfig, EvasionThreat

    if mode in EVASION_JUDGES:
        base = reduced_certify_config() if quick else CertifyConfig()
        sample = dataclasses.replace(base.sample, threat_kind="evasion", evasion=EvasionThreat(attack=EVASION_JUDGES[mode]))
        return dataclasses.replace(base, sample=sample), "digits"
    if mode == "mnist":
        return (reduced_certify_config(**MNIST_SHAPE) if quick else mnist_certify_config()), "mnist"
    if mode == "reduced" or quick:
        return reduced_certify_config(), "digits"
    return CertifyConfig(), "digits"


# ----------------------------------------------------------------------------- settings


class Settings:
    """The arguments resolved against the --quick / full defaults and the device."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.quick = args.quick
        self.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.cuda = self.device.type == "cuda"
        d = QUICK if self.quick else FULL
        self.steps = args.steps or d["steps"]
        self.warmup = args.warmup if args.warmup is not None else d["warmup"]
        self.loop_runs = args.loop_runs or d["loop_runs"]
        self.reference_steps = d["reference_steps"]
        self.n = args.n or (d["n"] if self.quick else (d["n_gpu"] if self.cuda else d["n"]))
        self.roofline_n = args.n or d["roofline_n"]
        self.ns = args.ns or (QUICK["ns"] if self.quick else (SCALING_NS_GPU if self.cuda else SCALING_NS))
        self.scp_ns = args.scp_ns or d["scp_ns"]
        self.workloads = args.workloads or list(WORKLOADS)
        self._roofs: Optional[Dict] = None
        self.row_log: Optional[str] = None
        self.recorded: List[Dict] = []  # the current part's finished rows, kept if the part fails midway

    def record(self, row: Dict) -> Dict:
        """Append one finished row to the part's partial log (kept if the run is cut off)."""
        self.recorded.append(row)
        if self.row_log:
            with open(self.row_log, "a") as fh:
                fh.write(json.dumps(row, default=str) + "\n")
        return row

    def repeats(self, part: str) -> int:
        if self.args.repeats:
            return self.args.repeats
        return QUICK["repeats"] if self.quick else FULL["repeats"].get(part, 1)

    def methods(self, part: str) -> List[str]:
        if self.args.methods:
            return self.args.methods
        return list(METHODS) if part == "throughput" else [m for m in METHODS if m != "loop"]

    def roofs(self) -> Dict:
        if self._roofs is None:
            self._roofs = roofline.peaks(self.device, self.args.peak_gflops, self.args.peak_gbps)
        return self._roofs

    def config(self, part: str) -> Dict:
        a = self.args
        return {"part": part, "quick": self.quick, "device": str(self.device), "steps_per_call": self.steps,
                "repeats": self.repeats(part) if part != "all" else None, "warmup": self.warmup, "delta": a.delta,
                "memory_mb": a.memory_mb, "threads": torch.get_num_threads(), "workloads": self.workloads,
                "certify": a.certify, "emp": a.emp,
                "reference_steps": self.reference_steps, "gpu_warmup_ms": a.gpu_warmup_ms, "gpu_rep_ms": a.gpu_rep_ms,
                "argv": getattr(a, "argv", None)}


# ----------------------------------------------------------------------------- one timed case


def run_case(s: Settings, part: str, workload: str, method: str, n: int, loop: Optional[Dict] = None) -> Dict:
    """Set up, time and measure one workload x method x N; the row (never raises). With ``loop``
    (the same workload's measured loop row) the row carries its speed-up before it is logged."""
    row: Dict = {"benchmark": part, "workload": workload, "method": method, "n": n, "device": str(s.device),
                 "steps_per_call": s.steps, "repeats": s.repeats(part), "warmup": s.warmup}
    case = None
    try:
        warm(workload, s.reference_steps)
        with PeakMemory(s.device) as mem:
            case = setup(workload, method, n, steps=s.steps, device=s.device, delta=s.args.delta,
                         memory_mb=s.args.memory_mb, reference_steps=s.reference_steps)
            if s.cuda:  # device peak: setup and one call, before do_bench adds its L2-flush buffer
                case.call()
                case.sync()
            else:
                timing = time_call(case.call, s.device, s.repeats(part), s.warmup)
        if s.cuda:
            timing = time_call(case.call, s.device, s.repeats(part), s.warmup, s.args.gpu_warmup_ms, s.args.gpu_rep_ms)
        row.update(case.config())
        headline = timing["median_s"] if s.cuda else timing["min_s"]
        row.update({f"time_{k}": v for k, v in timing.items()})
        row.update(status="ok", reason=None, headline="median" if s.cuda else "min",
                   time_per_step_s=headline / s.steps, steps_per_s_best=case.steps_per_call / timing["min_s"],
                   steps_per_s_median=case.steps_per_call / timing["median_s"], **mem.result)
        inp = case.inputs
        r = inp.config.recipe
        cost = roofline.step_cost(inp.shape.input_dim, inp.shape.hidden, inp.shape.n_classes, r.batch, n,
                                  attack=inp.config.attack.kind if inp.delta > 0 else "none", momentum=bool(r.momentum),
                                  weight_decay=bool(r.weight_decay), steps_per_launch=min(s.steps, MAX_STEPS_PER_LAUNCH))
        roofs = s.roofs() if (s.cuda or s.args.peak_gflops or s.args.peak_gbps) else {}
        row.update(roofline.fractions(cost, headline / s.steps, roofs, tf32=method == "triton_tf32"))
        row.update(peak_flops=roofs.get("flops_tf32" if method == "triton_tf32" else "flops"),
                   peak_bytes_per_s=roofs.get("bytes_per_s"))
        beside = roofline.describe_fraction(row) if (s.cuda or part == "roofline" or s.args.peak_gflops) else ""
        mem_txt = f"peak RSS {row['peak_rss_mb']:.0f} MB (+{row['peak_rss_delta_mb']:.0f})" + (f", device {row['peak_device_mb']:.0f} MB" if "peak_device_mb" in row else "")
        print(f"  {workload:7s} {method:19s} N={n:<6d} {row['steps_per_s_median']:>12,.0f} steps/s median "
              f"(best {row['steps_per_s_best']:,.0f}); {row['time_per_step_s'] * 1e3:.3g} ms/step; {mem_txt}"
              + (f"; {beside}" if beside else ""), flush=True)
    except Unavailable as exc:
        row.update(status="skipped", reason=str(exc))
        print(f"  {workload:7s} {method:19s} N={n:<6d} skipped: {exc}", flush=True)
    except Exception as exc:  # recorded, so one failing method does not lose the others' numbers
        row.update(status="error", reason=f"{type(exc).__name__}: {exc}")
        print(f"  {workload:7s} {method:19s} N={n:<6d} ERROR {type(exc).__name__}: {exc}", flush=True)
        traceback.print_exc()
    finally:
        del case
        if s.cuda:
            torch.cuda.empty_cache()
    if method == "loop" and part == "throughput":
        loop = row
    if loop and loop.get("status") == "ok" and row.get("status") == "ok":
        row["speedup_vs_loop"] = row["steps_per_s_median"] / loop["steps_per_s_median"]
    return s.record(row)


# ----------------------------------------------------------------------------- the parts


def run_throughput(s: Settings) -> List[Dict]:
    rows: List[Dict] = []
    print(f"throughput: N={s.n} ({s.loop_runs} runs for the loop), {s.steps} steps per call, device {s.device}")
    for wl in s.workloads:
        methods = s.methods("throughput")
        methods = [m for m in methods if m == "loop"] + [m for m in methods if m != "loop"]  # loop first
        loop = None
        for method in methods:
            row = run_case(s, "throughput", wl, method, s.loop_runs if method == "loop" else s.n, loop)
            loop = row if method == "loop" else loop
            rows.append(row)
    if s.args.certify != "none":
        rows += run_certifications(s)
    return rows


def run_certifications(s: Settings) -> List[Dict]:
    mode = s.args.certify
    if mode == "none":
        return []
    if mode == "auto":
        mode = "reduced" if s.quick else "default"
    return [run_certify(s, mode)]


def run_certify(s: Settings, mode: str) -> Dict:
    """A whole certification: certifications and certified probes per hour, stage timings."""
    from barrierkit.api import certify
    from barrierkit.report import profile_stages, profile_table

    cfg, workload = certify_config(mode, s.quick)
    if s.args.emp:  # the certification with `certify --emp`: its δ_emp cells are timed as timings.empirical_s
        from barrierkit.config import EMP_ATTACKS, STRONG_EVASION

        attacks = STRONG_EVASION if cfg.sample.searches_evasion else EMP_ATTACKS
        cfg = dataclasses.replace(cfg, emp_attacks=attacks, emp_runs=4 if s.quick else (s.args.emp_runs or cfg.emp_runs))
    row: Dict = {"benchmark": "certify", "certify_config": mode + (" (quick)" if s.quick else "") + (" --emp" if s.args.emp else ""),
                 "device": str(s.device),
                 "workload": workload, "method": "certify", "n": cfg.n_verify,
                 "model": f"{cfg.sample.dataset} {'-'.join(map(str, cfg.sample.model.hidden))} batch {cfg.sample.recipe.batch}"}
    print(f"certify ({row['certify_config']}: {row['model']}, N_v={cfg.n_verify}, {cfg.sample.recipe.steps} steps, "
          f"at most {cfg.max_probes} probes)", flush=True)
    try:
        with PeakMemory(s.device) as mem:
            cert = certify(cfg, backend="auto", device=str(s.device), progress=False)
        doc = cert.doc
        cert_path = os.path.join(s.args.out, f"certificate-{mode}{'-quick' if s.quick else ''}-{report._stamp()}.json")
        try:
            cert.save(cert_path)  # the whole document: every probe's verdict, re-checkable with `barrierkit verify`
        except OSError as exc:  # never lose a long certification to a full or read-only --out
            cert_path = os.path.join(tempfile.gettempdir(), os.path.basename(cert_path))
            print(f"  could not write the certificate to --out ({exc}); writing {cert_path}", flush=True)
            cert.save(cert_path)
    except Exception as exc:
        row.update(status="error", reason=f"{type(exc).__name__}: {exc}")
        traceback.print_exc()
        return s.record(row)
    t = doc["timings"]
    total = float(t["total_s"])
    probes = doc["probes"]
    certified = sum(p["status"] == "CERTIFIED" for p in probes)
    row.update(
        status=doc["status"], backend=doc["backend"], delta_cert=doc["radii"]["delta_cert"], probes=len(probes),
        certified_probes=certified, total_s=total, **{k: v for k, v in t.items() if k != "total_s"},
        certifications_per_hour=3600.0 / total, certified_probes_per_hour=3600.0 * certified / total,
        probes_per_hour=3600.0 * len(probes) / total, trajectories=doc["throughput"]["trajectories"],
        trajectory_steps_per_s=doc["throughput"]["trajectory_steps_per_s"],
        stages={name: {"seconds": sec, "share": share} for name, sec, share in profile_stages(doc)},
        certify_settings={k: cfg.to_dict()[k] for k in ("n_verify", "n_train", "n_clean", "n_pool", "max_probes", "epsilon", "beta")}
        | {"steps": cfg.sample.recipe.steps}, certificate=os.path.basename(cert_path),
        delta_direct=doc["radii"]["delta_direct"], **emp_columns(doc),
        probe_path=[{"delta": p["delta"], "status": p["status"], "unsafe_verify": p["n_unsafe_verify"],
                     "unsafe_train": p["n_unsafe_train"], "epsilon": p.get("epsilon"), "eta_check": p.get("eta_check"),
                     "reason": p.get("reason")} for p in probes], **mem.result)
    print(f"  {doc['status']}: {len(probes)} probes ({certified} certified) in {total:.1f} s: "
          f"{row['certifications_per_hour']:.3g} certifications/h, {row['certified_probes_per_hour']:.3g} certified probes/h")
    for p in row["probe_path"]:
        print(f"    δ={p['delta']:<8.4g} {p['status']:<12} unsafe {p['unsafe_verify']} verify / {p['unsafe_train']} train"
              + (f"  ({p['reason']})" if p["status"] != "CERTIFIED" and p["reason"] else ""))
    if doc["empirical"] is not None:
        print(f"  --emp: {row['empirical_s']:.1f} s, {row['emp_overhead']:.2f}x the certification without it; "
              + ", ".join(f"δ_emp({k}) = {v}" for k, v in row["delta_emp"].items()))
    print(f"  certificate: {cert_path}")
    print("  " + profile_table(doc).replace("\n", "\n  "), flush=True)
    return s.record(row)


def emp_columns(doc: Dict) -> Dict:
    """The --emp columns of a certify row: each attack's δ_emp, its cells' unsafe counts and the
    δ_emp stage's time as a multiple of the rest of the certification (the issue's ≤ 2x target)."""
    emp = doc["empirical"]
    if emp is None:
        return {}
    rest = float(doc["timings"]["total_s"]) - float(doc["timings"]["empirical_s"])
    return {"delta_emp": emp["delta_emp"], "emp_runs": emp["n"], "emp_verdict": emp["comparison"]["verdict"],
            "emp_overhead": float(doc["timings"]["empirical_s"]) / rest,
            "emp_cells": [{k: r[k] for k in ("attack", "delta", "n", "unsafe", "interval_95", "backend")} for r in emp["rows"]]}


def run_scaling(s: Settings) -> List[Dict]:
    rows: List[Dict] = []
    print(f"scaling: N in {s.ns}, {s.steps} steps per call, device {s.device}")
    for wl in s.workloads:
        for method in s.methods("scaling"):
            pts = [run_case(s, "scaling", wl, method, n) for n in s.ns]
            rows += pts
            ok = [r for r in pts if r["status"] == "ok"]
            if len({r["n"] for r in ok}) >= 2:
                fit = report.fit_exponent([r["n"] for r in ok], [r["time_per_step_s"] for r in ok])
                rows.append({"benchmark": "scaling_fit", "workload": wl, "method": method, "device": str(s.device),
                             "status": "ok", "n_min": min(r["n"] for r in ok), "n_max": max(r["n"] for r in ok),
                             "points": len(ok), "fit_on": "time_per_step_s (" + ok[0]["headline"] + ")", **fit})
                print(f"  {wl:7s} {method:19s} time/step ~ N^{fit['exponent']:.3f} (r2 {fit['r2']:.3f})", flush=True)
    return rows


def run_scp(s: Settings) -> List[Dict]:
    from . import scp

    repeats = s.repeats("scp")
    print(f"scp: N_v in {s.scp_ns}, m={s.args.m}, full program up to N_v={s.args.full_max}, {repeats} repeats")
    rows = scp.run(s.scp_ns, s.args.m, s.args.full_max, repeats)
    for r in rows:
        r.update(benchmark="scp", n=r["n_verify"], status="ok", repeats=repeats, time_per_step_s=r["min_s"])
    fits = []
    for key in sorted({(r["solver"], r["mode"]) for r in rows}):
        pts = [r for r in rows if (r["solver"], r["mode"]) == key]
        if len({r["n"] for r in pts}) >= 2:
            fit = report.fit_exponent([r["n"] for r in pts], [r["min_s"] for r in pts])
            fits.append({"benchmark": "scp_fit", "solver": key[0], "mode": key[1], "status": "ok", "fit_on": "min_s",
                         "n_min": min(r["n"] for r in pts), "n_max": max(r["n"] for r in pts), "points": len(pts), **fit})
            print(f"  {key[0]:8s} {key[1]:4s} seconds ~ N_v^{fit['exponent']:.3f} (r2 {fit['r2']:.3f})")
    return rows + fits


def run_roofline(s: Settings) -> List[Dict]:
    roofs = s.roofs()
    print(f"roofline: N={s.roofline_n}, {s.steps} steps per call, device {s.device}; roofs: "
          + (f"{roofs['flops'] / 1e12:.3g} TFLOP/s, {roofs['bytes_per_s'] / 1e9:.4g} GB/s "
             if roofs.get("flops") and roofs.get("bytes_per_s") else "") + str(roofs["source"]))
    rows = []
    for wl in s.workloads:
        for method in s.methods("roofline"):
            rows.append(run_case(s, "roofline", wl, method, s.roofline_n))
    for r in rows:
        r["roof_source"] = roofs["source"]
    return rows


PARTS = {"throughput": run_throughput, "certify": run_certifications, "scaling": run_scaling, "scp": run_scp,
         "roofline": run_roofline}
ALL_PARTS = ["throughput", "scaling", "scp", "roofline"]  # throughput runs the certification itself


def run_part(s: Settings, part: str) -> List[Dict]:
    """One part's rows. A part that raises (not a case: run_case records its own errors) keeps the
    rows it finished, plus an error row, so the results file is still written and the run fails."""
    s.recorded = []
    try:
        return PARTS[part](s)
    except Exception as exc:
        traceback.print_exc()
        print(f"{part}: ERROR {type(exc).__name__}: {exc}", flush=True)
        s.record({"benchmark": part, "device": str(s.device), "status": "error", "reason": f"{type(exc).__name__}: {exc}"})
        return list(s.recorded)


def case_name(row: Dict) -> str:
    """A row's case in words, for the failure summary: 'throughput digits numba N=4'."""
    words = [row.get("benchmark"), row.get("workload") or row.get("solver"), row.get("method") or row.get("mode")]
    return " ".join(str(w) for w in words if w) + (f" N={row['n']}" if row.get("n") is not None else "")


def run_parts(s: Settings, parts: List[str]) -> Tuple[List[str], List[Dict]]:
    """Run ``parts`` and write their results files; (the files written, the rows that failed)."""
    machine = describe()
    machine["numba_threads"] = numba_threads()
    written, all_rows = [], []
    os.makedirs(s.args.out, exist_ok=True)
    for part in parts:
        s.row_log = os.path.join(s.args.out, f"{part}-partial-{report._stamp()}.jsonl")
        rows = run_part(s, part)
        doc = report.document(part, rows, machine, s.config(part), s.quick)
        if part == "roofline":
            doc["config"]["roofs"] = s.roofs()
        path, csv_path = report.write_results(doc, s.args.out)
        if os.path.exists(s.row_log):
            os.unlink(s.row_log)
        s.row_log = None
        print(f"wrote {path} and {csv_path}", flush=True)
        written.append(path)
        all_rows += rows
    if len(parts) > 1:
        doc = report.document("all", all_rows, machine, s.config("all"), s.quick)
        path, csv_path = report.write_results(doc, s.args.out)
        print(f"wrote {path} and {csv_path}")
        written.append(path)
    return written, [r for r in all_rows if r.get("status") == "error"]


# ----------------------------------------------------------------------------- command line
# Every option is checked by its argparse ``type`` while parsing: a bad one is refused with the
# usage line, one error line naming the option, and exit status 2, before any work starts.


def count(low: int = 1) -> Callable[[str], int]:
    """An argparse ``type``: an integer >= ``low`` (a count: N, steps, repeats, ...)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def number(low: float = 0.0, strict: bool = True) -> Callable[[str], float]:
    """An argparse ``type``: a finite number > ``low`` (>= ``low`` unless ``strict``)."""
    bound = f"{'>' if strict else '>='} {low:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number {bound}, got {text!r}") from None
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be a finite number {bound}, got {text}")
        return value

    parse.__name__ = f"number {bound}"
    return parse


def device_name(text: str) -> str:
    """An argparse ``type``: cpu, or cuda[:INDEX] when that GPU is there; the canonical name."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"must be cpu or cuda[:INDEX], got {text!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available here (torch.cuda.is_available() "
                                             "is False); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text!r}: there is no such GPU (this machine has "
                                             f"{torch.cuda.device_count()}: cuda:0 ... cuda:{torch.cuda.device_count() - 1})")
    return str(device)


def writable_folder(text: str) -> str:
    """An argparse ``type``: a folder that exists, or can be created, and is writable. Checked
    without creating it, so a refused command line leaves nothing behind."""
    if not text:
        raise argparse.ArgumentTypeError("must be a folder, got ''")
    path = probe = os.path.abspath(text)
    while not os.path.lexists(probe) and os.path.dirname(probe) != probe:  # the part that exists
        probe = os.path.dirname(probe)
    problem = ("is not a folder" if not os.path.isdir(probe)
               else "is not writable" if not os.access(probe, os.W_OK | os.X_OK) else None)
    if problem:
        raise argparse.ArgumentTypeError(f"{text!r} {problem}" if probe == path
                                         else f"{text!r} cannot be created: {probe!r} {problem}")
    return text


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("all parts")
    g.add_argument("--out", type=writable_folder, default=report.RESULTS_DIR, help="results folder (default: bench/results)")
    g.add_argument("--quick", action="store_true", help="tiny N and few steps: checks the harness in seconds (not a measurement)")
    g.add_argument("--device", type=device_name, default=None, help="cpu or cuda (default: cuda when available)")
    g.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=None, help="default: all")
    g.add_argument("--methods", nargs="+", choices=list(METHODS), default=None,
                   help="default: all (scaling and roofline leave out the N-independent loop)")
    g.add_argument("--steps", type=count(), default=None, help="SGD steps per timed call (default 8; quick 2)")
    g.add_argument("--repeats", type=count(), default=None, help="timed calls on the CPU (default: throughput 5, scaling 3, roofline 3, scp 2)")
    g.add_argument("--warmup", type=count(0), default=None, help="untimed calls before timing on the CPU (default 1)")
    g.add_argument("--threads", type=count(), default=None,
                   help="torch and numba threads, both pinned (default: torch's count at start)")
    g.add_argument("--memory-mb", type=number(), default=None,
                   help="the engine's chunk budget (default: 2048 on the CPU as in the engine; half the free GPU memory)")
    g.add_argument("--delta", type=number(strict=False), default=0.1, help="poisoning budget of the timed runs (default 0.1)")
    g.add_argument("--gpu-warmup-ms", type=number(strict=False), default=50.0, help="do_bench warm-up (ms)")
    g.add_argument("--gpu-rep-ms", type=number(), default=300.0, help="do_bench timed span (ms)")
    g = common.add_argument_group("throughput, certify and roofline")
    g.add_argument("--n", type=count(), default=None, help="trajectories (throughput default 1000 on CPU, 4000 on GPU; roofline 4000; quick 4)")
    g.add_argument("--loop-runs", type=count(), default=None, help="runs of the per-trajectory loop (default 16; quick 2)")
    g.add_argument("--certify", choices=["auto", "default", "mnist", "evasion", "evasion-ibp", "reduced", "none"], default="auto",
                   help="the certification run (throughput's last row, and the certify part): default "
                        "CertifyConfig (digits), mnist (784-64-10, batch 64, N_v=4000), evasion (the default "
                        "recipe, searching the test-time budget δ′ judged by PGD; evasion-ibp: by the interval "
                        "bound), the reduced one, or none (auto: reduced with --quick, else default; --quick "
                        "shrinks mnist and evasion to seconds)")
    g.add_argument("--emp", action="store_true",
                   help="certify with --emp (δ_emp of the strongest built-in attacks at every probed budget; for "
                        "evasion, pgd_strong) and report its time as a multiple of the certification without it")
    g.add_argument("--emp-runs", type=count(), default=None,
                   help="runs per attack and budget behind δ_emp with --emp (default: the configuration's, 300)")
    g.add_argument("--peak-gflops", type=number(), default=None, help="FLOP roof (GFLOP/s) for roofline fractions on a CPU")
    g.add_argument("--peak-gbps", type=number(), default=None, help="bandwidth roof (GB/s) for roofline fractions on a CPU")
    g = common.add_argument_group("scaling and scp")
    g.add_argument("--ns", type=count(), nargs="+", default=None, help="scaling N (default 250 ... 8000, 16000 on GPU; quick 4 8 16)")
    g.add_argument("--scp-ns", type=count(), nargs="+", default=None, help="SCP N_v (default 1000 2000 4000 8000; quick 40 80)")
    g.add_argument("--m", type=count(), default=8, help="SCP trunk outputs m (default 8)")
    g.add_argument("--full-max", type=count(0), default=4000, help="largest N_v for the full (no constraint generation) SCP")

    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    for name, text in (("throughput", "trajectory-steps/s of every method on every workload, and a certification"),
                       ("certify", "one whole certification (--certify picks which): per hour, stage by stage"),
                       ("scaling", "time per step against N with the fitted exponent"),
                       ("scp", "SCP seconds against N_v"),
                       ("roofline", "measured step times beside the FLOP/byte model (fractions of the roofs on GPU)"),
                       ("all", "throughput, scaling, scp and roofline")):
        sub.add_parser(name, parents=[common], help=text, description=text,
                       usage="%(prog)s [options]")
    p = sub.add_parser("plot", help="PNG plots from a results file (JSON or CSV)")
    p.add_argument("file")
    p.add_argument("--out", type=writable_folder, default=None, help="folder for the PNGs (default: beside FILE)")
    p = sub.add_parser("readme", help="rewrite README.md's results block from a results file")
    p.add_argument("file", nargs="?", default=None, help="results JSON (default: the latest with throughput rows in --results)")
    p.add_argument("--results", default=report.RESULTS_DIR, help="where to look for the latest results (default: bench/results)")
    p.add_argument("--readme", default=report.README, help="README to rewrite (default: the repository's README.md)")
    return ap


def plot_command(args: argparse.Namespace) -> int:
    """``plot FILE``: the PNGs; a file it cannot plot is one line on stderr naming it, exit 2."""
    try:
        for path in report.plot(args.file, args.out):
            print(f"wrote {path}")
    except (report.PlotUnavailable, report.BadResults) as exc:
        print(f"python -m bench plot: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"python -m bench plot: cannot write the plots of {args.file}: {exc}", file=sys.stderr)
        return 1
    return 0


def readme_command(args: argparse.Namespace) -> int:
    """``readme [FILE]``: README's results block; a bad FILE or README is one line on stderr, exit 2."""
    path = args.file or report.latest_results(args.results)
    if path is None:
        print(f"python -m bench readme: no results file with throughput rows in {args.results}; "
              "run `python -m bench throughput` (or all) first", file=sys.stderr)
        return 2
    try:
        doc = report.read_results(path)
        if not report.reportable(doc):
            raise report.BadResults(f"{path}: nothing for the README (no throughput, certify or fitted-exponent rows)")
    except report.BadResults as exc:
        print(f"python -m bench readme: {exc}", file=sys.stderr)
        return 2
    try:
        report.rewrite_readme(report.readme_block(doc, path), args.readme)
    except (OSError, ValueError) as exc:  # the README: missing, unwritable or without the markers
        print(f"python -m bench readme: cannot rewrite {args.readme}: {exc}", file=sys.stderr)
        return 2
    print(f"rewrote the results block of {args.readme} from {path}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m bench ...``; the exit status (see the module docstring). Bad arguments exit 2
    from argparse (SystemExit) before any work starts."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    if args.command == "plot":
        return plot_command(args)
    if args.command == "readme":
        return readme_command(args)
    previous = pin_threads(args.threads)
    s = Settings(args)
    parts = list(ALL_PARTS) if args.command == "all" else [args.command]
    try:
        _, failed = run_parts(s, parts)
    finally:
        restore_threads(previous)
        gc.unfreeze()  # PeakMemory froze what was alive before each case; give it back to the collector
        gc.collect()
    if failed:
        print(f"python -m bench {args.command}: {len(failed)} case(s) failed (rows with status \"error\" in the "
              "results files):", file=sys.stderr)
        for row in failed:
            print(f"  {case_name(row)}: {row.get('reason')}", file=sys.stderr)
        return 1
    return 0
