"""Command line: ``barrierkit sample | certify | verify | report``.

A user's mistake or an OS error is one line on stderr and a documented exit status, never a
traceback; every output path is checked (and locked) before any work, and a late failure leaves
every earlier file as it was. Progress goes to the ``barrierkit`` logger: one line per stage and
per probe on stderr (and in ``--log-file``), with progress bars only on a terminal.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap
import traceback
from typing import List, Optional

import numpy as np

from . import __version__
from .certificate import CertificateError, DigestMismatch, near_chance_warning
from .config import (ATTACK_DESCRIPTIONS, CertifyConfig, ConfigError, FeatureSpec, ModelSpec, SampleConfig, SamplingAttack,
                     ThreatModel, TrainRecipe)
from .outputs import OutputError, OutputLocks, check_log_file, check_outputs

log = logging.getLogger("barrierkit")

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_REFUTED, EXIT_INCONCLUSIVE = 0, 1, 2, 3, 4
EXIT_NUMERICAL, EXIT_CHECK_FAILED, EXIT_SYSTEM, EXIT_INTERRUPTED = 5, 6, 7, 130
EXIT_BY_STATUS = {"CERTIFIED": EXIT_OK, "REFUTED": EXIT_REFUTED, "INCONCLUSIVE": EXIT_INCONCLUSIVE}
EXIT_CODES = """exit status:
  0    success (certify: CERTIFIED)
  1    internal error: a bug, please report it (--log-level debug shows the traceback)
  2    bad input: an option or configuration value, an output path, an unreadable or foreign file
  3    certify: REFUTED (a verification run ended unsafe at the smallest probed budget)
  4    certify: INCONCLUSIVE (nothing certified, nothing refuted at the smallest probed budget)
  5    numerical error: training diverged or an accuracy is not finite; no run was labelled
  6    verify, report: the certificate contradicts itself, or a replayed run differs from it
  7    system error: the operating system refused (disk full, permissions, out of memory)
  130  interrupted"""


class CliError(Exception):
    """A user error the CLI reports in one line with exit status 2."""


class CheckFailed(Exception):
    """A certificate failed ``verify``'s checks (exit status 6); one problem per line."""


