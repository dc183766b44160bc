"""Command line: ``barrierkit sample | attack | certify | verify | report``.

A user's mistake or an OS error is one line on stderr and a documented exit status, never a
traceback; every output path is checked (and locked) before any work, and a late failure leaves
every earlier file as it was. Progress goes to the ``barrierkit`` logger: one line per stage and
per probe on stderr (and in ``--log-file``), with progress bars only on a terminal.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import textwrap
import traceback
import typing
from typing import Any, Callable, Dict, List, Optional, Tuple, Type, Union

import numpy as np

from .version import __version__
from .certificate import CertificateError, DigestMismatch, near_chance_warning
from .config import EMP_ATTACKS, STRONG_EVASION, CertifyConfig, ConfigError, SampleConfig, Setting, given_type, settings
from .config_file import dump_config, in_file, read_settings
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


# ------------------------------------------------------------------ options from the configuration

FLAG_NAMES = {"threat_kind": "--threat", "attack.kind": "--attack", "features.seed": "--feature-seed", "memory_budget_mb": "--memory-mb"}
"""Options not named after their field (a sampling setting's key is taken relative to the
SampleConfig). Every other option is its field's name with dashes; a barrier setting's has the
prefix ``barrier-``, an evasion setting's ``evasion-``."""

SET_BY_OTHERS = {"barrier.kappa": "kappa"}
"""Settings without an option of their own: --kappa sets the barrier's kappa too (they must agree)."""

PARSERS: Dict[str, Callable[[str], Any]] = {"solver": str.upper}
"""Settings whose command-line text is normalised before the configuration checks it."""

DATA = "sampling: data, model and execution"
RECIPE = "training recipe (the dynamics)"
THREAT = "threat model and sampling attack"
EVASION = "evasion: the test-time attack (--threat evasion or both)"
FEATURES = "features φ (what is recorded of each run)"
BARRIER = "barrier fit"
PAC = "certification (PAC)"
SCENARIO = "scenario program"
SEARCH = "search over the budget δ"
EMPIRICAL = "empirical radius δ_emp (stronger attacks beside the certificate)"
CONFIG_FILE = "configuration file"
LOGGING = "output and logging"
GROUP_ORDER = (CONFIG_FILE, DATA, RECIPE, THREAT, EVASION, FEATURES, BARRIER, PAC, SCENARIO, SEARCH, EMPIRICAL, LOGGING)
SECTION_GROUPS = {"model": DATA, "recipe": RECIPE, "threat_kind": THREAT, "threat": THREAT, "attack": THREAT,
                  "search_budget": THREAT, "fixed_budget": THREAT,
                  "evasion": EVASION, "features": FEATURES,
                  "barrier": BARRIER, "dataset": DATA, "memory_budget_mb": DATA, "seed": DATA,
                  "alpha": PAC, "epsilon": PAC, "beta": PAC, "n_verify": PAC, "n_train": PAC, "n_clean": PAC,
                  "n_pool": PAC, "pool_delta": PAC, "pool_rho": PAC, "pool_states": PAC, "kappa": SCENARIO, "tau": SCENARIO,
                  "mu": SCENARIO, "w_bound": SCENARIO, "solver": SCENARIO, "max_probes": SEARCH,
                  "delta_start": SEARCH, "delta_hi": SEARCH, "rel_tol": SEARCH,
                  "emp_attacks": EMPIRICAL, "emp_runs": EMPIRICAL}
"""The --help group of each settings table, or of each top-level setting."""

SETTING_DEST = "setting:"
"""The argparse destination of a setting's option is this prefix and the setting's dotted key;
an option left out is absent from the namespace, so only what was given overrides the file."""


def relative_key(setting: Setting) -> str:
    """The setting's key within the SampleConfig for sampling settings, else its key."""
    return setting.key.removeprefix("sample.")


