"""The benchmark harness itself (bench/), at tiny sizes so it cannot rot; and certify --profile."""
import csv
import glob
import json
import math
import os

import numpy as np
import pytest

from bench import report
from bench.harness import main as bench_main
from bench.roofline import step_cost
from barrierkit.cli import main as cli_main

MACHINE_FIELDS = ("machine_cpu", "machine_cores", "machine_gpu", "machine_torch", "machine_python", "machine_commit")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Each subcommand once with --quick; {part: (JSON path, CSV path)} of the files it wrote."""
    written = {}
    for part, extra in (("throughput", []), ("scaling", []), ("scp", []), ("roofline", []),
                        ("all", ["--workloads", "digits", "--certify", "none"])):  # throughput's row has the certification
        out = tmp_path_factory.mktemp(part)
        assert bench_main([part, "--quick", "--out", str(out), *extra]) == 0
        for path in glob.glob(str(out / "*.json")):
            name = os.path.basename(path).split("-")[0]
            if name == "certificate":  # the certification's own document, saved beside the results
                assert part in ("throughput", "all") and json.load(open(path))["status"]
                continue
            written[part if part != "all" else f"all/{name}"] = (path, path[:-5] + ".csv")
    return written


@pytest.mark.parametrize("part", ["throughput", "scaling", "scp", "roofline", "all/all", "all/throughput",
                                  "all/scaling", "all/scp", "all/roofline"])
def test_quick_subcommand_writes_well_formed_results(results, part):
    path, csv_path = results[part]
    doc = json.load(open(path))
    assert doc["format"] == report.FORMAT and doc["quick"] is True
    assert doc["machine"]["cores"] and doc["machine"]["commit"] and "cpu" in doc["machine"]
    rows = doc["rows"]
    assert rows and not [r for r in rows if r.get("status") == "error"], [r.get("reason") for r in rows]
    timed = [r for r in rows if r.get("benchmark") in ("throughput", "scaling", "roofline") and r["status"] == "ok"]
    for r in timed:  # each number stored with its configuration
        assert r["steps_per_s_median"] > 0 and r["time_min_s"] <= r["time_median_s"]
        assert {"workload", "method", "n", "steps_per_call", "device", "dtype", "batch", "hidden"} <= set(r)
        assert r["peak_rss_mb"] > 0 and r["model_flops"] > 0 and r["model_bytes"] > 0
    with open(csv_path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        lines = list(reader)
    assert header[:2] == ["benchmark", "workload"] or header[0] == "benchmark"
    assert set(MACHINE_FIELDS) <= set(header)
    assert len(lines) == len(rows) and all(len(line) == len(header) for line in lines)
    commit = header.index("machine_commit")
    assert all(line[commit] == doc["machine"]["commit"] for line in lines)


def test_quick_throughput_covers_every_workload_method_and_certify(results):
    rows = json.load(open(results["throughput"][0]))["rows"]
    cells = {(r["workload"], r["method"]): r for r in rows if r["benchmark"] == "throughput"}
    for wl in ("digits", "mnist", "deep"):
        for method in ("loop", "torch", "torch.func", "numba"):
            assert cells[(wl, method)]["status"] == "ok"
        assert cells[(wl, "torch")]["speedup_vs_loop"] > 0
        for method in ("triton", "triton_tf32", "torch.func+compile"):  # GPU only: skipped, with the reason
            assert cells[(wl, method)]["status"] == "skipped" and "GPU" in cells[(wl, method)]["reason"]
    cert = [r for r in rows if r["benchmark"] == "certify"]
    assert len(cert) == 1 and cert[0]["certifications_per_hour"] > 0 and cert[0]["certified_probes_per_hour"] >= 0
    assert math.isclose(sum(v["share"] for k, v in cert[0]["stages"].items() if k != "total"), 1.0, rel_tol=1e-6)


def test_quick_mnist_certification_part(tmp_path):
    """``python -m bench certify --certify mnist``: the MNIST-shaped (784-64-10, batch 64) run."""
    from bench.harness import MNIST_N_VERIFY, mnist_certify_config

    assert bench_main(["certify", "--quick", "--certify", "mnist", "--device", "cpu", "--out", str(tmp_path)]) == 0
    (path,) = glob.glob(str(tmp_path / "certify-*.json"))
    (row,) = json.load(open(path))["rows"]
    assert row["workload"] == "mnist" and row["model"] == "synthetic-mnist 64 batch 64", row
    assert row["status"] in ("CERTIFIED", "REFUTED", "INCONCLUSIVE") and row["certifications_per_hour"] > 0
    assert not glob.glob(str(tmp_path / "*partial*")), "the partial row log is removed once the results file exists"
    assert [p["delta"] for p in row["probe_path"]] and all(p["status"] for p in row["probe_path"])
    assert cli_main(["verify", str(tmp_path / row["certificate"])]) == 0, "the saved certificate re-checks"
    full = mnist_certify_config()
    assert full.n_verify == MNIST_N_VERIFY == 4000 and full.sample.recipe.batch == 64 and full.sample.model.hidden == (64,)


@pytest.mark.parametrize("part", ["throughput", "certify", "scaling", "scp", "roofline", "all"])
def test_full_settings_describe_every_part(part):
    """The non-quick settings (what a real run records beside its rows) exist for every part."""
    from bench.harness import Settings, build_parser

    args = build_parser().parse_args([part, "--device", "cpu"])
    config = Settings(args).config(part)
    assert config["part"] == part and config["quick"] is False and (config["repeats"] or part == "all")


def cut_off_run(tmp_path, monkeypatch, argv):
    """Run ``python -m bench ARGV`` cut off just before its results file; the partial log's rows."""
    def cut_off(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "write_results", cut_off)
    with pytest.raises(KeyboardInterrupt):
        bench_main(argv + ["--quick", "--workloads", "digits", "--device", "cpu", "--out", str(tmp_path)])
    (log,) = glob.glob(str(tmp_path / f"{argv[0]}-partial-*.jsonl"))
    return [json.loads(line) for line in open(log)]


