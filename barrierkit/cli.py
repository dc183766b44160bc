"""Command line: ``barrierkit sample`` (and the commands later stages add).

Bad input exits with status 2 and one line naming the field; no partial output file is left.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

import numpy as np

from .config import ConfigError, FeatureSpec, ModelSpec, SampleConfig, SamplingAttack, ThreatModel, TrainRecipe


class CliError(Exception):
    """A user error the CLI reports in one line with exit status 2."""


def _hidden(text: str) -> tuple:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"hidden: expected comma-separated ints like 32 or 64,32, got {text!r}")


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
    g.add_argument("--attack", default="gradient", help="sampling attack: gradient (default), sign or uniform")
    g.add_argument("--sign-noise", type=float, default=0.0, help="gradient attack: probability of flipping a point's direction")
    g = p.add_argument_group("execution")
    g.add_argument("--seed", type=int, default=0, help="master seed; every trajectory's seeds derive from it (default: 0)")
    g.add_argument("--backend", default="auto",
                   help="auto (default: triton on CUDA, numba on the CPU when installed, else torch), torch (the "
                        "readable reference), numba, triton or triton_tf32; recorded, since it defines the dynamics")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (default: cuda when available, else cpu)")
    g.add_argument("--memory-mb", type=float, default=None,
                   help="memory budget that sizes trajectory chunks; results do not depend on it "
                        "(default: 2048 on the CPU, half the free memory of a CUDA device)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


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


def _check_writable(path: str, field: str) -> None:
    directory = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(directory):
        raise CliError(f"{field}: folder {directory} does not exist")


def cmd_sample(args: argparse.Namespace) -> int:
    from .data import get_dataset
    from .engine import PURPOSE_SAMPLE, clean_accuracy, sample, trajectory_seeds
    from .io import write_json

    config = config_from_args(args)
    if args.n < 1:
        raise ConfigError("n", f"must be an int >= 1, got {args.n}")
    summary_path = args.summary or os.path.splitext(args.out)[0] + ".json"
    _check_writable(args.out, "out")
    _check_writable(summary_path, "summary")
    data = get_dataset(config.dataset)
    from .backends import resolve_device

    kw = dict(data=data, backend=args.backend, device=resolve_device(args.device), progress=False if args.quiet else None)
    seeds = trajectory_seeds(args.seed, PURPOSE_SAMPLE, args.n)
    runs = sample(config, args.delta, seeds, **kw)
    summary = {
        "n": runs.n, "delta": runs.delta, "intervals": runs.intervals, "out": os.path.abspath(args.out),
        "test_accuracy": _quantiles(runs.test_accuracy), "poison_fraction_mean": float(runs.poison_fraction.mean()),
        "meta": runs.meta,
    }
    if args.n_clean:
        g_c, _ = clean_accuracy(config, args.n_clean, args.seed, **kw)
        unsafe = runs.unsafe(g_c, args.alpha)
        summary.update({"g_clean": g_c, "alpha": args.alpha, "n_clean": args.n_clean,
                        "unsafe_fraction": float(unsafe.mean()), "accuracy_drop": _quantiles(runs.accuracy_drop(g_c))})
    runs.save(args.out)
    try:
        write_json(summary_path, summary)
    except BaseException:
        os.unlink(args.out)
        raise
    print(f"{runs.n} trajectories at delta={runs.delta:g}: median test accuracy {np.median(runs.test_accuracy):.4f}, "
          f"{summary['meta']['timings']['trajectory_steps_per_s']:.0f} trajectory-steps/s")
    if args.n_clean:
        print(f"g_c = {summary['g_clean']:.4f}; unsafe (G > {args.alpha:g}): {summary['unsafe_fraction']:.1%}")
    print(f"wrote {args.out} and {summary_path}")
    return 0


def certify_config_from_args(args: argparse.Namespace):
    from .config import CertifyConfig

    return CertifyConfig(
        sample=config_from_args(args), alpha=args.alpha, epsilon=args.epsilon, beta=args.beta, n_verify=args.n_verify,
        n_train=args.n_train, n_clean=args.n_clean, n_pool=args.n_pool, max_probes=args.max_probes,
        delta_start=args.delta_start, delta_hi=args.delta_hi, rel_tol=args.rel_tol, solver=args.solver.upper(),
        seed=args.seed,
    )


def cmd_certify(args: argparse.Namespace) -> int:
    from .api import certify
    from .backends import resolve_device

    config = certify_config_from_args(args)
    if args.out:
        _check_writable(args.out, "out")
    cert = certify(config, backend=args.backend, device=resolve_device(args.device), progress=False if args.quiet else None)
    if args.out:
        cert.save(args.out)
    print(cert.summary())
    if args.profile:
        print("\n" + profile_table(cert.doc))
    if args.out:
        print(f"\ncertificate written to {args.out} (owner-only); check it with: barrierkit verify {args.out}")
    return 0


PROFILE_STAGES = (("clean runs (g_c)", "clean_s"), ("sampling (pool, probe splits)", "sampling_s"),
                  ("barrier fit", "barrier_s"), ("scenario program", "scp_s"))


def profile_stages(doc: dict) -> list:
    """[(stage, seconds, share of total)] from a certificate's timings; "other" is the rest."""
    t = doc["timings"]
    total = float(t["total_s"])
    rows = [(name, float(t.get(key, 0.0))) for name, key in PROFILE_STAGES]
    rows.append(("other (reference, bookkeeping)", max(0.0, total - sum(s for _, s in rows))))
    return [(name, s, s / total if total > 0 else 0.0) for name, s in rows] + [("total", total, 1.0 if total > 0 else 0.0)]