def flag_name(setting: Setting) -> str:
    """The option that sets ``setting`` (see :data:`FLAG_NAMES`)."""
    key = relative_key(setting)
    if key in FLAG_NAMES:
        return FLAG_NAMES[key]
    table = key.split(".")[0] if "." in key else ""
    prefix = {"barrier": "barrier-", "evasion": "evasion-"}.get(table, "")
    return "--" + prefix + setting.path[-1].replace("_", "-")


def option_text(value: Any) -> str:
    """A value written as it is typed on the command line: 0.0001, 64,32, inf."""
    if isinstance(value, tuple):
        return ",".join(option_text(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def option_help(setting: Setting) -> str:
    """The field's help and its default, for --help (argparse reads % as a format)."""
    default = setting.unset if setting.default is None else option_text(setting.default)
    return f"{setting.help} (default: {default})".replace("%", "%%")


NOUNS = {int: "an integer", float: "a number", str: "a string"}


def text_parser(setting: Setting) -> Callable[[str], Any]:
    """Parse an option's text as the setting's type: int, float, str, an optional one, or a
    tuple of them written comma-separated like its default (``64,32``)."""
    if setting.key in PARSERS:
        return PARSERS[setting.key]
    kind = given_type(setting.kind)
    if typing.get_origin(kind) is tuple:
        return tuple_parser(typing.get_args(kind), option_text(setting.default))
    return scalar_parser(kind)


def scalar_parser(kind: type) -> Callable[[str], Any]:
    """``kind(text)``, failing with a message argparse puts after the option's name."""
    def parse(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {NOUNS[kind]}, got {text!r}") from None

    return parse


def tuple_parser(items: tuple, example: str) -> Callable[[str], tuple]:
    """Comma-separated values of the tuple type with members ``items`` (``(int, ...)``: any number)."""
    def parse(text: str) -> tuple:
        parts = [part for part in text.split(",") if part.strip()]
        kinds = items[:1] * len(parts) if items[-1] is Ellipsis else items
        if len(kinds) != len(parts):
            raise argparse.ArgumentTypeError(f"expected {len(items)} comma-separated values like {example}, got {text!r}")
        try:
            return tuple(kind(part) for kind, part in zip(kinds, parts))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers like {example}, got {text!r}") from None

    return parse


def option_groups(p: argparse.ArgumentParser, titles: tuple) -> Dict[str, argparse._ArgumentGroup]:
    """The --help groups of ``p`` in their order."""
    return {title: p.add_argument_group(title) for title in titles}


def add_setting_options(groups: Dict[str, argparse._ArgumentGroup], config: type) -> None:
    """One option for each setting of the configuration dataclass ``config`` (CertifyConfig or
    SampleConfig), its type, default and help taken from the field."""
    for setting in settings(config):
        if setting.key in SET_BY_OTHERS:
            continue
        flag = flag_name(setting)
        groups[SECTION_GROUPS[relative_key(setting).split(".")[0]]].add_argument(
            flag, dest=SETTING_DEST + setting.key, default=argparse.SUPPRESS, type=text_parser(setting),
            metavar=flag.lstrip("-").upper().replace("-", "_"), help=option_help(setting))


def add_field_option(group: argparse._ArgumentGroup, config: type, name: str) -> None:
    """An option of a command's own (not part of its configuration) with the default and help of
    the field ``name`` of ``config``: ``sample --alpha`` and ``--seed`` mean what certify's do."""
    (setting,) = [s for s in settings(config) if s.key == name]
    group.add_argument("--" + name.replace("_", "-"), type=text_parser(setting), default=setting.default,
                       help=option_help(setting))


def add_config_file_options(groups: Dict[str, argparse._ArgumentGroup], config: type) -> None:
    """--config FILE and --dump-config for a command whose settings are ``config``."""
    g = groups[CONFIG_FILE]
    tables = "[sample], [sample.recipe], [barrier], ..." if config is CertifyConfig else "[recipe], [threat], ..."
    g.add_argument("--config", default=None, metavar="FILE",
                   help=f"read the settings from this TOML file, nested like the configuration ({tables}); a key left "
                        "out takes its default, and the options given on the command line override the file")
    g.add_argument("--dump-config", action="store_true",
                   help="print the configuration these options and --config make, as TOML that --config reads back, "
                        "and exit without doing any work")


def add_execution_options(g: argparse._ArgumentGroup) -> None:
    """--backend and --device: where and how the runs are computed (not part of the configuration)."""
    g.add_argument("--backend", default="auto",
                   help="auto (default: triton on CUDA, numba on the CPU when installed, else torch), torch (the "
                        "readable reference), numba (CPU), triton (the fused GPU kernel, IEEE float32 dot products) "
                        "or triton_tf32 (the same kernel with TF32 tensor-core dot products: faster, about 1e-3 "
                        "relative rounding per product); recorded in every result, since it defines the dynamics")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (default: cuda when available, else cpu)")


def given_settings(args: argparse.Namespace) -> Dict[str, Any]:
    """{dotted key: value} of the settings given on the command line, those that another option
    sets (:data:`SET_BY_OTHERS`) included."""
    given = {dest[len(SETTING_DEST):]: value for dest, value in vars(args).items() if dest.startswith(SETTING_DEST)}
    return {**given, **{key: given[source] for key, source in SET_BY_OTHERS.items() if source in given}}


def with_settings(table: Dict[str, Any], given: Dict[str, Any]) -> Dict[str, Any]:
    """The nested settings ``table`` with each dotted key of ``given`` set to its value."""
    for key, value in given.items():
        *tables, name = key.split(".")
        section = table
        for part in tables:
            section = section.setdefault(part, {})
        section[name] = value
    return table


def config_from_args(args: argparse.Namespace,
                     kind: Type[Union[CertifyConfig, SampleConfig]] = SampleConfig) -> Union[CertifyConfig, SampleConfig]:
    """The configuration of type ``kind`` that the --config file and the options given make, the
    options overriding the file and every setting left out taking its field's default. The two
    are checked together, so options may complete a file that is not valid on its own."""
    table = read_settings(args.config, kind) if args.config is not None else {}
    given = given_settings(args)
    try:
        return kind.from_dict(with_settings(table, given))
    except ConfigError as exc:
        if args.config is None:
            raise
        if not given:
            raise in_file(args.config, exc) from None
        raise ConfigError(exc.field, f"{exc.message} (the settings of {args.config} with the options given)") from None


def add_logging_options(g: argparse._ArgumentGroup) -> None:
    """Logging options every command takes."""
    g.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="progress and diagnostics on stderr: info (default) logs one line per stage and probe")
    g.add_argument("--log-file", default=None, help="also append the log to this file")
    g.add_argument("--quiet", action="store_true",
                   help="no progress bars, and only warnings and errors on stderr (--log-file keeps --log-level)")


def _progress(args: argparse.Namespace) -> Optional[bool]:
    return False if args.quiet else None


def cmd_sample(args: argparse.Namespace) -> int:
    from .backends import resolve, resolve_device
    from .config import check_alpha, check_count
    from .data import get_dataset
    from .engine import check_memory, clean_runs, sample
    from .rng import Purpose, trajectory_seeds
    from .io import json_bytes, write_together
    from .labels import SafetyRule, chance_hits, evasion_unsafe

    config = config_from_args(args, SampleConfig)
    if args.dump_config:
        say(dump_config(config).rstrip("\n"))
        return EXIT_OK
    evading = config.threat_kind == "evasion"
    if args.delta is None:
        raise CliError("delta: --delta is required (the budget: ||Delta||_p <= delta on poisoned training points, on "
                       "perturbed test points with --threat evasion, or the one --search-budget names with --threat both)")
    check_count(args.n, "n")
    if not isinstance(args.n_clean, int) or args.n_clean < 0:
        raise ConfigError("n_clean", f"must be an int >= 0, got {args.n_clean!r}")
    check_alpha(args.alpha)
    check_memory(config, args.n, "n")
    check_memory(config, args.n_clean, "n_clean")
    summary_path = sample_summary_path(args)
    outputs = check_outputs([("out", args.out), ("summary", summary_path)])
    refuse_to_overwrite_the_config(args, outputs)
    device = resolve_device(args.device)
    backend = resolve(args.backend, device, config.recipe.dtype, attack=config.poisoning_attack)  # once, for the clean runs too
    with OutputLocks(outputs):
        data = get_dataset(config.dataset)
        kw = dict(data=data, backend=backend, device=device, progress=_progress(args))
        runs = sample(config, args.delta, trajectory_seeds(args.seed, Purpose.SAMPLE, args.n), **kw)
        summary = {
            "n": runs.n, "delta": runs.delta, "intervals": runs.intervals, "out": outputs[0][1],
            "test_size": runs.test_size, "test_hits": _quantiles(runs.test_hits),
            "test_accuracy": _quantiles(runs.test_accuracy), "poison_fraction_mean": float(runs.poison_fraction.mean()),
            "meta": runs.meta,
        }
        chance = chance_hits(data.y_test)
        if evading:  # each run against its own clean accuracy: no clean runs needed
            unsafe = evasion_unsafe(runs.reference_hits, runs.test_hits, runs.test_size, args.alpha)
            summary.update({"alpha": args.alpha, "reference_hits": _quantiles(runs.reference_hits),
                            "n_unsafe": int(unsafe.sum()), "unsafe_fraction": float(unsafe.mean()),
                            "accuracy_drop": _quantiles((runs.reference_hits - runs.test_hits) / runs.test_size)})
        elif args.n_clean:
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
    say(f"{runs.n} trajectories at delta={runs.delta:g}: median {'attacked ' if config.threat_kind != 'poisoning' else ''}test accuracy "
        f"{np.median(runs.test_accuracy):.4f}, "
        f"{summary['meta']['timings']['trajectory_steps_per_s']:.0f} trajectory-steps/s")
    if evading:
        say(f"evasion ({config.evasion.attack}, rho' = {config.evasion.rho:g}): unsafe (G' = own clean − attacked accuracy "
            f"> {args.alpha:g}, exact on hit counts): {summary['n_unsafe']} of {runs.n} ({summary['unsafe_fraction']:.1%})")
    elif args.n_clean:
        say(f"g_c = {summary['g_clean']:.4f}; unsafe (G > {args.alpha:g}, exact on hit counts): "
            f"{summary['n_unsafe']} of {runs.n} ({summary['unsafe_fraction']:.1%})")
    say(f"wrote {args.out} and {summary_path}")
    return EXIT_OK


def cmd_attack(args: argparse.Namespace) -> int:
    from .empirical import attack_strength, strength_table
    from .io import json_bytes, write_together

    if f"{SETTING_DEST}sample.attack.kind" in vars(args) or f"{SETTING_DEST}attack.kind" in vars(args):
        raise CliError("attack: this command runs every attack of --attacks; leave --attack out")
    config = config_from_args(args, SampleConfig)
    if args.dump_config:
        say(dump_config(config).rstrip("\n"))
        return EXIT_OK
    attacks = [name.strip() for name in args.attacks.split(",") if name.strip()]
    deltas = _numbers(args.deltas, "deltas")
    from .figures import strength_figure

    outputs = check_outputs([("out", args.out)] + ([("plot", args.plot)] if args.plot is not None else []))
    refuse_to_overwrite_the_config(args, outputs)
    if args.plot is not None:  # refused before the runs when matplotlib is missing
        figure_files(None, None, check_only=True)
    with OutputLocks(outputs):
        result = attack_strength(config, attacks, deltas, args.n, args.n_clean, args.alpha, args.seed, args.backend,
                                 args.device, _progress(args))
        files = [(outputs[0][1], lambda fh: fh.write(json_bytes(result)))]
        files += figure_files(strength_figure(result), outputs[1][1] if args.plot is not None else None)
        write_together(files)
    say(strength_table(result))
    say(f"wrote {args.out}" + (f" and {args.plot}" if args.plot is not None else ""))
    return EXIT_OK


def _numbers(text: str, field_name: str) -> List[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(field_name, f"expected comma-separated numbers like 0.05,0.1, got {text!r}") from None


def sample_summary_path(args: argparse.Namespace) -> str:
    """``sample``'s JSON summary: --summary, else OUT with .json."""
    return args.summary if args.summary is not None else os.path.splitext(args.out)[0] + ".json"


def command_files(args: argparse.Namespace) -> List[tuple]:
    """[(option, path)] of the files a command reads or writes, which --log-file must not be."""
    config = [("config", args.config)] if getattr(args, "config", None) else []
    if args.command == "sample":
        return [("out", args.out), ("summary", sample_summary_path(args)), *config]
    if args.command == "certify":
        return ([("out", args.out)] if args.out else []) + config
    return [("certificate", args.certificate)]


def refuse_to_overwrite_the_config(args: argparse.Namespace, outputs: List[tuple]) -> None:
    """An output that is the --config file would replace the settings it was made with: refused."""
    if args.config is None or not os.path.exists(args.config):
        return
    for option, path in outputs:
        if os.path.exists(path) and os.path.samefile(path, args.config):
            raise CliError(f"{option}: {path} is the same file as config; each file needs its own path")


def certify_config_from_args(args: argparse.Namespace) -> CertifyConfig:
    """The certification --config and the options make, refused before any work when its
    n_verify cannot reach its epsilon (:func:`barrierkit.pac.check_verify_runs`)."""
    from .pac import check_verify_runs

    config = config_from_args(args, CertifyConfig)
    if args.emp and config.emp_attacks is None:  # --emp-attacks or the file's list, when given, says which
        config = dataclasses.replace(config, emp_attacks=STRONG_EVASION if config.sample.searches_evasion else EMP_ATTACKS)
    try:
        check_verify_runs(config)
    except ConfigError as exc:
        if args.config is None:
            raise
        raise in_file(args.config, exc) from None
    return config


def cmd_certify(args: argparse.Namespace) -> int:
    from .api import certify
    from .report import profile_table

    config = certify_config_from_args(args)
    if args.dump_config:
        say(dump_config(config).rstrip("\n"))
        return EXIT_OK
    if config.delta_hi is not None and config.delta_start != CertifyConfig.delta_start:
        log.warning("--delta-start %g is not used: with --delta-hi the search probes %g first and bisects below it",
                    config.delta_start, config.delta_hi)
    outputs = check_outputs([("out", args.out)]) if args.out is not None else []
    refuse_to_overwrite_the_config(args, outputs)
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


def figure_files(figure: Any, plot: Optional[str], page: Optional[Callable[[Optional[bytes], str], str]] = None,
                 html_path: Optional[str] = None, check_only: bool = False) -> List[Tuple[str, Any]]:
    """(path, writer) for --plot (a PNG of ``figure``) and --html (``page(png, why_no_png)``).
    --plot without matplotlib is a CliError (``check_only``: that check alone, before any work);
    the HTML page then says the plot is missing and why."""
    from .figures import PlotUnavailable, png_bytes, require_matplotlib

    if check_only:
        try:
            require_matplotlib()
        except PlotUnavailable as exc:
            raise CliError(f"plot: {exc}") from None
        return []
    if plot is None and html_path is None:
        return []
    try:
        png, missing = png_bytes(figure), ""
    except PlotUnavailable as exc:
        if plot is not None:
            raise CliError(f"plot: {exc}") from None
        png, missing = None, str(exc)
    files: List[Tuple[str, Any]] = []
    if plot is not None:
        files.append((plot, lambda fh: fh.write(png)))
    if html_path is not None:
        text = page(png, missing).encode("utf-8")
        files.append((html_path, lambda fh: fh.write(text)))
    return files


def cmd_report(args: argparse.Namespace) -> int:
    from .figures import certificate_figure
    from .html_report import certificate_html
    from .io import write_together

    wanted = [(option, path) for option, path in (("plot", args.plot), ("html", args.html)) if path is not None]
    outputs = dict(check_outputs(wanted, keep_apart=[("certificate", os.path.realpath(args.certificate))]))
    cert = _load_checked(args.certificate)
    files = figure_files(certificate_figure(cert.doc), outputs.get("plot"), lambda png, why: certificate_html(cert.doc, png, why),
                         outputs.get("html"))
    write_together(files)
    say(cert.summary())
    for option, path in wanted:
        say(f"wrote {path} (--{option})")
    return EXIT_OK


def _quantiles(x: np.ndarray) -> dict:
    q = np.quantile(x, [0.0, 0.05, 0.5, 0.95, 1.0])
    return {"min": float(q[0]), "q05": float(q[1]), "median": float(q[2]), "q95": float(q[3]), "max": float(q[4]), "mean": float(np.mean(x))}


def sampling_groups(p: argparse.ArgumentParser, own: str) -> Dict[str, argparse._ArgumentGroup]:
    """The option groups of a command that samples runs of a SampleConfig (sample, attack): its
    ``own`` group first (with --alpha, meaning what certify's does), then the configuration file,
    every sampling setting, --seed, --backend and --device; logging options are the caller's."""
    groups = option_groups(p, (own,) + tuple(t for t in GROUP_ORDER if t in (CONFIG_FILE, DATA, RECIPE, THREAT, EVASION, FEATURES, LOGGING)))
    add_field_option(groups[own], CertifyConfig, "alpha")
    add_field_option(groups[DATA], CertifyConfig, "seed")
    add_config_file_options(groups, SampleConfig)
    add_setting_options(groups, SampleConfig)
    add_execution_options(groups[DATA])
    return groups


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="barrierkit", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXIT_CODES,
        description=textwrap.fill("Certify how much data poisoning (and test-time evasion) a training recipe can "
                                  "take, with barrier certificates. A certificate is relative to its attack: it "
                                  "covers only the perturbations that attack draws (see 'barrierkit certify "
                                  "--help').", width=79),
    )
    parser.add_argument("--version", action="version", version=f"barrierkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, description: str, **kw) -> argparse.ArgumentParser:
        return sub.add_parser(name, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXIT_CODES,
                              description=textwrap.fill(description, width=79), **kw)

    many_options = "%(prog)s [options]  (the options are listed below, by group)"

    p = command("sample", help="sample N (poisoned) training runs and record their trajectories", usage=many_options,
                description="Run N training runs poisoned at budget --delta and record their features "
                            "(a .npz Trajectories file) and a JSON summary. Both files are written together "
                            "at the end: a failure leaves earlier files as they were. --config reads the "
                            "settings of the runs (a SampleConfig) from a TOML file; --n, --delta, --n-clean, "
                            "--alpha and --seed are options of this command only.")
    groups = sampling_groups(p, "runs to sample")
    g = groups["runs to sample"]
    g.add_argument("--n", type=int, default=1000, help="number of trajectories (default: 1000)")
    g.add_argument("--delta", type=float, default=None, help="poisoning budget: ||Delta||_p <= delta (required)")
    g.add_argument("--n-clean", type=int, default=0, help="also run N_c clean runs for g_c and the unsafe fraction (default: 0)")
    g = groups[LOGGING]
    g.add_argument("--out", default="trajectories.npz", help="Trajectories file to write (default: trajectories.npz)")
    g.add_argument("--summary", default=None, help="JSON summary path (default: OUT with .json; must differ from OUT)")
    add_logging_options(g)
    p.set_defaults(func=cmd_sample)

    p = command("attack", help="measure how strong sampling attacks are: unsafe fractions per budget, δ_emp",
                usage=many_options,
                description="For each attack of --attacks and each budget of --deltas, train --n runs (the same "
                            "seeds in every cell) and count those that end unsafe against g_c from --n-clean clean "
                            "runs, exactly as certify labels runs; print the counts with 95% Clopper-Pearson "
                            "intervals and each attack's empirical radius δ_emp (the smallest budget with an unsafe "
                            "run), and write them as JSON to --out. Set a certificate's δ_cert beside the strongest "
                            "attack's δ_emp: the certificate covers only its own sampling attack.")
    groups = sampling_groups(p, "attacks and budgets")
    g = groups["attacks and budgets"]
    g.add_argument("--attacks", default="gradient,unrolled,unrolled_test",
                   help="comma-separated sampling attacks to measure (default: gradient,unrolled,unrolled_test)")
    g.add_argument("--deltas", default="0.05,0.075,0.1", help="comma-separated budgets (default: 0.05,0.075,0.1)")
    g.add_argument("--n", type=int, default=300, help="runs per attack and budget (default: 300)")
    g.add_argument("--n-clean", type=int, default=200, help="clean runs behind g_c (default: 200)")
    g = groups[LOGGING]
    g.add_argument("--out", default="attack-strength.json", help="JSON results to write (default: attack-strength.json)")
    g.add_argument("--plot", default=None, metavar="PNG",
                   help="also write the unsafe fraction against δ per attack as a PNG (needs matplotlib: "
                        "pip install 'barrierkit[plot]')")
    add_logging_options(g)
    p.set_defaults(func=cmd_attack)

    p = command("certify", help="search the largest certified budget (poisoning δ or test-time δ′) and write a "
                                "Certificate", usage=many_options,
                description="Bisect over the budget delta (the poisoning budget; with --threat evasion the test-time "
                            "budget δ′; with --threat both the one --search-budget names, the other fixed at "
                            "--fixed-budget); at each probe sample fresh runs, fit a "
                            "neural barrier certificate on a training split and verify it with a scenario "
                            "convex program on a verification split (PAC: confidence 1 - beta, violation "
                            "level epsilon). Prints the report; writes the JSON certificate to --out. The "
                            "result holds only for the named attack (--attack; --evasion-attack for δ′). Every setting of "
                            "the certification has an option below and a key in a --config file.")
    groups = option_groups(p, GROUP_ORDER)
    add_config_file_options(groups, CertifyConfig)
    add_setting_options(groups, CertifyConfig)
    add_execution_options(groups[DATA])
    groups[EMPIRICAL].add_argument(
        "--emp", action="store_true",
        help=f"measure δ_emp of {', '.join(EMP_ATTACKS)} (the strongest built-in attacks) and of the sampling attack at "
             "every probed budget, and report them beside δ_cert: the same as --emp-attacks " + ",".join(EMP_ATTACKS)
             + " (on the default recipe this adds about one certification's time); when the search runs over the "
             "test-time budget δ′, the same as --emp-attacks " + ",".join(STRONG_EVASION))
    g = groups[LOGGING]
    g.add_argument("--out", default=None, help="write the JSON certificate here (owner-only permissions; locked while "
                                               "this run works toward it; default: nothing is saved)")
    g.add_argument("--profile", action="store_true",
                   help="after the report, print where the time went, stage by stage (seconds, share, trajectory-steps/s)")
    add_logging_options(g)
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
    add_logging_options(p.add_argument_group(LOGGING))
    p.set_defaults(func=cmd_verify)

    p = command("report", help="print the plain-text report of a saved certificate",
                description="Print the report of a saved certificate: the guarantee in one sentence, the "
                            "sampling attack, the radii, every probe, the radius in context, warnings and what "
                            "the certificate does not mean. The document is checked as 'verify' checks it "
                            "first; a document that fails is refused the same way.")
    p.add_argument("certificate", help="certificate JSON")
    g = p.add_argument_group("files (each written only when the certificate checks)")
    g.add_argument("--plot", default=None, metavar="PNG",
                   help="write the unsafe fraction against δ per attack (95%% Clopper–Pearson bars; δ_cert, δ_direct and "
                        "ε marked) as a PNG: the certify --emp cells, else the probes' verification runs "
                        "(needs matplotlib: pip install 'barrierkit[plot]')")
    g.add_argument("--html", default=None, metavar="HTML",
                   help="write one self-contained HTML page: the plot (embedded), its table of unsafe counts and the "
                        "report (without matplotlib, the page says the plot is missing)")
    add_logging_options(p.add_argument_group(LOGGING))
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
