"""The trajectory engine: N (possibly poisoned) training runs at once, recorded every r steps.

``sample(config, delta, seeds)`` runs T steps of minibatch SGD for every trajectory (rows of
``seeds``: init, poison and schedule seed), records the features phi at steps 0, r, 2r, ..., T
and the terminal test accuracy. N is processed in chunks sized from a memory budget; the chunk
size never changes a result because every random draw is keyed by a trajectory's own seeds.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from typing import Callable, List, Optional

import numpy as np
import torch

from .environment import physical_memory_bytes, versions
from .attacks import RUN_AWARE_DIRECTIONS, chosen_subset, gradient_directions
from .unrolled import UNROLLED_ATTACKS, table_directions
from .backends import Backend, StepProblem, TrainState, resolve, torch_dtype
from .config import SEED_LIMIT, ConfigError, SampleConfig, check_delta
from .data import Dataset, get_dataset
from .evasion import check_in_domain, evaluate
from .features import RobustnessFeature, feature_names
from .labels import hits_from_accuracy, name_runs
from .models import MLPShape, flatten, init_params
from .rng import Purpose, trajectory_seeds
from .trajectories import SEED_COLUMNS, Trajectories

DIVERGING_DRIFT = 1e6  # ||theta - theta(0)|| beyond this is an exploding run (initial ||theta|| is O(10))
log = logging.getLogger("barrierkit")


def bytes_per_trajectory(config: SampleConfig, data: Dataset) -> int:
    """A generous estimate of the working memory one trajectory needs during training."""
    shape = MLPShape.from_spec(config.model, data.input_dim, data.n_classes)
    item = torch_dtype(config.recipe.dtype).itemsize
    d = shape.param_count
    b = config.recipe.batch
    activations = b * sum(shape.widths) * item * 4
    poison_tmp = b * data.input_dim * 8 * 12  # float64 rows, int64 Philox words and masks
    # evaluation sets are shared by all trajectories: only the layers after the input are per run
    evaluation = max(config.features.probe_size, data.x_test.shape[0]) * sum(shape.widths[1:]) * 8 * 3
    run_aware = 0
    if config.attack.kind == "adaptive":  # each run's directions, input gradients and activations on all points
        run_aware = data.x_train.shape[0] * (data.input_dim * 8 * 3 + sum(shape.widths[1:]) * 8 * 3)
    elif config.attack.kind == "lookahead":  # a per-run copy of the inputs and a double-backward graph over them
        run_aware = data.x_train.shape[0] * (data.input_dim * 8 * 6 + sum(shape.widths[1:]) * 8 * 10)
    attacked_test = 0
    if config.threat_kind != "poisoning":  # each run's test points at stake, gathered for the test-time attack
        attacked_test = data.x_test.shape[0] * (data.input_dim * 8 + 4 * 8)
    return d * (item * 4 + 8 * 2) + activations + poison_tmp + evaluation + run_aware + attacked_test


CPU_MEMORY_BUDGET_MB = 2048.0


def memory_budget_mb(config: SampleConfig, device: torch.device | str = "cpu") -> float:
    """The chunk budget: the config's, else 2048 MB on the CPU and half the free memory of a CUDA
    device (large chunks keep every SM busy; results do not depend on the chunking)."""
    if config.memory_budget_mb is not None:
        return float(config.memory_budget_mb)
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        # blocks torch's allocator holds but does not use are free for the next chunk too, so the
        # budget does not shrink with every earlier sample() call of a certification
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return (free + cached) / 2**20 / 2
    return CPU_MEMORY_BUDGET_MB


def result_bytes(config: SampleConfig, n: int) -> int:
    """Memory the recorded results of ``n`` runs hold at once: features [n, K+1, k] float64 plus
    seeds, hit counts and poison fractions (the chunked training state comes on top)."""
    return int(n) * ((config.recipe.intervals + 1) * config.feature_dim * 8 + 6 * 8)


def check_memory(config: SampleConfig, n: int, field_name: str = "n") -> None:
    """Refuse, before any work, a number of runs whose recorded results alone exceed the
    machine's memory (a ConfigError naming ``field_name`` instead of a MemoryError later)."""
    need, have = result_bytes(config, n), physical_memory_bytes()
    if have is not None and need > have:
        raise ConfigError(field_name, f"{n} runs need {need / 2**30:,.1f} GiB for their recorded features alone; "
                                      f"this machine has {have / 2**30:,.1f} GiB")


