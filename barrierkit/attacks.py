"""What a model tells an attacker: a clean reference model's input gradients (the ``gradient``
attack's directions) and lowest margins (the ``chosen`` subset rule's points), and each run's own
current model's (the run-aware ``adaptive`` and ``lookahead`` attacks' directions).

The reference model is one clean training run of the same model and recipe (float64, seeds
derived from ``reference_seed``). For each training point i the direction is the gradient of
its own cross-entropy loss with respect to the input, the locally error-maximising direction:
sign(g_i) for l_inf and g_i / ||g_i||_2 for l_2 (zero where the gradient vanishes).

The chosen subset is the K = ⌈ρ·n⌉ training points of lowest margin z_y − max_{j≠y} z_j under
the same reference model (ties by index): the points nearest to being misclassified, which a
poison moves across the boundary most cheaply.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, Tuple

import numpy as np
import torch

from .config import SampleConfig
from .data import Dataset
from .models import MLPShape, forward, init_params
from .rng import Purpose, derive_seeds

_CACHE: Dict[Tuple, np.ndarray] = {}
_CHOSEN: Dict[Tuple, np.ndarray] = {}


def train_reference(config: SampleConfig, data: Dataset):
    """Parameters of the clean reference model: the recipe in float64 without poison, on the
    torch reference, one model stacked as N = 1 (its init and schedule seeds come from
    :attr:`Purpose.REFERENCE` of ``attack.reference_seed``)."""
    from .backends.base import StepProblem, TrainState
    from .backends.torch_ref import train_segment

    clean = dataclasses.replace(config, recipe=dataclasses.replace(config.recipe, dtype="float64"),
                                threat=dataclasses.replace(config.threat, rho=0.0, subset="random"))
    shape = MLPShape.from_spec(config.model, data.input_dim, data.n_classes)
    init, schedule = derive_seeds(config.attack.reference_seed, Purpose.REFERENCE, 0, 2).astype(np.int64)
    params = init_params(shape, np.array([init]), dtype=torch.float64)
    seeds = torch.tensor([[init, schedule, schedule]])  # the poison seed is never read: rho = 0
    problem = StepProblem.from_config(clean, torch.as_tensor(data.x_train, dtype=torch.float64),
                                      torch.as_tensor(data.y_train), seeds, delta=0.0)
    state = TrainState(params)
    train_segment(state, problem, 0, config.recipe.steps)
    return state.params


def input_gradients(params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d loss_i / d x_i of every point under each of N stacked models, [N, n, D] (closed form, in
    the parameters' dtype; x [n, D] shared, y [n] integer labels)."""
    logits, cache = forward(params, x.to(params[0].dtype))
    dz = torch.softmax(logits, dim=-1)
    dz.scatter_add_(-1, y.view(1, -1, 1).expand(dz.shape[0], -1, 1), torch.full_like(dz[..., :1], -1.0))
    n_layers = len(params) // 2
    for layer in reversed(range(n_layers)):
        dz = torch.bmm(dz, params[2 * layer])
        if layer > 0:
            dz = dz * (cache[2 * layer - 1] > 0)
    return dz


def unit_directions(g: torch.Tensor, norm: str) -> torch.Tensor:
    """sign(g) for l_inf, g / ||g||_2 for l_2, row-wise over the last axis (0 where g vanishes)."""
    if norm == "inf":
        return torch.sign(g)
    length = torch.linalg.vector_norm(g, dim=-1, keepdim=True)
    return torch.where(length > 0, g / torch.where(length > 0, length, 1.0), 0.0)


def adaptive_directions(params, x: torch.Tensor, y: torch.Tensor, norm: str) -> torch.Tensor:
    """The adaptive attack's directions [N, n, D] float64: each run's current model's input
    gradient of every training point's loss, as a unit l_p direction. Computed in float64 from
    the parameters (a float32 copy is promoted), so the directions do not hinge on the
    training dtype's rounding of the gradient."""
    wide = [p.to(torch.float64) for p in params]
    return unit_directions(input_gradients(wide, x.to(torch.float64), y), norm)


