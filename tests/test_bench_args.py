"""``python -m bench``'s refusals and exit statuses: bad arguments exit 2 before any work, a case
that fails makes the run exit 1 (after writing what did run), and a file plot/readme cannot use
is one line naming it (exit 2). None of these run a workload at full size: seconds in all."""
import glob
import json
import os
import subprocess
import sys
import types

import pytest
import torch

from bench import harness, report
from bench.harness import main as bench_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="cuda is a valid --device here")


@pytest.fixture
def no_work(monkeypatch):
    """Make starting any work fail the test: a refused command line must stop before it."""
    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    monkeypatch.setattr(harness, "run_parts", forbidden)
    monkeypatch.setattr(harness, "pin_threads", forbidden)


def refused(argv, capsys) -> str:
    """Run ``python -m bench ARGV`` in-process, expecting argparse's exit 2; its stderr."""
    with pytest.raises(SystemExit) as exc:
        bench_main(argv)
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and not captured.out
    return captured.err


BAD_ARGS = [
    # (subcommand and bad option, the option named, something the message must say)
    (["throughput", "--n", "-1"], "--n", "must be an integer >= 1, got -1"),
    (["throughput", "--n", "0"], "--n", "got 0"),
    (["roofline", "--n", "1.5"], "--n", "got '1.5'"),
    (["certify", "--n", "many"], "--n", "got 'many'"),
    (["throughput", "--steps", "0"], "--steps", ">= 1"),
    (["scaling", "--repeats", "0"], "--repeats", ">= 1"),
    (["throughput", "--warmup", "-1"], "--warmup", "must be an integer >= 0, got -1"),
    (["throughput", "--loop-runs", "0"], "--loop-runs", ">= 1"),
    (["all", "--threads", "0"], "--threads", ">= 1"),
    (["scaling", "--ns", "4", "0", "16"], "--ns", "got 0"),
    (["scaling", "--ns"], "--ns", "expected at least one argument"),
    (["scp", "--scp-ns", "40", "-80"], "--scp-ns", ""),
    (["scp", "--scp-ns"], "--scp-ns", "expected at least one argument"),
    (["scp", "--m", "0"], "--m", ">= 1"),
    (["scp", "--full-max", "-1"], "--full-max", ">= 0"),
    (["throughput", "--memory-mb", "0"], "--memory-mb", "> 0"),
    (["throughput", "--memory-mb", "nan"], "--memory-mb", "finite"),
    (["throughput", "--delta", "-0.1"], "--delta", ">= 0"),
    (["throughput", "--delta", "inf"], "--delta", "finite"),
    (["throughput", "--gpu-warmup-ms", "-1"], "--gpu-warmup-ms", ">= 0"),
    (["throughput", "--gpu-rep-ms", "0"], "--gpu-rep-ms", "> 0"),
    (["roofline", "--peak-gflops", "0"], "--peak-gflops", "> 0"),
    (["roofline", "--peak-gbps", "fast"], "--peak-gbps", "got 'fast'"),
    (["throughput", "--workloads", "digits", "cifar"], "--workloads", "'digits', 'mnist', 'deep'"),
    (["throughput", "--workloads"], "--workloads", "expected at least one argument"),
    (["scaling", "--methods", "torch", "jax"], "--methods", "'numba'"),
    (["throughput", "--certify", "sometimes"], "--certify", "'mnist'"),
    (["throughput", "--device", "tpu"], "--device", "cpu or cuda"),
    (["throughput", "--device", "cuda:99"], "--device", "cuda:99"),
    pytest.param(["throughput", "--device", "cuda"], "--device", "CUDA is not available", marks=NO_CUDA),
]


@pytest.mark.parametrize("argv, option, says", BAD_ARGS, ids=[" ".join(getattr(a, "values", a)[0])
                                                              for a in BAD_ARGS])
def test_a_bad_argument_exits_2_naming_it_before_any_work(argv, option, says, tmp_path, capsys, no_work):
    out = tmp_path / "out"
    out.mkdir()
    err = refused(argv + ["--out", str(out)], capsys)
    (line,) = [ln for ln in err.splitlines() if "error:" in ln]
    assert line.startswith(f"python -m bench {argv[0]}: error: argument {option}: ") and says in line, err
    assert os.listdir(out) == [], "nothing may be written for a refused command line"


def test_bench_throughput_n_minus_one_is_refused_at_once(tmp_path):
    """The user's command: exit 2, a usage line and one error line; no traceback, no files."""
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "bench", "throughput", "--n", "-1", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == ["usage: python -m bench throughput [options]",
                                        "python -m bench throughput: error: argument --n: must be an integer >= 1, got -1"]
    assert not out.exists()