def test_rows_survive_a_run_cut_off_before_the_results_file(tmp_path, monkeypatch):
    rows = cut_off_run(tmp_path, monkeypatch, ["roofline", "--methods", "torch", "numba"])
    assert [(r["workload"], r["method"], r["status"]) for r in rows] == [("digits", "torch", "ok"), ("digits", "numba", "ok")]


def test_partial_throughput_rows_carry_the_speedup(tmp_path, monkeypatch):
    """The loop is measured first, so every logged row already has its speed-up over it."""
    rows = cut_off_run(tmp_path, monkeypatch, ["throughput", "--methods", "torch", "loop", "--certify", "none"])
    assert [r["method"] for r in rows] == ["loop", "torch"]
    assert rows[0]["speedup_vs_loop"] == 1.0
    assert math.isclose(rows[1]["speedup_vs_loop"], rows[1]["steps_per_s_median"] / rows[0]["steps_per_s_median"])


def test_quick_scaling_and_scp_fit_exponents(results):
    rows = json.load(open(results["scaling"][0]))["rows"]
    fits = [r for r in rows if r["benchmark"] == "scaling_fit"]
    assert {(r["workload"], r["method"]) for r in fits} >= {("digits", "torch"), ("mnist", "numba")}
    assert all(np.isfinite(r["exponent"]) and r["points"] == 3 for r in fits)
    scp = json.load(open(results["scp"][0]))["rows"]
    assert {(r["solver"], r["mode"]) for r in scp if r["benchmark"] == "scp_fit"} == {
        ("CLARABEL", "cg"), ("CLARABEL", "full"), ("OSQP", "cg"), ("OSQP", "full")}


def test_every_method_trains_the_same_runs():
    """The baselines do the same work: same init, batch order and poison, so the same parameters."""
    from bench.workloads import setup

    params = {}
    for method in ("torch", "loop", "torch.func", "numba"):
        case = setup("digits", method, 3, steps=3, reference_steps=16)
        case.call()
        case.call()
        params[method] = case.stepper.params()
    for method, ps in params.items():
        for p, ref in zip(ps, params["torch"]):
            assert p.shape == ref.shape and float((p - ref).abs().max()) < 1e-5, method


def test_step_cost_matches_a_hand_count():
    # MNIST-shaped MLP 784-64-10, batch 64, gradient attack, plain SGD, 8 steps per launch, one trajectory.
    # parameters d = 784*64 + 64 + 64*10 + 10 = 50_890; W1 = 50_176; the small layers 714.
    # FLOPs: forward 2*64*(50_176 + 640) = 6_504_448; weight gradients the same, 6_504_448;
    #        activation gradient of layer 2 only, 2*64*640 = 81_920; SGD 2*50_890 = 101_780.
    flops = 6_504_448 + 6_504_448 + 81_920 + 101_780
    assert flops == 13_192_596
    # bytes: W1 read + write 2*4*50_176 = 401_408; batch rows gathered twice 2*4*64*784 = 401_408;
    #        direction rows gathered twice 401_408; indices + labels 4*64 + 4*64 = 512;
    #        small layers read + written once per 8-step launch 2*4*714/8 = 714; seed 8/8 = 1.
    nbytes = 401_408 + 401_408 + 401_408 + 512 + 714 + 1
    assert nbytes == 1_205_451
    cost = step_cost(784, 64, 10, 64, 1)
    assert cost.flops == flops and cost.bytes == nbytes
    assert step_cost(784, (64,), 10, 64, 4000) == (4000 * flops, 4000 * nbytes)
    # momentum and weight decay: + 2*50_890 each in FLOPs; + the W1 buffer (401_408) and the small
    # layers' buffers (another 714) in bytes
    heavy = step_cost(784, 64, 10, 64, 1, momentum=True, weight_decay=True)
    assert heavy == (flops + 4 * 50_890, nbytes + 401_408 + 714)
    # bench/notes_triton.md's table: N = 4000, gradient + momentum 6.42 GB, sign plain 3.21 GB, 53.6 GFLOP
    assert round(step_cost(784, 64, 10, 64, 4000, momentum=True).bytes / 1e9, 2) == 6.43
    assert round(step_cost(784, 64, 10, 64, 4000, attack="sign").bytes / 1e9, 2) == 3.22
    assert round(heavy.flops * 4000 / 1e9, 1) == 53.6