def say(text: str) -> None:
    """Print to stdout; a reader that went away (``| head``) is not an error: the rest of the
    output is dropped and the command still finishes (files written, exit status kept)."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, AttributeError, ValueError):
            pass


def _hidden(text: str) -> tuple:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"hidden: expected comma-separated ints like 32 or 64,32, got {text!r}")


ATTACK_HELP = "; ".join(f"{name}: {text}" for name, text in ATTACK_DESCRIPTIONS.items())


def add_sample_options(p: argparse.ArgumentParser) -> None:
    """Options that define the sampled training runs (shared by sample and certify)."""
    g = p.add_argument_group("data and model")
    g.add_argument("--dataset", default="digits", help="digits (embedded, default), synthetic (64-d) or synthetic-mnist (784-d)")
    g.add_argument("--hidden", type=_hidden, default=(32,), help="hidden widths, e.g. 32 or 64,32 (default: 32)")
    g = p.add_argument_group("training recipe (the dynamics)")
    g.add_argument("--steps", type=int, default=400, help="SGD steps T per run (default: 400)")
    g.add_argument("--batch", type=int, default=32, help="minibatch size (default: 32)")
    g.add_argument("--lr", type=float, default=0.1, help="learning rate (default: 0.1)")
    g.add_argument("--momentum", type=float, default=0.0, help="SGD momentum (default: 0)")
    g.add_argument("--weight-decay", type=float, default=0.0, help="L2 weight decay (default: 0)")
    g.add_argument("--record-every", type=int, default=40, help="record features every r steps; K = T/r (default: 40)")
    g.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="training precision (default: float32)")
    g = p.add_argument_group("threat model")
    g.add_argument("--rho", type=float, default=0.5, help="probability that a training point is poisoned (default: 0.5)")
    g.add_argument("--norm", default="inf", help="perturbation norm: inf or 2 (default: inf)")
    g.add_argument("--attack", default="gradient", help=f"sampling attack A_δ, what a poisoned point gets: {ATTACK_HELP} "
                                                        "(default: gradient)")
    g.add_argument("--sign-noise", type=float, default=0.0,
                   help="gradient attack only: probability that a poisoned point's direction is flipped (the attack "
                        "then draws random perturbations instead of one fixed one per point) (default: 0)")
    g = p.add_argument_group("execution")
    g.add_argument("--seed", type=int, default=0, help="master seed; every trajectory's seeds derive from it (default: 0)")
    g.add_argument("--backend", default="auto",
                   help="auto (default: triton on CUDA, numba on the CPU when installed, else torch), torch (the "
                        "readable reference), numba (CPU), triton (the fused GPU kernel, IEEE float32 dot products) "
                        "or triton_tf32 (the same kernel with TF32 tensor-core dot products: faster, about 1e-3 "
                        "relative rounding per product); recorded in every result, since it defines the dynamics")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (default: cuda when available, else cpu)")
    g.add_argument("--memory-mb", type=float, default=None,
                   help="memory budget that sizes trajectory chunks; results do not depend on it "
                        "(default: 2048 on the CPU, half the free memory of a CUDA device)")


def add_common_options(p: argparse.ArgumentParser) -> None:
    """Logging options every command takes."""
    g = p.add_argument_group("output and logging")
    g.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="progress and diagnostics on stderr: info (default) logs one line per stage and probe")
    g.add_argument("--log-file", default=None, help="also append the log to this file")
    g.add_argument("--quiet", action="store_true",
                   help="no progress bars, and only warnings and errors on stderr (--log-file keeps --log-level)")


def config_from_args(args: argparse.Namespace) -> SampleConfig:
    return SampleConfig(
        dataset=args.dataset,
        model=ModelSpec(hidden=args.hidden),
        recipe=TrainRecipe(steps=args.steps, batch=args.batch, lr=args.lr, momentum=args.momentum,
                           weight_decay=args.weight_decay, record_every=args.record_every, dtype=args.dtype),
        threat=ThreatModel(norm=args.norm, rho=args.rho),
        attack=SamplingAttack(kind=args.attack, sign_noise=args.sign_noise),
        features=FeatureSpec(),
        memory_budget_mb=args.memory_mb,
    )


def _progress(args: argparse.Namespace) -> Optional[bool]:
    return False if args.quiet else None


def cmd_sample(args: argparse.Namespace) -> int:
    from .backends import resolve_device
    from .config import check_alpha, check_count
    from .data import get_dataset
    from .engine import PURPOSE_SAMPLE, check_memory, clean_runs, sample, trajectory_seeds
    from .io import json_bytes, write_together
    from .labels import SafetyRule, chance_hits

    config = config_from_args(args)
    check_count(args.n, "n")
    if not isinstance(args.n_clean, int) or args.n_clean < 0:
        raise ConfigError("n_clean", f"must be an int >= 0, got {args.n_clean!r}")
    check_alpha(args.alpha)
    check_memory(config, args.n, "n")
    check_memory(config, args.n_clean, "n_clean")
    summary_path = sample_summary_path(args)
    outputs = check_outputs([("out", args.out), ("summary", summary_path)])
    device = resolve_device(args.device)
    with OutputLocks(outputs):
        data = get_dataset(config.dataset)
        kw = dict(data=data, backend=args.backend, device=device, progress=_progress(args))
        runs = sample(config, args.delta, trajectory_seeds(args.seed, PURPOSE_SAMPLE, args.n), **kw)
        summary = {
            "n": runs.n, "delta": runs.delta, "intervals": runs.intervals, "out": outputs[0][1],
            "test_size": runs.test_size, "test_hits": _quantiles(runs.test_hits),
            "test_accuracy": _quantiles(runs.test_accuracy), "poison_fraction_mean": float(runs.poison_fraction.mean()),
            "meta": runs.meta,
        }
        chance = chance_hits(data.y_test)
        if args.n_clean:
            clean = clean_runs(config, args.n_clean, args.seed, **kw)
            rule = SafetyRule.from_clean_hits(clean.test_hits, clean.test_size, args.alpha)
            unsafe = rule.unsafe(runs.test_hits)
            summary.update({"g_clean": rule.g_clean, "clean_median_hits": rule.clean_median_hits, "alpha": args.alpha,
                            "n_clean": args.n_clean, "n_unsafe": int(unsafe.sum()), "unsafe_fraction": float(unsafe.mean()),
                            "accuracy_drop": _quantiles(rule.accuracy_drop(runs.test_hits))})
            if rule.near_chance(chance):
                log.warning(near_chance_warning(rule, chance))
        elif np.median(runs.test_hits) <= chance:
            log.warning("the runs' median test accuracy %.4f is no better than always predicting the majority class "
                        "(%.4f): the recipe does not learn", float(np.median(runs.test_accuracy)), chance / runs.test_size)
        write_together([(outputs[0][1], runs.write_to), (outputs[1][1], lambda fh: fh.write(json_bytes(summary)))])
    say(f"{runs.n} trajectories at delta={runs.delta:g}: median test accuracy {np.median(runs.test_accuracy):.4f}, "
        f"{summary['meta']['timings']['trajectory_steps_per_s']:.0f} trajectory-steps/s")
    if args.n_clean:
        say(f"g_c = {summary['g_clean']:.4f}; unsafe (G > {args.alpha:g}, exact on hit counts): "
            f"{summary['n_unsafe']} of {runs.n} ({summary['unsafe_fraction']:.1%})")
    say(f"wrote {args.out} and {summary_path}")
    return EXIT_OK


def sample_summary_path(args: argparse.Namespace) -> str:
    """``sample``'s JSON summary: --summary, else OUT with .json."""
    return args.summary if args.summary is not None else os.path.splitext(args.out)[0] + ".json"