def profile_table(doc: dict) -> str:
    """Where the time of a certification went, stage by stage (``certify --profile``)."""
    lines = ["profile: where the time went", f"  {'stage':32s} {'seconds':>10s} {'share':>7s}"]
    for name, seconds, share in profile_stages(doc):
        lines.append(f"  {name:32s} {seconds:10.2f} {share:7.1%}")
    t = doc["timings"]
    if "sampling_train_s" in t:  # certificates from before this breakdown lack it
        lines.append(f"  sampling (probes and pool; clean runs apart): training steps {t['sampling_train_s']:.2f} s, "
                     f"features phi {t['sampling_features_s']:.2f} s ({doc.get('features_by', 'torch')}), "
                     f"test accuracy {t['sampling_eval_s']:.2f} s")
    tp = doc.get("throughput", {})
    runs, steps = tp.get("trajectories", 0), doc["config"]["sample"]["recipe"]["steps"]
    sampling = float(t.get("clean_s", 0.0)) + float(t.get("sampling_s", 0.0))
    lines.append(f"  trajectory-steps/s: {tp.get('trajectory_steps_per_s', 0.0):,.0f} over the whole certification "
                 f"({runs} runs x {steps} steps); {runs * steps / sampling if sampling > 0 else 0.0:,.0f} while sampling")
    return "\n".join(lines)