def test_fit_exponent_recovers_a_known_exponent():
    ns = np.array([250, 500, 1000, 2000, 4000, 8000])
    noise = 1.0 + 0.02 * np.array([1, -1, 0.5, -0.5, 1, -1])  # +-2 % timing noise
    fit = report.fit_exponent(ns, 3e-6 * ns ** 1.37 * noise)
    assert abs(fit["exponent"] - 1.37) < 0.01 and fit["r2"] > 0.999
    assert math.isclose(fit["prefactor"], 3e-6, rel_tol=0.1)
    exact = report.fit_exponent([1, 10, 100], [2.0, 20.0, 200.0])
    assert math.isclose(exact["exponent"], 1.0) and math.isclose(exact["prefactor"], 2.0)
    with pytest.raises(ValueError):
        report.fit_exponent([100, 100], [1.0, 2.0])


def test_certify_profile_prints_the_stage_table(capsys):
    args = ["certify", "--steps", "80", "--record-every", "20", "--n-verify", "40", "--n-train", "20", "--n-clean", "10",
            "--n-pool", "10", "--max-probes", "2", "--epsilon", "0.6", "--beta", "0.1", "--alpha", "0.1",
            "--delta-start", "0.01", "--quiet", "--profile"]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    table = out[out.index("profile: where the time went"):]
    for stage in ("clean runs", "sampling", "barrier fit", "scenario program", "other", "total"):
        assert stage in table
    total = [line for line in table.splitlines() if line.strip().startswith("total")][0]
    assert total.rstrip().endswith("100.0%")
    assert "trajectory-steps/s" in table
    assert "training steps" in table and "features phi" in table and "(torch)" in table