def command_files(args: argparse.Namespace) -> List[tuple]:
    """[(option, path)] of the files a command reads or writes, which --log-file must not be."""
    if args.command == "sample":
        return [("out", args.out), ("summary", sample_summary_path(args))]
    if args.command == "certify":
        return [("out", args.out)] if args.out else []
    return [("certificate", args.certificate)]


def certify_config_from_args(args: argparse.Namespace) -> CertifyConfig:
    return CertifyConfig(
        sample=config_from_args(args), alpha=args.alpha, epsilon=args.epsilon, beta=args.beta, n_verify=args.n_verify,
        n_train=args.n_train, n_clean=args.n_clean, n_pool=args.n_pool, max_probes=args.max_probes,
        delta_start=args.delta_start if args.delta_start is not None else CertifyConfig.delta_start, delta_hi=args.delta_hi,
        rel_tol=args.rel_tol, solver=args.solver.upper(), seed=args.seed,
    )


def cmd_certify(args: argparse.Namespace) -> int:
    from .api import certify
    from .report import profile_table

    config = certify_config_from_args(args)
    if args.delta_hi is not None and args.delta_start is not None:
        log.warning("--delta-start %g is not used: with --delta-hi the search probes %g first and bisects below it",
                    args.delta_start, args.delta_hi)
    outputs = check_outputs([("out", args.out)]) if args.out is not None else []
    with OutputLocks(outputs):
        cert = certify(config, backend=args.backend, device=args.device, progress=_progress(args))
        failure = None
        if outputs:
            try:
                cert.save(outputs[0][1])
            except OSError as exc:
                failure = exc
        say(cert.summary())
        if args.profile:
            say("\n" + profile_table(cert.doc))
    if failure is not None:
        print(f"barrierkit certify: error: out: could not write {args.out}: {failure.strerror or failure}; nothing "
              "was written, and the report above is all that remains of this run", file=sys.stderr)
        return EXIT_SYSTEM
    if outputs:
        say(f"\ncertificate written to {args.out} (owner-only); check it with: barrierkit verify {args.out}")
    else:
        log.warning("nothing was saved: no --out was given, so the report above is all that remains of this run")
    return EXIT_BY_STATUS[cert.status]


def _load_checked(path: str):
    """Load a certificate and run the quick checks; CheckFailed lists every problem."""
    from .certificate import Certificate

    cert = Certificate.load(path)
    problems = cert.check()
    if problems:
        raise CheckFailed(f"{path}: FAILED: {len(problems)} problem{'s' if len(problems) > 1 else ''}:\n"
                          + "\n".join(f"  - {p}" for p in problems))
    return cert


def cmd_verify(args: argparse.Namespace) -> int:
    cert = _load_checked(args.certificate)
    say(f"{args.certificate}: OK: {cert.status}; every derivable field of the document re-derived "
        f"({len(cert.doc['probes'])} probes: labels, counts, witnesses, epsilons, eta_check, statuses, search path, radii)")
    if args.replay:
        from .rerun import replay_certificate

        result = replay_certificate(cert.doc, progress=_progress(args))
        if not result.ok:
            raise CheckFailed(f"{args.certificate}: REPLAY FAILED: {result.mismatch}")
        say(f"{args.certificate}: REPLAY OK: {result.summary}")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    say(_load_checked(args.certificate).summary())
    return EXIT_OK