def cmd_verify(args: argparse.Namespace) -> int:
    from .certificate import Certificate, CertificateError

    try:
        cert = Certificate.load(args.certificate)
    except CertificateError as exc:
        raise CliError(str(exc)) from None
    try:
        problems = cert.check()
    except (KeyError, TypeError, ValueError) as exc:
        raise CliError(f"certificate: malformed document ({type(exc).__name__}: {exc})") from None
    if problems:
        raise CliError("certificate: " + "; ".join(problems))
    print(f"{args.certificate}: OK: {cert.status}; {len(cert.doc['probes'])} probes re-checked "
          f"(PAC arithmetic, eta_check from stored margins, statuses, radii)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .certificate import Certificate, CertificateError

    try:
        print(Certificate.load(args.certificate).summary())
    except CertificateError as exc:
        raise CliError(str(exc)) from None
    return 0


def _quantiles(x: np.ndarray) -> dict:
    q = np.quantile(x, [0.0, 0.05, 0.5, 0.95, 1.0])
    return {"min": float(q[0]), "q05": float(q[1]), "median": float(q[2]), "q95": float(q[3]), "max": float(q[4]), "mean": float(np.mean(x))}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="barrierkit",
        description="Certify how much data poisoning a training recipe can take, with barrier certificates.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sample", help="sample N (poisoned) training runs and record their trajectories",
                       description="Run N training runs poisoned at budget --delta and record their features "
                                   "(a .npz Trajectories file) and a JSON summary.")
    p.add_argument("--n", type=int, default=1000, help="number of trajectories (default: 1000)")
    p.add_argument("--delta", type=float, required=True, help="poisoning budget: ||Delta||_p <= delta")
    p.add_argument("--out", default="trajectories.npz", help="Trajectories file to write (default: trajectories.npz)")
    p.add_argument("--summary", default=None, help="JSON summary path (default: OUT with .json)")
    p.add_argument("--n-clean", type=int, default=0, help="also run N_c clean runs for g_c and the unsafe fraction (default: 0)")
    p.add_argument("--alpha", type=float, default=0.05, help="safety threshold on the accuracy drop (default: 0.05)")
    add_sample_options(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("certify", help="search the largest certified poisoning budget and write a Certificate",
                       description="Bisect over the budget delta; at each probe sample fresh poisoned runs, fit a "
                                   "neural barrier certificate on a training split and verify it with a scenario "
                                   "convex program on a verification split (PAC: confidence 1 - beta, violation "
                                   "level epsilon). Prints the report; writes the JSON certificate to --out.")
    g = p.add_argument_group("certificate")
    g.add_argument("--alpha", type=float, default=0.05, help="unsafe when the accuracy drop G = g_c - g exceeds alpha (default: 0.05)")
    g.add_argument("--epsilon", type=float, default=0.02, help="largest acceptable violation level (default: 0.02)")
    g.add_argument("--beta", type=float, default=1e-4, help="1 - confidence, split over the probes (default: 1e-4)")
    g.add_argument("--n-verify", type=int, default=2000, help="verification runs per probe, N_v (default: 2000)")
    g.add_argument("--n-train", type=int, default=500, help="training-split runs per probe (fit the barrier) (default: 500)")
    g.add_argument("--n-clean", type=int, default=200, help="clean runs for g_c (default: 200)")
    g.add_argument("--n-pool", type=int, default=200, help="heavily poisoned runs for the unsafe pool (default: 200)")
    g.add_argument("--max-probes", type=int, default=8, help="K_max, probes in the search (beta is split over them) (default: 8)")
    g.add_argument("--delta-start", type=float, default=0.05, help="first probe when bracketing by doubling (default: 0.05)")
    g.add_argument("--delta-hi", type=float, default=None, help="upper end of the search (default: bracket by doubling)")
    g.add_argument("--rel-tol", type=float, default=0.05, help="stop bisecting at this relative bracket width (default: 0.05)")
    g.add_argument("--solver", default="CLARABEL", help="CLARABEL (default), OSQP (re-checked, falls back) or HIGHS (LP)")
    g.add_argument("--out", default=None, help="write the JSON certificate here (owner-only permissions)")
    g.add_argument("--profile", action="store_true",
                   help="after the report, print where the time went, stage by stage (seconds, share, trajectory-steps/s)")
    add_sample_options(p)
    p.set_defaults(func=cmd_certify)

    p = sub.add_parser("verify", help="re-check a saved certificate's numbers",
                       description="Re-check a certificate: its digest, the PAC arithmetic of every probe, eta_check "
                                   "from the stored margins, the statuses and the radii. Exit 0 when all hold, 2 if not.")
    p.add_argument("certificate", help="certificate JSON written by barrierkit certify --out")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("report", help="print the plain-text report of a saved certificate")
    p.add_argument("certificate", help="certificate JSON")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, CliError, ValueError) as exc:
        print(f"barrierkit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("barrierkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
