"""The ``unrolled`` sampling attacks: one perturbation per training point, optimised through training.

The attacker runs the recipe itself: ``UNROLLS`` training runs at once (their own init, batch
order and Bernoulli(rho) subset, or the chosen points under the ``chosen`` subset rule; seeds from :attr:`barrierkit.rng.Purpose.UNROLLED` of
``attack.reference_seed``), differentiates the final models' mean cross-entropy on the objective
data through every SGD step (autograd through the reference's closed-form step), and moves the
perturbation table Delta [n, D] by projected sign-gradient ascent: ``ITERATIONS`` rounds of
Delta <- P(Delta + STEP_FRACTION * delta * s), s = sign(grad) (l_inf) or grad / ||grad||_2 per
point (l_2), where P projects every row into the l_p ball of radius delta and the domain. The
table is made once per budget and then sampled like the ``gradient`` attack's (a random subset
per trajectory, the same table for every run), so every backend trains under it.

- ``unrolled`` sees the training split only: its objective is the loss on the clean training set.
- ``unrolled_test`` is a test-aware attacker: its objective is the loss on the test set, the data
  the safety label is measured on (a stronger attacker than one who cannot see it).

Cost: ITERATIONS rounds of UNROLLS runs of T steps with a backward pass through them, about
ITERATIONS * UNROLLS * 3 trained runs' work (float64, on the CPU), made once per budget.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np
import torch

from .attacks import chosen_subset, unit_directions
from .config import SampleConfig
from .data import Dataset
from .models import MLPShape, Params, forward, init_params
from .poison import TABLE_ATTACKS, subset_mask
from .rng import Purpose, derive_seeds
from .schedule import Schedule

UNROLLED_ATTACKS = tuple(kind for kind in TABLE_ATTACKS if kind != "gradient")
ITERATIONS = 8
UNROLLS = 4
STEP_FRACTION = 0.25
_CACHE: Dict[Tuple, np.ndarray] = {}


def _train(params: Params, x: torch.Tensor, y: torch.Tensor, schedule: Schedule, config: SampleConfig) -> Params:
    """The recipe's SGD (torch.optim.SGD semantics, as the reference), written without in-place
    updates so that autograd follows every step back to the poisoned inputs ``x`` [U, n, D]."""
    from .backends.torch_ref import mlp_gradients  # the reference's closed-form step, differentiable

    recipe = config.recipe
    runs = torch.arange(x.shape[0]).view(-1, 1)
    buffers = None
    for t in range(recipe.steps):
        idx = schedule.indices(t)
        grads = mlp_gradients(params, x[runs, idx], y[idx])
        if recipe.weight_decay:
            grads = [g + recipe.weight_decay * p for g, p in zip(grads, params)]
        if recipe.momentum:
            buffers = grads if buffers is None else [recipe.momentum * b + g for b, g in zip(buffers, grads)]
            grads = buffers
        params = [p - recipe.lr * g for p, g in zip(params, grads)]
    return params


def _objective(params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits, _ = forward(params, x)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.repeat(logits.shape[0]))


def _project(delta_table: torch.Tensor, x: torch.Tensor, budget: float, norm: str, domain: Tuple[float, float]) -> torch.Tensor:
    """Every row so that x + row stays in the domain, then into the l_p ball of radius ``budget``
    (last, so that the rounding of x + row - x cannot take a row out of the budget; shrinking a row
    towards 0 keeps x + row between x and the domain point)."""
    delta_table = (x + delta_table).clamp(*domain) - x
    if norm == "inf":
        return delta_table.clamp(-budget, budget)
    length = torch.linalg.vector_norm(delta_table, dim=1, keepdim=True)
    # scaled to a hair inside the ball, so that the rounding of the scaling cannot leave it
    return delta_table * torch.clamp(budget * (1.0 - 2.0**-40) / torch.where(length > 0, length, 1.0), max=1.0)


def attacker_subsets(config: SampleConfig, subset_seeds: torch.Tensor, n: int,
                     chosen: Optional[torch.Tensor]) -> torch.Tensor:
    """Bool [U, n]: which points each attacker run poisons, by the threat's subset rule (the
    Bernoulli(rho) subset of its seed, or the chosen points in every run)."""
    if config.threat.subset == "chosen":
        if chosen is None:
            raise ValueError("subset: the chosen subset rule needs its points (barrierkit.attacks.chosen_subset)")
        return chosen.view(1, -1).expand(len(subset_seeds), -1)
    return subset_mask(subset_seeds, torch.arange(n).view(1, -1).expand(len(subset_seeds), -1), config.threat.rho)


def ascent_gradient(config: SampleConfig, shape: MLPShape, x: torch.Tensor, y: torch.Tensor, x_obj: torch.Tensor,
                    y_obj: torch.Tensor, table: torch.Tensor, seeds: np.ndarray,
                    chosen: Optional[torch.Tensor] = None) -> torch.Tensor:
    """d objective / d table [n, D]: the attacker's runs with ``seeds`` [U, 3] (init, subset,
    schedule) train on x poisoned by ``table`` where their subsets say (the chosen points, when
    ``chosen`` is given), all U at once, and the objective is the final models' mean cross-entropy
    on (x_obj, y_obj), averaged over the runs."""
    s = torch.as_tensor(seeds)
    n = x.shape[0]
    mask = attacker_subsets(config, s[:, 1], n, chosen).unsqueeze(-1)
    table = table.detach().requires_grad_(True)
    poisoned = torch.where(mask, (x + table).clamp(*config.threat.domain), x)
    params = _train(init_params(shape, seeds[:, 0], dtype=torch.float64), poisoned, y,
                    Schedule(s[:, 2], n, config.recipe.batch), config)
    (grad,) = torch.autograd.grad(_objective(params, x_obj, y_obj), table)
    return grad


def unrolled_table(config: SampleConfig, data: Dataset, budget: float) -> np.ndarray:
    """The optimised perturbation table [n_train, D] float64 (every row in the budget's l_p ball,
    x + row in the domain) for ``config.attack.kind`` in :data:`UNROLLED_ATTACKS`; cached per setting."""
    kind, threat = config.attack.kind, config.threat
    if kind not in UNROLLED_ATTACKS:
        raise ValueError(f"attack: {kind!r} is not an unrolled attack")
    key = (data.content_hash, config.model, config.recipe, threat, config.attack, float(budget))
    if key in _CACHE:
        return _CACHE[key]
    x = torch.as_tensor(data.x_train, dtype=torch.float64)
    y = torch.as_tensor(data.y_train)
    x_obj, y_obj = (x, y) if kind == "unrolled" else (torch.as_tensor(data.x_test, dtype=torch.float64), torch.as_tensor(data.y_test))
    shape = MLPShape.from_spec(config.model, data.input_dim, data.n_classes)
    chosen = torch.as_tensor(chosen_subset(config, data)) if threat.subset == "chosen" else None
    table = torch.zeros_like(x)
    step = STEP_FRACTION * budget
    for it in range(ITERATIONS):
        seeds = np.stack([derive_seeds(config.attack.reference_seed, 3 * Purpose.UNROLLED + j, it * UNROLLS, UNROLLS)
                          for j in range(3)], axis=1).astype(np.int64)
        grad = ascent_gradient(config, shape, x, y, x_obj, y_obj, table, seeds, chosen)
        table = _project(table + step * unit_directions(grad, threat.norm), x, budget, threat.norm, threat.domain)
    result = table.detach().numpy()
    if not np.isfinite(result).all():
        raise FloatingPointError("attack: the unrolled optimisation diverged (non-finite perturbations); lower the learning rate")
    _CACHE[key] = result
    return result


def table_directions(config: SampleConfig, data: Dataset, budget: float) -> np.ndarray:
    """The table as the gradient attack's direction table: Delta / delta, so that the engine's
    delta * direction is Delta (every backend's table path then trains under it)."""
    return unrolled_table(config, data, budget) / budget


__all__ = ["UNROLLED_ATTACKS", "unrolled_table", "table_directions", "ITERATIONS", "UNROLLS", "STEP_FRACTION"]