def lookahead_directions(params, x: torch.Tensor, y: torch.Tensor, norm: str) -> torch.Tensor:
    """The lookahead (gradient-matching) attack's directions [N, n, D] float64: for run n with
    parameters θ_n, u_n = −∇_θ L(θ_n) with L the mean clean training loss (the attacker's
    objective: the training split only), and point i's direction is the unit l_p direction of
    ∇_x ⟨∇_θ ℓ_i(x; θ_n), u_n⟩ at its clean input, the first-order move that turns the point's
    parameter gradient towards u_n. An SGD step on such points then descends along u_n less and
    ascends L: the batch gradient opposes the objective's. Double backward through the stacked
    forward, in float64, batched over the runs."""
    wide = [p.detach().to(torch.float64).requires_grad_(True) for p in params]
    x64 = x.to(torch.float64)
    n_runs, n = wide[0].shape[0], x64.shape[0]
    labels = y.repeat(n_runs)
    logits, _ = forward(wide, x64)
    objective = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels, reduction="sum") / n
    u = [-g for g in torch.autograd.grad(objective, wide)]  # runs are independent: run n's gradient in slice n
    points = x64.expand(n_runs, -1, -1).clone().requires_grad_(True)
    logits, _ = forward(wide, points)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels, reduction="sum")
    grads = torch.autograd.grad(loss, wide, create_graph=True)
    alignment = sum((g * v).sum() for g, v in zip(grads, u))  # sum over n, i of <grad_theta l_ni, u_n>
    (g_x,) = torch.autograd.grad(alignment, points)  # point (n, i) enters term (n, i) only
    return unit_directions(g_x.detach(), norm)


RUN_AWARE_DIRECTIONS = {"adaptive": adaptive_directions, "lookahead": lookahead_directions}
"""The directions of each run-aware attack, ``(params, x, y, norm) -> [N, n, D]``, recomputed by
the engine at the start of every recorded interval."""


def gradient_directions(config: SampleConfig, data: Dataset) -> np.ndarray:
    """Unit (in the threat's l_p) attack directions per training point, cached per setting."""
    key = (data.content_hash, config.model, config.recipe, config.threat.norm, config.attack.reference_seed)
    if key not in _CACHE:
        g = input_gradients(train_reference(config, data), torch.as_tensor(data.x_train, dtype=torch.float64),
                            torch.as_tensor(data.y_train))[0].numpy()
        if config.threat.norm == "inf":
            direction = np.sign(g)
        else:  # numpy's norm, as this table has always been made (the adaptive attack's is torch's)
            norm = np.linalg.norm(g, axis=1, keepdims=True)
            direction = np.divide(g, norm, out=np.zeros_like(g), where=norm > 0)
        _CACHE[key] = direction
    return _CACHE[key]


def chosen_count(rho: float, n: int) -> int:
    """K = ⌈ρ·n⌉, the number of points a chosen subset poisons (ρ·n rounded to 9 decimals first,
    so that a product like 0.1 · 10 that is an integer on paper is not rounded up past it)."""
    return min(n, math.ceil(round(rho * n, 9)))


def clean_margins(params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_y − max_{j≠y} z_j of every point under each of N stacked models, [N, n] (the parameters' dtype)."""
    logits, _ = forward(params, x.to(params[0].dtype))
    true = logits.gather(-1, y.view(1, -1, 1).expand(logits.shape[0], -1, 1)).squeeze(-1)
    others = logits.scatter(-1, y.view(1, -1, 1).expand(logits.shape[0], -1, 1), -math.inf)
    return true - others.max(dim=-1).values


def lowest(margins: np.ndarray, k: int) -> np.ndarray:
    """Bool [n]: the k entries of smallest value, ties broken by the lower index."""
    chosen = np.zeros(margins.shape[0], dtype=bool)
    chosen[np.argsort(margins, kind="stable")[:k]] = True
    return chosen


def chosen_subset(config: SampleConfig, data: Dataset) -> np.ndarray:
    """The chosen subset rule's poisoned points, bool [n_train]: the ⌈ρ·n⌉ of lowest clean margin
    under the reference model (float64), cached per setting."""
    key = (data.content_hash, config.model, config.recipe, config.attack.reference_seed, config.threat.rho)
    if key not in _CHOSEN:
        margins = clean_margins(train_reference(config, data), torch.as_tensor(data.x_train, dtype=torch.float64),
                                torch.as_tensor(data.y_train))[0].numpy()
        _CHOSEN[key] = lowest(margins, chosen_count(config.threat.rho, margins.shape[0]))
    return _CHOSEN[key]
