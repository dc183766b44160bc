"""The CLI as a new user meets it: outputs never lost, clear one-line errors with documented exit
statuses, progress in a log, --version and --help that explain."""
import dataclasses
import errno
import os
import subprocess
import sys

import pytest

from barrierkit import cli
from barrierkit.cli import main
from barrierkit.outputs import OutputError, OutputLocks, lock_path
from conftest import TINY_CERTIFY, no_work

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_SAMPLE = ["sample", "--dataset", "synthetic", "--n", "3", "--delta", "0.1", "--steps", "8", "--record-every", "4",
               "--hidden", "5", "--quiet"]


def one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err
    return err


# ------------------------------------------------------------------------- outputs never lost


def test_sample_refuses_a_summary_that_is_the_out_file(tmp_path, capsys, monkeypatch):
    no_work(monkeypatch)
    out = tmp_path / "t.json"  # the default summary path is OUT with .json: the same file
    assert main([*TINY_SAMPLE, "--out", str(out)]) == 2
    one_line_error(capsys, "summary", "same file")
    assert main([*TINY_SAMPLE, "--out", str(tmp_path / "a.npz"), "--summary", str(tmp_path / "a.npz")]) == 2
    one_line_error(capsys, "same file")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("extra,field", [(["--alpha", "nan"], "alpha"), (["--alpha", "-1"], "alpha"),
                                         (["--summary", "DIR"], "summary"), (["--n-clean", "-1"], "n_clean")])
def test_a_bad_option_leaves_the_previous_outputs_intact(tmp_path, capsys, monkeypatch, extra, field):
    prev, summary = tmp_path / "prev.npz", tmp_path / "prev.json"
    prev.write_bytes(b"previous trajectories")
    summary.write_bytes(b"previous summary")
    (tmp_path / "DIR").mkdir()
    no_work(monkeypatch)
    extra = [str(tmp_path / "DIR") if e == "DIR" else e for e in extra]
    assert main([*TINY_SAMPLE, "--out", str(prev), *extra]) == 2
    one_line_error(capsys, field)
    assert prev.read_bytes() == b"previous trajectories" and summary.read_bytes() == b"previous summary"


def test_a_late_write_failure_keeps_both_previous_files(tmp_path, capsys, monkeypatch):
    prev, summary = tmp_path / "prev.npz", tmp_path / "prev.json"
    prev.write_bytes(b"previous trajectories")
    summary.write_bytes(b"previous summary")
    import barrierkit.io

    real = barrierkit.io.json_bytes

    def disk_full(obj):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(summary))

    monkeypatch.setattr(barrierkit.io, "json_bytes", disk_full)
    assert main([*TINY_SAMPLE, "--out", str(prev)]) == 7
    one_line_error(capsys, "No space left on device")
    assert prev.read_bytes() == b"previous trajectories" and summary.read_bytes() == b"previous summary"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prev.json", "prev.npz"], "no temporary or lock file left"
    monkeypatch.setattr(barrierkit.io, "json_bytes", real)
    assert main([*TINY_SAMPLE, "--out", str(prev)]) == 0
    assert prev.read_bytes() != b"previous trajectories"


@pytest.mark.parametrize("out,needle", [("DIR", "is a folder"), ("", "must be a file path"), ("MISSING/c.json", "does not exist")])
def test_certify_checks_out_before_any_work(tmp_path, capsys, monkeypatch, out, needle):
    no_work(monkeypatch)
    (tmp_path / "DIR").mkdir()
    out = out.replace("DIR", str(tmp_path / "DIR")).replace("MISSING", str(tmp_path / "missing"))
    assert main([*TINY_CERTIFY, "--out", out]) == 2
    one_line_error(capsys, "out", needle)


def test_certify_refuses_a_read_only_folder_before_any_work(tmp_path, capsys, monkeypatch):
    no_work(monkeypatch)
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if os.fspath(p) == str(tmp_path) else real(p, mode))
    assert main([*TINY_CERTIFY, "--out", str(tmp_path / "c.json")]) == 2
    one_line_error(capsys, "not writable")


def test_certify_prints_the_report_when_the_final_write_fails(tmp_path, capsys, monkeypatch):
    from barrierkit.certificate import Certificate

    def read_only(self, path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)

    monkeypatch.setattr(Certificate, "save", read_only)
    assert main([*TINY_CERTIFY, "--quiet", "--out", str(tmp_path / "c.json")]) == 7
    out, err = capsys.readouterr()
    assert "barrierkit certificate:" in out and "What this does not mean" in out
    assert "could not write" in err and "nothing was written" in err and "Traceback" not in err