def chunk_size(config: SampleConfig, data: Dataset, n: int, device: torch.device | str = "cpu") -> int:
    """Trajectories per chunk so that one chunk fits the memory budget."""
    per = bytes_per_trajectory(config, data)
    return max(1, min(n, int(memory_budget_mb(config, device) * 2**20 // per)))


def _validate_seeds(seeds: np.ndarray) -> np.ndarray:
    seeds = np.asarray(seeds)
    if seeds.ndim != 2 or seeds.shape[1] != 3 or seeds.shape[0] < 1:
        raise ConfigError("seeds", f"must be an [N, 3] array (init, poison, schedule) with N >= 1, got shape {seeds.shape}")
    if not np.issubdtype(seeds.dtype, np.integer) or seeds.min() < 0 or int(seeds.max()) >= SEED_LIMIT:
        raise ConfigError("seeds", "must be integers in [0, 2**63)")
    return seeds.astype(np.int64)


def sample(
    config: SampleConfig,
    delta: float,
    seeds: np.ndarray,
    *,
    data: Optional[Dataset] = None,
    backend: str | Backend = "torch",
    device: str | torch.device = "cpu",
    chunk: Optional[int] = None,
    progress: Optional[bool] = None,
    description: str = "sampling",
    terminal: Optional[Callable[[int, int, List[torch.Tensor]], None]] = None,
) -> Trajectories:
    """Run one training trajectory per row of ``seeds`` at budget ``delta``; record phi and g.

    ``delta`` is the searched budget; :meth:`SampleConfig.budgets` says which budget it is. Under
    ``threat_kind = "evasion"`` training is clean and ``delta`` is the test-time budget δ' of
    ``config.evasion``; under ``both`` training is poisoned and the test set attacked, one of the
    two budgets fixed. When the test set is attacked, ``test_hits`` counts the attacked test set,
    ``reference_hits`` each run's own clean count (both float64,
    :func:`barrierkit.evasion.evaluate`) and φ has the robustness entry
    (:class:`barrierkit.features.RobustnessFeature`).

    ``backend`` is a record from :func:`barrierkit.backends.resolve` or a name resolved here
    (default: the torch reference on the CPU, the engine's slow readable path; ``certify`` and
    ``replay`` default to ``auto``); the steps it handed to the torch reference are listed in the
    result's ``meta["fallbacks"]``. ``terminal(lo, hi, params)``, when given, is called once per
    chunk with the trained parameters of runs lo..hi-1 (measurements that need theta(T) itself,
    such as the test-time attacks of :mod:`barrierkit.evasion`); it must not modify them."""
    delta = check_delta(delta)
    seeds = _validate_seeds(seeds)
    check_memory(config, seeds.shape[0])
    data = data if data is not None else get_dataset(config.dataset)
    if config.recipe.batch > data.x_train.shape[0]:
        raise ConfigError("batch", f"must be <= the number of training points ({data.x_train.shape[0]})")
    device = torch.device(device)
    backend = resolve(backend, device, config.recipe.dtype, attack=config.poisoning_attack)
    n = seeds.shape[0]
    recipe = config.recipe
    dtype = torch_dtype(recipe.dtype)
    shape = MLPShape.from_spec(config.model, data.input_dim, data.n_classes)
    train_delta, test_delta = config.budgets(delta)
    evading = test_delta is not None  # the trained models' test points are attacked at test_delta
    if evading:  # before any training
        check_in_domain(data.x_test, config.threat.domain)
    poisoning = train_delta > 0 and config.threat.rho > 0
    directions = None
    t_start = time.perf_counter()
    aim = RUN_AWARE_DIRECTIONS.get(config.attack.kind) if poisoning else None
    if poisoning and config.attack.kind == "gradient":
        directions = torch.as_tensor(gradient_directions(config, data), device=device)
    elif poisoning and config.attack.kind in UNROLLED_ATTACKS:
        directions = torch.as_tensor(table_directions(config, data, train_delta), device=device)
    chosen = (torch.as_tensor(chosen_subset(config, data), device=device)
              if poisoning and config.threat.subset == "chosen" else None)
    t_reference = time.perf_counter() - t_start

    x_train = torch.as_tensor(data.x_train, dtype=torch.float64, device=device)
    y_train = torch.as_tensor(data.y_train, device=device)
    x_test = torch.as_tensor(data.x_test, dtype=torch.float64, device=device)
    y_test = torch.as_tensor(data.y_test, device=device)
    fmap = backend.feature_map(config.features, shape, data, device=device)
    if evading:
        fmap = RobustnessFeature(fmap, config.features, data, config.evasion, test_delta, config.threat.domain, device)
    K, r = recipe.intervals, recipe.record_every
    features = np.empty((n, K + 1, fmap.dim), dtype=np.float64)
    test_acc = np.empty(n, dtype=np.float64)
    evasion_hits = np.empty((2, n), dtype=np.int64) if evading else None  # own clean, attacked
    fraction = np.zeros(n, dtype=np.float64)
    size = chunk or chunk_size(config, data, n, device)
    timings = {"reference_s": t_reference, "train_s": 0.0, "features_s": 0.0, "eval_s": 0.0}
    fallbacks: set = set()

    show = sys.stderr.isatty() if progress is None else progress
    from tqdm.auto import tqdm

    bar = tqdm(total=n * recipe.steps, unit="step", unit_scale=True, desc=description, disable=not show, delay=1.0, leave=False)
    try:
        for lo in range(0, n, size):
            hi = min(n, lo + size)
            s = torch.as_tensor(seeds[lo:hi], device=device)
            tic = time.perf_counter()
            params = init_params(shape, seeds[lo:hi, 0], dtype=dtype, device=device)
            theta0 = flatten(params).to(torch.float64)
            features[lo:hi, 0] = fmap(params, theta0).cpu().numpy()
            timings["features_s"] += time.perf_counter() - tic
            problem = StepProblem.from_config(config, x_train, y_train, s, train_delta, directions, chosen)
            if config.threat_kind != "evasion":  # an evasion run poisons no training point
                fraction[lo:hi] = problem.poison.point_mask.to(torch.float64).mean(dim=1).cpu().numpy()
            state = TrainState(params)
            for k in range(1, K + 1):
                tic = time.perf_counter()
                if aim is not None:  # the attacker re-aims every point at the run's current model (counted as training)
                    problem.poison.directions = aim(state.params, x_train, y_train, config.threat.norm)
                reason = backend.train_segment(state, problem, (k - 1) * r, k * r)
                if reason is not None:
                    fallbacks.add(reason)
                tac = time.perf_counter()
                features[lo:hi, k] = fmap(state.params, theta0).cpu().numpy()
                timings["train_s"] += tac - tic
                timings["features_s"] += time.perf_counter() - tac
                bar.update((hi - lo) * r)
            tic = time.perf_counter()
            if evading:  # the runs' own clean and attacked counts, float64 (barrierkit.evasion)
                counts = evaluate(state.params, x_test, y_test, s[:, 1], config.evasion, test_delta, config.threat.domain)
                evasion_hits[:, lo:hi] = torch.stack(counts).cpu().numpy()
            else:
                test_acc[lo:hi] = fmap.accuracy(state.params, x_test, y_test).cpu().numpy()
            timings["eval_s"] += time.perf_counter() - tic
            if terminal is not None:
                terminal(lo, hi, state.params)
    finally:
        bar.close()
    timings["total_s"] = time.perf_counter() - t_start
    timings["trajectory_steps_per_s"] = n * recipe.steps / max(timings["train_s"] + timings["features_s"], 1e-12)
    bad = np.flatnonzero(~np.isfinite(features).all(axis=(1, 2)))
    if bad.size:
        raise FloatingPointError(f"runs {name_runs(bad)} of {n} diverged (non-finite features); lower the learning rate")
    test_hits = evasion_hits[1] if evading else hits_from_accuracy(test_acc, int(data.x_test.shape[0]))
    drift = float(features[:, :, config.features.dim - 1].max())  # ||theta - theta(0)||, the last base entry
    if drift > DIVERGING_DRIFT:
        log.warning("training diverges: parameters moved up to %.3g from their initial values (||theta - theta(0)||); "
                    "the results describe an exploding recipe: lower the learning rate", drift)
    meta = {
        "config": config.to_dict(), "delta": delta, "budgets": {"poisoning": train_delta, "evasion": test_delta}, "backend": backend.name, "backend_meta": backend.describe(),
        "fallbacks": sorted(fallbacks), "features_by": fmap.name,
        "device": str(device),
        "dtype": recipe.dtype, "dataset": data.name, "data_hash": data.content_hash, "model_hash": shape.spec_hash,
        "param_count": shape.param_count, "feature_names": feature_names(config.features, evading), "seed_columns": list(SEED_COLUMNS),
        "chunk": size, "timings": timings, "versions": versions(),
    }
    meta = json.loads(json.dumps(meta))  # exactly what a saved file loads back (lists, not tuples)
    return Trajectories(features, test_hits, int(data.x_test.shape[0]), seeds, fraction, delta, meta,
                        reference_hits=evasion_hits[0] if evading else None)


def clean_runs(config: SampleConfig, n_clean: int, master_seed: int, **kwargs) -> Trajectories:
    """``n_clean`` clean runs: the recipe with no poisoned training point and no attacked test
    point, whatever the threat kind. Their median test hit count defines g_c
    (:meth:`barrierkit.labels.SafetyRule.from_clean_hits`), so under ``both`` G counts the damage
    of the two attacks together."""
    clean = dataclasses.replace(config, threat_kind="poisoning", search_budget="poisoning", fixed_budget=None)
    return sample(clean, 0.0, trajectory_seeds(master_seed, Purpose.CLEAN, n_clean), description="clean runs", **kwargs)


__all__ = ["sample", "clean_runs", "trajectory_seeds", "chunk_size", "bytes_per_trajectory", "memory_budget_mb"]