@pytest.mark.parametrize("where", ["a file", "under a file", "not writable"])
def test_an_unusable_out_folder_exits_2(where, tmp_path, capsys, monkeypatch, no_work):
    blocker = tmp_path / "results.txt"
    blocker.write_text("not a folder\n")
    out = {"a file": blocker, "under a file": blocker / "sub", "not writable": tmp_path / "ro" / "new"}[where]
    if where == "not writable":  # as root a chmod would not stop us; the check is os.access
        (tmp_path / "ro").mkdir()
        monkeypatch.setattr(harness.os, "access", lambda path, mode: False)
    err = refused(["throughput", "--quick", "--out", str(out)], capsys)
    assert "error: argument --out: " in err and str(out) in err
    assert {"a file": "is not a folder", "under a file": "is not a folder", "not writable": "is not writable"}[where] in err
    assert blocker.read_text() == "not a folder\n", "nothing may be written"
    assert sorted(os.listdir(tmp_path)) == ["results.txt"] + (["ro"] if where == "not writable" else [])
    assert where != "not writable" or os.listdir(tmp_path / "ro") == []


def test_plot_refuses_an_unusable_out_folder(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    err = refused(["plot", str(tmp_path / "x.json"), "--out", str(blocker / "png")], capsys)
    assert "python -m bench plot: error: argument --out:" in err


def test_the_boundary_values_are_accepted(tmp_path):
    """The smallest values each check lets through; parsing creates nothing."""
    out = tmp_path / "new" / "results"
    args = harness.build_parser().parse_args(
        ["throughput", "--n", "1", "--warmup", "0", "--steps", "1", "--repeats", "1", "--loop-runs", "1", "--threads", "1",
         "--delta", "0", "--gpu-warmup-ms", "0", "--full-max", "0", "--memory-mb", "0.5", "--ns", "1", "--scp-ns", "1",
         "--device", "cpu", "--workloads", "mnist", "--out", str(out)])
    s = harness.Settings(args)
    assert (s.n, s.warmup, s.steps, s.repeats("throughput"), s.loop_runs, s.ns, s.scp_ns) == (1, 0, 1, 1, 1, [1], [1])
    assert (args.delta, args.full_max, args.memory_mb, str(s.device), s.workloads) == (0.0, 0, 0.5, "cpu", ["mnist"])
    assert not (tmp_path / "new").exists()


# ----------------------------------------------------------------------------- failures during the work


def quick(part, tmp_path, *extra):
    return [part, "--quick", "--device", "cpu", "--workloads", "digits", "--out", str(tmp_path), *extra]


def test_a_failing_case_exits_1_after_writing_the_other_rows(tmp_path, capsys, monkeypatch):
    """numba breaks unexpectedly: exit 1; torch's row is written, triton (GPU only) stays a skip."""
    real_setup = harness.setup

    def setup(workload, method, n, **kw):
        if method == "numba":
            raise RuntimeError("the numba kernel broke")
        return real_setup(workload, method, n, **kw)

    monkeypatch.setattr(harness, "setup", setup)
    argv = quick("throughput", tmp_path, "--methods", "torch", "numba", "triton", "--certify", "none")
    assert bench_main(argv) == 1
    (path,) = glob.glob(str(tmp_path / "throughput-*.json"))
    rows = {r["method"]: r for r in json.load(open(path))["rows"]}
    assert rows["torch"]["status"] == "ok" and rows["torch"]["steps_per_s_median"] > 0
    assert rows["numba"]["status"] == "error" and rows["numba"]["reason"] == "RuntimeError: the numba kernel broke"
    if not torch.cuda.is_available():
        assert rows["triton"]["status"] == "skipped"
    assert glob.glob(str(tmp_path / "throughput-*.csv")) and not glob.glob(str(tmp_path / "*partial*"))
    err = capsys.readouterr().err
    assert "1 case(s) failed" in err and "throughput digits numba N=4: RuntimeError: the numba kernel broke" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="triton runs here: no unavailable method to skip")
def test_an_unavailable_case_is_a_skip_and_the_run_succeeds(tmp_path):
    assert bench_main(quick("roofline", tmp_path, "--methods", "triton")) == 0
    (path,) = glob.glob(str(tmp_path / "roofline-*.json"))
    (row,) = json.load(open(path))["rows"]
    assert row["status"] == "skipped" and "GPU" in row["reason"]


@pytest.mark.parametrize("part, broke", [("scp", "bench.scp.run"), ("certify", "barrierkit.api.certify")])
def test_a_failing_part_exits_1_and_still_writes_its_results(part, broke, tmp_path, capsys, monkeypatch):
    """The SCP part raises as a whole; the certification raises inside run_certify."""
    def broken(*args, **kwargs):
        raise RuntimeError(f"{broke} broke")

    if part == "scp":
        monkeypatch.setattr(broke, broken)
    else:  # a stand-in module: the test needs nothing of barrierkit.api but the failure
        api = types.ModuleType("barrierkit.api")
        api.certify = broken
        monkeypatch.setitem(sys.modules, "barrierkit.api", api)
    assert bench_main(quick(part, tmp_path, "--certify", "reduced")) == 1
    (path,) = glob.glob(str(tmp_path / f"{part}-*.json"))
    rows = json.load(open(path))["rows"]
    assert [r["status"] for r in rows] == ["error"] and rows[0]["reason"] == f"RuntimeError: {broke} broke"
    assert not glob.glob(str(tmp_path / "*partial*"))
    assert f"{broke} broke" in capsys.readouterr().err.split("case(s) failed", 1)[1]