def _quantiles(x: np.ndarray) -> dict:
    q = np.quantile(x, [0.0, 0.05, 0.5, 0.95, 1.0])
    return {"min": float(q[0]), "q05": float(q[1]), "median": float(q[2]), "q95": float(q[3]), "max": float(q[4]), "mean": float(np.mean(x))}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="barrierkit", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXIT_CODES,
        description=textwrap.fill("Certify how much data poisoning a training recipe can take, with barrier "
                                  "certificates. A certificate is relative to its sampling attack: it covers only "
                                  "the perturbations that attack draws (see 'barrierkit certify --help').", width=79),
    )
    parser.add_argument("--version", action="version", version=f"barrierkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, description: str, **kw) -> argparse.ArgumentParser:
        return sub.add_parser(name, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXIT_CODES,
                              description=textwrap.fill(description, width=79), **kw)

    p = command("sample", help="sample N (poisoned) training runs and record their trajectories",
                description="Run N training runs poisoned at budget --delta and record their features "
                            "(a .npz Trajectories file) and a JSON summary. Both files are written together "
                            "at the end: a failure leaves earlier files as they were.")
    p.add_argument("--n", type=int, default=1000, help="number of trajectories (default: 1000)")
    p.add_argument("--delta", type=float, required=True, help="poisoning budget: ||Delta||_p <= delta")
    p.add_argument("--out", default="trajectories.npz", help="Trajectories file to write (default: trajectories.npz)")
    p.add_argument("--summary", default=None, help="JSON summary path (default: OUT with .json; must differ from OUT)")
    p.add_argument("--n-clean", type=int, default=0, help="also run N_c clean runs for g_c and the unsafe fraction (default: 0)")
    p.add_argument("--alpha", type=float, default=0.05, help="safety threshold on the accuracy drop, in [0, 1] (default: 0.05)")
    add_sample_options(p)
    add_common_options(p)
    p.set_defaults(func=cmd_sample)

    p = command("certify", help="search the largest certified poisoning budget and write a Certificate",
                description="Bisect over the budget delta; at each probe sample fresh poisoned runs, fit a "
                            "neural barrier certificate on a training split and verify it with a scenario "
                            "convex program on a verification split (PAC: confidence 1 - beta, violation "
                            "level epsilon). Prints the report; writes the JSON certificate to --out. The "
                            "result holds only for the named sampling attack (--attack).")
    g = p.add_argument_group("certificate")
    g.add_argument("--alpha", type=float, default=0.05, help="unsafe when the accuracy drop G = g_c - g exceeds alpha (default: 0.05)")
    g.add_argument("--epsilon", type=float, default=0.02, help="largest acceptable violation level (default: 0.02)")
    g.add_argument("--beta", type=float, default=1e-4, help="1 - confidence, split over the probes (default: 1e-4)")
    g.add_argument("--n-verify", type=int, default=2000, help="verification runs per probe, N_v (default: 2000)")
    g.add_argument("--n-train", type=int, default=500, help="training-split runs per probe (fit the barrier) (default: 500)")
    g.add_argument("--n-clean", type=int, default=200, help="clean runs for g_c (default: 200)")
    g.add_argument("--n-pool", type=int, default=200, help="heavily poisoned runs for the unsafe pool (default: 200)")
    g.add_argument("--max-probes", type=int, default=8, help="K_max, probes in the search (beta is split over them) (default: 8)")
    g.add_argument("--delta-start", type=float, default=None,
                   help="first probe when bracketing by doubling (default: "
                        f"{CertifyConfig.delta_start}; not used with --delta-hi)")
    g.add_argument("--delta-hi", type=float, default=None,
                   help="upper end of the search: probed first, then bisected below (default: bracket by doubling)")
    g.add_argument("--rel-tol", type=float, default=0.05, help="stop bisecting at this relative bracket width (default: 0.05)")
    g.add_argument("--solver", default="CLARABEL", help="CLARABEL (default), OSQP (re-checked, falls back) or HIGHS (LP)")
    g.add_argument("--out", default=None, help="write the JSON certificate here (owner-only permissions; locked while "
                                               "this run works toward it; default: nothing is saved)")
    g.add_argument("--profile", action="store_true",
                   help="after the report, print where the time went, stage by stage (seconds, share, trajectory-steps/s)")
    add_sample_options(p)
    add_common_options(p)
    p.set_defaults(func=cmd_certify)

    p = command("verify", help="re-derive a saved certificate; --replay re-runs its runs",
                description="Check a certificate. Always: its digest (a checksum, not a signature) and every "
                            "field that follows from other fields of the document or from its dataset (labels, "
                            "counts and witnesses from the stored hit counts, every epsilon, eta_check from the "
                            "stored margins, statuses, the search path, radii, context); a field it should not "
                            "have is refused too. With --replay: re-run every run from its seeds with the recorded "
                            "backend (clean runs, pool, each probe's training and verification split), recompute "
                            "the hit counts and labels, fit each barrier again on its training split, re-check "
                            "the scenario rows at the stored solution and solve each program again; this takes "
                            "about as long as the certification's sampling. Reports the first mismatch.")
    p.add_argument("certificate", help="certificate JSON written by barrierkit certify --out")
    p.add_argument("--replay", action="store_true", help="also re-run every run of the certificate (slow; see above)")
    add_common_options(p)
    p.set_defaults(func=cmd_verify)

    p = command("report", help="print the plain-text report of a saved certificate",
                description="Print the report of a saved certificate: the guarantee in one sentence, the "
                            "sampling attack, the radii, every probe, the radius in context, warnings and what "
                            "the certificate does not mean. The document is checked as 'verify' checks it "
                            "first; a document that fails is refused the same way.")
    p.add_argument("certificate", help="certificate JSON")
    add_common_options(p)
    p.set_defaults(func=cmd_report)
    return parser


class _TqdmHandler(logging.StreamHandler):
    """Log lines on stderr that do not break a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # a log line must never end the run
            self.handleError(record)


class _LogFile(logging.FileHandler):
    """--log-file: a write that fails (a full disk) says so once, in one line, and the log goes on
    on stderr only; it never ends the command or changes its exit status."""

    failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        exc = sys.exc_info()[1]
        self.failed = True
        print(f"barrierkit: warning: log-file: cannot write {self.baseFilename}: "
              f"{getattr(exc, 'strerror', None) or exc}; the log goes on on stderr only", file=sys.stderr)

    def close(self) -> None:
        try:
            super().close()
        except OSError:
            self.failed = True


def setup_logging(args: argparse.Namespace) -> List[logging.Handler]:
    """Handlers for the ``barrierkit`` logger: stderr (``--quiet``: warnings and errors only), and
    ``--log-file`` at ``--log-level`` when given."""
    level = getattr(logging, args.log_level.upper())
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
    terminal = _TqdmHandler()
    terminal.setLevel(max(level, logging.WARNING) if args.quiet else level)
    handlers: List[logging.Handler] = [terminal]
    if args.log_file is not None:
        path = check_log_file(args.log_file, [(o, p) for o, p in command_files(args) if p])
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))  # owner-only, like the outputs
            handler = _LogFile(path, mode="a", encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"log-file: cannot open {args.log_file}: {exc.strerror}") from None
        handler.setLevel(level)
        handlers.append(handler)
    for h in handlers:
        h.setFormatter(fmt)
        log.addHandler(h)
    log.setLevel(level)
    log.propagate = False
    return handlers


def _describe_failure(exc: BaseException) -> tuple:
    """(exit status, one-line message) for an exception that ends a command."""
    if isinstance(exc, CheckFailed):
        return EXIT_CHECK_FAILED, str(exc)
    if isinstance(exc, DigestMismatch):
        return EXIT_CHECK_FAILED, str(exc)
    if isinstance(exc, (ConfigError, CliError, OutputError, CertificateError)):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, FloatingPointError):
        return EXIT_NUMERICAL, f"numerical error: {exc}"
    if isinstance(exc, MemoryError):
        return EXIT_SYSTEM, ("out of memory" + (f" ({exc})" if str(exc) else "")
                             + ": lower the number of runs (--n, --n-verify) or --memory-mb")
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return EXIT_SYSTEM, f"system error: {where}{exc.strerror or exc}"
    return EXIT_INTERNAL, (f"internal error: {type(exc).__name__}: {exc} (a bug in barrierkit; rerun with "
                           "--log-level debug for the traceback, and please report it)")


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers: List[logging.Handler] = []
    try:
        handlers = setup_logging(args)
        return int(args.func(args))
    except KeyboardInterrupt:
        print(f"barrierkit {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # every failure ends as one line and an exit status (see EXIT_CODES)
        code, message = _describe_failure(exc)
        log.debug("traceback:\n%s", traceback.format_exc())
        if code == EXIT_INTERNAL:
            for h in handlers:
                if isinstance(h, _LogFile) and not h.failed:
                    try:
                        h.stream.write(traceback.format_exc())
                    except (OSError, ValueError):
                        pass
        print(f"barrierkit {args.command}: error: {message}", file=sys.stderr)
        return code
    finally:
        for h in handlers:
            log.removeHandler(h)
            h.close()


if __name__ == "__main__":
    sys.exit(main())