def test_certify_without_out_says_nothing_was_saved(capsys):
    code = main([*TINY_CERTIFY])
    assert code in (0, 3, 4)
    err = capsys.readouterr().err
    assert "nothing was saved" in err


def hold_lock(path):
    """A second process holding the output lock of ``path`` (as a running certify would)."""
    code = (f"import time, sys\nfrom barrierkit.outputs import OutputLocks\n"
            f"with OutputLocks([('out', {str(path)!r})]):\n    print('locked', flush=True)\n    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_process_cannot_write_the_same_output(tmp_path, capsys, monkeypatch):
    out = tmp_path / "c.json"
    holder = hold_lock(out)
    try:
        no_work(monkeypatch)
        assert main([*TINY_CERTIFY, "--out", str(out)]) == 2
        one_line_error(capsys, "another barrierkit process", f"pid {holder.pid}", str(out))
        assert main([*TINY_SAMPLE, "--out", str(tmp_path / "x.npz"), "--summary", str(out)]) == 2
        one_line_error(capsys, "summary", "another barrierkit process")
    finally:
        holder.kill()  # kill -9: the kernel releases the lock
        holder.wait()
    with OutputLocks([("out", str(out))]):
        assert os.path.exists(lock_path(str(out)))
    assert not os.path.exists(lock_path(str(out)))
    with OutputLocks([("out", str(out))]):
        with pytest.raises(OutputError, match="another barrierkit process"):
            OutputLocks([("out", str(out))]).__enter__()


# ---------------------------------------------------------------------------- errors and exits


def test_a_huge_n_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    no_work(monkeypatch)
    assert main([*TINY_SAMPLE, "--n", "1000000000000", "--out", str(tmp_path / "t.npz")]) == 2
    one_line_error(capsys, "n:", "GiB")


@pytest.mark.parametrize("status,code", [("CERTIFIED", 0), ("REFUTED", 3), ("INCONCLUSIVE", 4)])
def test_certify_exit_status_says_the_outcome(monkeypatch, capsys, status, code):
    class Result:
        doc = {}

        def __init__(self):
            self.status = status

        def summary(self):
            return f"barrierkit certificate: {status}"

    monkeypatch.setattr("barrierkit.api.certify", lambda *a, **k: Result())
    assert main([*TINY_CERTIFY, "--quiet"]) == code


@pytest.mark.parametrize("exc,code,needle", [
    (RuntimeError("boom"), 1, "internal error"), (FloatingPointError("runs 3 diverged"), 5, "numerical error"),
    (MemoryError(), 7, "out of memory"), (OSError(errno.ENOSPC, "No space left on device", "/x"), 7, "No space left"),
    (KeyboardInterrupt(), 130, "interrupted"),
])
def test_failures_are_one_line_with_a_documented_status(monkeypatch, capsys, exc, code, needle):
    def fail(*a, **k):
        raise exc

    monkeypatch.setattr("barrierkit.api.certify", fail)
    assert main([*TINY_CERTIFY, "--quiet"]) == code
    one_line_error(capsys, needle)
    assert f"\n  {code} " in cli.EXIT_CODES or f"  {code}  " in cli.EXIT_CODES


def test_an_internal_error_traceback_goes_to_the_log_file(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("barrierkit.api.certify", lambda *a, **k: 1 / 0)
    log = tmp_path / "run.log"
    assert main([*TINY_CERTIFY, "--quiet", "--log-file", str(log)]) == 1
    one_line_error(capsys, "ZeroDivisionError")
    assert "Traceback" in log.read_text()


def test_a_nan_accuracy_is_an_error_not_a_safe_run(nan_accuracy, capsys, tmp_path):
    nan_accuracy(0)
    out = tmp_path / "c.json"
    assert main([*TINY_CERTIFY, "--quiet", "--backend", "torch", "--out", str(out)]) == 5
    one_line_error(capsys, "numerical error", "NaN")
    assert not out.exists()


def test_broken_pipe_is_not_an_error(cli_certificate):
    """``barrierkit report CERT | head -1``: the reader goes away; no traceback, status 0."""
    code = ("import os, sys\nr, w = os.pipe()\nos.close(r)\nos.dup2(w, 1)\n"
            f"from barrierkit.cli import main\nsys.exit(main(['report', {str(cli_certificate)!r}]))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr


# ----------------------------------------------------------------------------- progress and help


def test_progress_is_logged_per_stage_and_probe_when_stderr_is_not_a_terminal(capsys, tmp_path):
    log = tmp_path / "run.log"
    main([*TINY_CERTIFY, "--log-file", str(log)])
    err = capsys.readouterr().err
    for needle in ("certify:", "clean runs:", "unsafe pool:", "probe 1 of at most 2: δ = 0.01"):
        assert needle in err and needle in log.read_text()
    main([*TINY_CERTIFY, "--quiet"])
    assert "probe 1" not in capsys.readouterr().err


def test_delta_start_with_delta_hi_is_a_warning(capsys):
    main([*TINY_CERTIFY, "--quiet", "--delta-start", "0.5"])
    assert "--delta-start 0.5 is not used" in capsys.readouterr().err


def test_an_exploding_learning_rate_is_warned_about(tmp_path, capsys):
    assert main([*TINY_SAMPLE, "--dataset", "digits", "--lr", "1e6", "--n-clean", "4", "--out", str(tmp_path / "t.npz")]) == 0
    err = capsys.readouterr().err
    assert "training diverges" in err and "near chance" in err
    # under evasion φ ends with the robustness entry; the drift is still found and warned about
    assert main([*TINY_SAMPLE, "--dataset", "digits", "--lr", "1e6", "--threat", "evasion", "--evasion-steps", "1",
                 "--out", str(tmp_path / "e.npz")]) == 0
    assert "training diverges" in capsys.readouterr().err


def test_version_and_help_explain(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and "barrierkit 0." in capsys.readouterr().out
    for command, needles in (("certify", ["--sign-noise", "flipped", "triton_tf32", "TF32", "exit status", "one-shot"]),
                             ("report", ["Print the report", "refused"]), ("verify", ["--replay", "checksum, not a signature"]),
                             ("sample", ["must differ from OUT", "exit status"])):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        for needle in needles:
            assert needle in text, (command, needle)


# ------------------------------------------------------------- options derived from the configuration


def built(*argv):
    """The CertifyConfig the command line ``certify ARGV`` builds, without running anything."""
    return cli.certify_config_from_args(cli.build_parser().parse_args(["certify", *argv]))


def option_dests(command):
    """{dest: option string} of the options of ``barrierkit COMMAND``."""
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command").choices[command]
    return {a.dest: a.option_strings[0] for a in sub._actions if a.option_strings}


def test_every_setting_of_a_certification_has_an_option():
    from barrierkit.config import CertifyConfig, SampleConfig, settings

    for command, config, by_others in (("certify", CertifyConfig, {"barrier.kappa"}), ("sample", SampleConfig, set())):
        keys = {s.key for s in settings(config)}
        dests = {d[len(cli.SETTING_DEST):] for d in option_dests(command) if d.startswith(cli.SETTING_DEST)}
        assert dests == keys - by_others, command
    top = {f.name for f in dataclasses.fields(CertifyConfig)}
    assert top == {s.path[0] for s in settings(CertifyConfig)}, "every field is a setting or a table of settings"
    flags = option_dests("certify")
    for flag in ("--kappa", "--mu", "--tau", "--w-bound", "--pool-delta", "--pool-rho", "--barrier-width", "--barrier-lr",
                 "--domain", "--reference-seed", "--feature-seed", "--projection-dim", "--probe-size"):
        assert flag in flags.values(), flag


def test_options_left_out_are_the_dataclass_defaults():
    from barrierkit.config import CertifyConfig, SampleConfig

    assert built() == CertifyConfig()
    args = cli.build_parser().parse_args(["sample", "--delta", "0.1"])
    assert cli.config_from_args(args, SampleConfig) == SampleConfig()
    assert (args.alpha, args.seed) == (CertifyConfig.alpha, CertifyConfig.seed), "sample --alpha/--seed mean certify's"


def test_a_default_or_help_changed_in_the_dataclass_shows_in_help(monkeypatch, capsys):
    import types

    from barrierkit.config import CertifyConfig, TrainRecipe

    lr = {f.name: f for f in dataclasses.fields(TrainRecipe)}["lr"]
    monkeypatch.setattr(lr, "default", 0.375)
    monkeypatch.setattr(lr, "metadata", types.MappingProxyType({**lr.metadata, "help": "step size of plain SGD"}))
    tau = {f.name: f for f in dataclasses.fields(CertifyConfig)}["tau"]
    monkeypatch.setattr(tau, "default", 2.5e-6)
    for command in ("certify", "sample"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--lr LR step size of plain SGD (default: 0.375)" in text, command
    with pytest.raises(SystemExit):
        main(["certify", "--help"])
    assert "--tau TAU a probe certifies only when the float64 re-check gives η < −tau (default: 2.5e-06)" in " ".join(
        capsys.readouterr().out.split())


@pytest.mark.parametrize("argv,key,expected", [
    (["--kappa", "0.2"], "kappa", 0.2), (["--kappa", "0.2"], "barrier.kappa", 0.2), (["--tau", "1e-6"], "tau", 1e-6),
    (["--mu", "0"], "mu", 0.0), (["--w-bound", "10"], "w_bound", 10.0), (["--pool-delta", "0.3"], "pool_delta", 0.3),
    (["--pool-rho", "0.5"], "pool_rho", 0.5), (["--delta-hi", "0.2"], "delta_hi", 0.2),
    (["--barrier-width", "16"], "barrier.width", 16), (["--barrier-out-dim", "4"], "barrier.out_dim", 4),
    (["--barrier-epochs", "20"], "barrier.epochs", 20), (["--barrier-lr", "0.03"], "barrier.lr", 0.03),
    (["--barrier-final-lr-fraction", "0.5"], "barrier.final_lr_fraction", 0.5),
    (["--barrier-margin", "0.1"], "barrier.margin", 0.1), (["--barrier-weight-decay", "0"], "barrier.weight_decay", 0.0),
    (["--barrier-seed", "3"], "barrier.seed", 3), (["--domain", "0,2"], "sample.threat.domain", (0.0, 2.0)),
    (["--hidden", "64,32"], "sample.model.hidden", (64, 32)), (["--reference-seed", "5"], "sample.attack.reference_seed", 5),
    (["--attack", "sign"], "sample.attack.kind", "sign"), (["--feature-seed", "6"], "sample.features.seed", 6),
    (["--projection-dim", "0"], "sample.features.projection_dim", 0), (["--probe-size", "64"], "sample.features.probe_size", 64),
    (["--memory-mb", "300"], "sample.memory_budget_mb", 300.0), (["--solver", "osqp"], "solver", "OSQP"),
])
def test_each_option_sets_its_setting(argv, key, expected):
    value = built(*argv)
    for part in key.split("."):
        value = getattr(value, part)
    assert value == expected and type(value) is type(expected)


def test_solver_highs_needs_mu_0_and_is_usable_from_the_command_line(capsys, monkeypatch):
    config = built("--solver", "HIGHS", "--mu", "0")
    assert config.solver == "HIGHS" and config.mu == 0.0
    assert config.decision_variables == config.barrier.out_dim + 3, "an LP: no epigraph variable"
    no_work(monkeypatch)
    assert main([*TINY_CERTIFY, "--solver", "highs"]) == 2
    one_line_error(capsys, "solver", "mu = 0")


def test_certify_help_groups_the_options(capsys):
    with pytest.raises(SystemExit):
        main(["certify", "--help"])
    text = capsys.readouterr().out
    order = [text.index(f"\n{title}:\n") for title in cli.GROUP_ORDER]
    assert order == sorted(order)
    assert text.index("--barrier-width") > text.index("\nbarrier fit:\n") > text.index("--lr LR")
    assert text.index("--delta-hi") > text.index("\nsearch over the budget δ:\n")


def test_a_malformed_list_option_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as done:
        main(["certify", "--hidden", "3,x"])
    assert done.value.code == 2 and "--hidden: expected comma-separated numbers like 32" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        main(["certify", "--domain", "0,1,2"])
    assert done.value.code == 2 and "expected 2 comma-separated values like 0,1" in capsys.readouterr().err


def test_sample_needs_delta_unless_it_dumps_its_config(capsys, monkeypatch):
    no_work(monkeypatch)
    assert main(["sample", "--quiet"]) == 2
    one_line_error(capsys, "--delta is required")
    assert main(["sample", "--dump-config"]) == 0
    assert "[recipe]" in capsys.readouterr().out


# ------------------------------------------------------------------ paths a user can get wrong


def test_the_log_file_cannot_be_an_output_or_the_certificate_read(tmp_path, capsys, monkeypatch, cli_certificate):
    no_work(monkeypatch)
    prev = tmp_path / "prev.json"
    prev.write_bytes(b"previous certificate")
    assert main([*TINY_CERTIFY, "--out", str(prev), "--log-file", str(prev)]) == 2
    one_line_error(capsys, "log-file", "same file as out")
    assert prev.read_bytes() == b"previous certificate"
    before = cli_certificate.read_bytes()
    assert main(["verify", str(cli_certificate), "--log-file", str(cli_certificate)]) == 2
    one_line_error(capsys, "same file as certificate")
    assert cli_certificate.read_bytes() == before
    assert main([*TINY_SAMPLE, "--out", str(tmp_path / "t.npz"), "--log-file", str(tmp_path / "t.json")]) == 2
    one_line_error(capsys, "same file as summary")


def test_an_output_that_is_not_a_regular_file_is_refused(tmp_path, capsys, monkeypatch):
    no_work(monkeypatch)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert main([*TINY_CERTIFY, "--out", str(fifo)]) == 2
    one_line_error(capsys, "not a regular file")
    assert main([*TINY_CERTIFY, "--out", str(tmp_path / "results") + os.sep]) == 2
    one_line_error(capsys, "is a folder")
    assert not (tmp_path / "results").exists()


def test_an_output_through_a_symlink_replaces_its_target(tmp_path, capsys):
    target = tmp_path / "real.npz"
    target.write_bytes(b"old")
    link = tmp_path / "link.npz"
    link.symlink_to(target)
    assert main([*TINY_SAMPLE, "--out", str(link), "--summary", str(tmp_path / "s.json")]) == 0
    assert link.is_symlink() and target.read_bytes() != b"old"


def test_a_log_file_that_stops_accepting_writes_is_one_warning_not_a_failure(tmp_path, capsys, monkeypatch):
    class Full:
        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def flush(self):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def close(self):
            pass

    monkeypatch.setattr(cli._LogFile, "_open", lambda self: Full())
    assert main([*TINY_CERTIFY, "--quiet", "--out", str(tmp_path / "c.json"), "--log-file", str(tmp_path / "run.log")]) in (0, 3, 4)
    assert (tmp_path / "c.json").exists()
    err = capsys.readouterr().err
    assert err.count("cannot write") == 1 and "No space left" in err and "Traceback" not in err and "Logging error" not in err


def test_a_lock_that_cannot_be_written_names_its_file_and_leaves_nothing(tmp_path, monkeypatch):
    real = os.write

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    out = str(tmp_path / "c.json")
    with pytest.raises(OSError) as exc:
        OutputLocks([("out", out)]).__enter__()
    monkeypatch.setattr(os, "write", real)
    assert exc.value.filename == lock_path(out) and not os.path.exists(lock_path(out))


@pytest.mark.parametrize("extra,field", [(["--rel-tol", "5"], "rel_tol"), (["--rho", "0"], "rho")])
def test_certify_refuses_settings_that_make_no_certificate(capsys, monkeypatch, extra, field):
    no_work(monkeypatch)
    assert main([*TINY_CERTIFY, *extra]) == 2
    one_line_error(capsys, field)


def test_quiet_keeps_the_log_file_at_its_level(tmp_path, capsys):
    log = tmp_path / "run.log"
    main([*TINY_CERTIFY, "--quiet", "--log-file", str(log)])
    assert "probe 1" not in capsys.readouterr().err and "probe 1 of at most 2" in log.read_text()


def test_triton_on_a_cpu_is_bad_input_not_a_bug(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert main([*TINY_SAMPLE, "--backend", "triton", "--device", "cpu", "--out", str(tmp_path / "t.npz")]) == 2
    assert "cuda" in one_line_error(capsys, "backend").lower()


def test_sign_noise_with_another_attack_is_refused(tmp_path, capsys, monkeypatch):
    no_work(monkeypatch)
    assert main([*TINY_SAMPLE, "--attack", "sign", "--sign-noise", "0.5", "--out", str(tmp_path / "t.npz")]) == 2
    one_line_error(capsys, "sign_noise", "gradient attack only")


def test_the_log_file_may_be_a_device_is_owner_only_and_not_a_lock_file(tmp_path, capsys, cli_certificate):
    assert main(["report", str(cli_certificate), "--quiet", "--log-file", os.devnull]) == 0
    capsys.readouterr()
    log = tmp_path / "run.log"
    assert main(["verify", str(cli_certificate), "--quiet", "--log-file", str(log)]) == 0
    assert (os.stat(log).st_mode & 0o077) == 0
    out = tmp_path / "c.json"
    assert main([*TINY_CERTIFY, "--out", str(out), "--log-file", lock_path(str(out))]) == 2
    one_line_error(capsys, "lock file")