# ----------------------------------------------------------------------------- files plot and readme cannot use


def write(path, content) -> str:
    """Write ``content`` (text, bytes, or a value as JSON) to ``path``; the path."""
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def doc_of(rows):
    return report.document("throughput", rows, {"cpu": "x", "commit": "c"}, {}, True)


BAD_FILES = {
    "missing": (lambda d: str(d / "nope.json"), "no such file"),
    "a folder": (lambda d: str(d), "is a folder"),
    "not JSON": (lambda d: write(d / "r.json", "{ not json"), "not JSON"),
    "binary": (lambda d: write(d / "r.json", b"\x89PNG\r\n\x1a\n\xff\xfe"), "not a text file"),
    "a JSON list": (lambda d: write(d / "r.json", [1, 2, 3]), "not a bench results document"),
    "another JSON document": (lambda d: write(d / "r.json", {"name": "x", "rows": []}), "not a bench results document"),
    "rows not a list": (lambda d: write(d / "r.json", {"format": report.FORMAT, "rows": {"a": 1}}), "\"rows\""),
    "rows not rows": (lambda d: write(d / "r.json", {"format": report.FORMAT, "rows": [1, "x"]}), "\"rows\""),
    "a CSV of something else": (lambda d: write(d / "r.csv", "a,b\n1,2\n"), "\"benchmark\""),
}
NOTHING_TO_PLOT = {
    "no rows": [],
    "only failures": [{"benchmark": "throughput", "workload": "digits", "method": "numba", "status": "error", "reason": "x"},
                      {"benchmark": "scaling", "workload": "digits", "method": "triton", "n": 4, "status": "skipped"}],
    "no numbers": [{"benchmark": "throughput", "workload": "digits", "method": "torch", "status": "ok",
                    "steps_per_s_median": "fast"}],
}


def bad_file(case, tmp_path) -> str:
    if case in BAD_FILES:
        return BAD_FILES[case][0](tmp_path)
    path, _ = report.write_results(doc_of(NOTHING_TO_PLOT[case]), str(tmp_path))
    return path


def one_line_naming(path, err, says):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and path in lines[0] and says in lines[0] and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("case", list(BAD_FILES) + list(NOTHING_TO_PLOT))
def test_plot_of_a_bad_file_is_one_line_naming_it(case, tmp_path, capsys):
    path = bad_file(case, tmp_path)
    says = BAD_FILES[case][1] if case in BAD_FILES else "nothing to plot"
    assert bench_main(["plot", path, "--out", str(tmp_path / "png")]) == 2
    line = one_line_naming(path, capsys.readouterr().err, says)
    assert line.startswith("python -m bench plot: ")
    assert not glob.glob(str(tmp_path / "**" / "*.png"), recursive=True)


@pytest.mark.parametrize("case", list(BAD_FILES) + ["no rows", "no numbers"])
def test_readme_of_a_bad_file_is_one_line_naming_it_and_the_readme_is_untouched(case, tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{report.BEGIN}\nold\n{report.END}\n")
    if case == "no numbers":  # a document with rows, but none the README reports
        path, _ = report.write_results(report.document("roofline", [{"benchmark": "roofline", "status": "ok"}],
                                                       {"cpu": "x", "commit": "c"}, {}, True), str(tmp_path / "r"))
        says = "nothing for the README"
    else:
        path = bad_file(case, tmp_path)
        says = BAD_FILES[case][1] if case in BAD_FILES else "nothing for the README"
    assert bench_main(["readme", path, "--readme", str(readme)]) == 2
    assert one_line_naming(path, capsys.readouterr().err, says).startswith("python -m bench readme: ")
    assert readme.read_text() == f"# x\n\n{report.BEGIN}\nold\n{report.END}\n"


@pytest.mark.parametrize("problem", ["missing", "no markers"])
def test_readme_with_an_unusable_readme_is_one_line_naming_it(problem, tmp_path, capsys):
    path, _ = report.write_results(doc_of([{"benchmark": "throughput", "workload": "digits", "method": "torch",
                                            "status": "ok", "steps_per_s_median": 1.0}]), str(tmp_path))
    readme = tmp_path / "README.md"
    if problem == "no markers":
        readme.write_text("# x\n")
    assert bench_main(["readme", path, "--readme", str(readme)]) == 2
    one_line_naming(str(readme), capsys.readouterr().err, "cannot rewrite")
    assert problem == "missing" or readme.read_text() == "# x\n"