def test_readme_block_is_generated_between_the_markers(tmp_path):
    doc = report.document("throughput", [
        {"benchmark": "throughput", "workload": "digits", "workload_title": "digits MLP 64-32-10, batch 32",
         "method": "numba", "device": "cpu", "n": 1000, "status": "ok", "steps_per_s_median": 123456.0,
         "steps_per_s_best": 130000.0, "speedup_vs_loop": 25.0, "peak_rss_mb": 700.0, "peak_rss_delta_mb": 12.5},
        {"benchmark": "throughput", "workload": "digits", "method": "triton", "n": 1000, "status": "skipped",
         "reason": "GPU only"},
        {"benchmark": "certify", "certify_config": "default", "status": "CERTIFIED", "probes": 5, "total_s": 600.0,
         "certifications_per_hour": 6.0, "certified_probes_per_hour": 18.0, "trajectory_steps_per_s": 5e4}],
        {"cpu": "Test CPU", "cores": 2, "gpu": None, "torch": "2.13", "python": "3.11", "commit": "abc1234"}, {}, False)
    path, _ = report.write_results(doc, str(tmp_path / "results"))
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n## Results\n\nintro\n\n<!-- bench:begin -->\nold\n<!-- bench:end -->\n\ntail\n")
    assert bench_main(["readme", "--results", str(tmp_path / "results"), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# x\n\n## Results\n\nintro\n\n<!-- bench:begin -->\n") and text.endswith("<!-- bench:end -->\n\ntail\n")
    assert "old" not in text and "123,456" in text and "700 (+12.5)" in text and "Test CPU" in text and "abc1234" in text
    assert "triton skipped: GPU only" in text and "| default | CERTIFIED |" in text
    # the repository's README has the markers under its Results section
    real = open(report.README).read()
    assert real.index("## Results") < real.index(report.BEGIN) < real.index(report.END)


def test_plot_makes_pngs_or_names_the_missing_package(tmp_path, capsys):
    rows = [{"benchmark": "scaling", "workload": "digits", "method": "torch", "n": n, "status": "ok",
             "time_per_step_s": 1e-5 * n} for n in (4, 8, 16)]
    rows.append({"benchmark": "scaling_fit", "workload": "digits", "method": "torch", "status": "ok", "exponent": 1.0})
    path, csv_path = report.write_results(report.document("scaling", rows, {"cpu": "x", "commit": "c"}, {}, True), str(tmp_path))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert bench_main(["plot", path]) == 2
        assert "matplotlib" in capsys.readouterr().err
        return
    assert bench_main(["plot", path]) == 0
    assert glob.glob(str(tmp_path / "*-scaling.png"))
    assert bench_main(["plot", csv_path, "--out", str(tmp_path / "from_csv")]) == 0


def test_engine_steps_still_runs(tmp_path):
    from bench.engine_steps import main

    result = main(["--n", "4", "--repeats", "1", "--loop-runs", "1", "--out", str(tmp_path)])
    assert result["rows"][0]["loop_steps_per_s"] > 0 and glob.glob(str(tmp_path / "engine_steps-*.json"))


class _FakeEvent:
    """perf_counter stand-in for torch.cuda.Event (the GPU timing logic, tested without a GPU)."""

    def __init__(self, enable_timing=True):
        self.t = None

    def record(self):
        import time

        self.t = time.perf_counter()

    def elapsed_time(self, other):
        return (other.t - self.t) * 1e3


@pytest.mark.parametrize("triton_mode", ["all", "quantiles_only", "missing"])
def test_gpu_timing_logic_without_a_gpu(monkeypatch, triton_mode):
    import sys
    import time
    import types

    import torch

    from bench import timing

    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    seen = {}

    def fake_do_bench(fn, warmup, rep, quantiles=None, return_mode="mean"):
        seen.update(warmup=warmup, rep=rep)
        return [10.0, 12.0, 11.0, 13.0, 9.0, 10.5]

    def old_do_bench(fn, warmup, rep, quantiles=None):
        seen.update(warmup=warmup, rep=rep)
        return [1.0, 2.0, 3.0, 4.0, 5.0]

    module = types.ModuleType("triton.testing")
    module.do_bench = old_do_bench if triton_mode == "quantiles_only" else fake_do_bench
    if triton_mode == "missing":
        monkeypatch.setitem(sys.modules, "triton.testing", None)
    else:
        monkeypatch.setitem(sys.modules, "triton.testing", module)
    calls = []
    result = timing.time_gpu(lambda: (calls.append(1), time.sleep(0.02)), warmup_ms=1.0, rep_ms=1.0)
    if triton_mode == "all":
        assert result["samples"] == 6 and result["median_s"] == pytest.approx(0.01075) and result["min_s"] == 0.009
        assert seen["rep"] >= timing.MIN_GPU_SAMPLES * 20.0 and seen["warmup"] >= 20.0  # stretched to >= 5 calls
    elif triton_mode == "quantiles_only":
        assert result["samples"] is None and (result["min_s"], result["median_s"], result["max_s"]) == (0.001, 0.003, 0.005)
        assert "quantiles" in result["timer"]
    else:
        assert result["timer"] == "cuda events" and result["samples"] == timing.MIN_GPU_SAMPLES
        assert 0.015 < result["median_s"] < 0.2 and len(calls) >= 1 + timing.MIN_GPU_SAMPLES


def test_gpu_check_script_parses_and_rejects_an_unknown_stage(tmp_path):
    import subprocess

    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "gpu_check.sh")
    assert subprocess.run(["bash", "-n", script]).returncode == 0
    done = subprocess.run(["bash", script, "warp-drive"], capture_output=True, text=True, env={**os.environ, "OUT": str(tmp_path)})
    assert done.returncode == 2 and "unknown stage warp-drive" in done.stdout
    for stage in ("preflight", "cudatests", "memcheck", "certify", "kerneltests", "throughput", "scaling"):
        assert stage in done.stdout


@pytest.mark.parametrize("k,n", [(0, 300), (1, 300), (8, 300), (128, 300), (300, 300), (3, 7)])
def test_attack_strength_intervals_are_exact_clopper_pearson(k, n):
    from scipy.stats import binomtest

    from barrierkit.empirical import clopper_pearson

    want = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    assert clopper_pearson(k, n) == pytest.approx([want.low, want.high], rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("mode,judge", [("evasion", "pgd"), ("evasion-ibp", "ibp")])
@pytest.mark.parametrize("quick", [True, False])
def test_the_evasion_certification_modes_search_the_test_time_budget(mode, judge, quick):
    """``--certify evasion|evasion-ibp``: the default (or reduced) recipe, searching δ′ by the named judge."""
    from bench.harness import certify_config, reduced_certify_config
    from barrierkit.config import CertifyConfig

    config, workload = certify_config(mode, quick)
    base = reduced_certify_config() if quick else CertifyConfig()
    assert workload == "digits" and config.sample.searches_evasion and config.sample.evasion.attack == judge
    assert config.n_verify == base.n_verify and config.sample.recipe == base.sample.recipe
