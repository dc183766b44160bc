"""The readable reference backend: batched SGD over N trajectories with a closed-form backward.

Everything is vectorised over the leading trajectory axis (bmm/einsum); there is no Python loop
over trajectories and no autograd. Runs on CPU and GPU. Every other backend is tested against it.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..features import FeatureMap
from ..models import Params, forward
from ..poison import poison_batch
from .base import Backend, Capabilities, StepProblem, TrainState

NAME = "torch"


def mlp_gradients(params: Params, x: torch.Tensor, y: torch.Tensor) -> Params:
    """Gradients of the mean softmax cross-entropy for each model: same layout as params."""
    logits, cache = forward(params, x)
    n_layers = len(params) // 2
    batch = x.shape[1]
    probs = torch.softmax(logits, dim=-1)  # out of place below: autograd can follow it (the unrolled attack)
    dz = probs.scatter_add(-1, y.unsqueeze(-1), torch.full_like(probs[..., :1], -1.0))
    dz = dz / batch
    grads: Params = [torch.empty(0)] * len(params)
    for layer in reversed(range(n_layers)):
        a_prev = cache[2 * layer]
        grads[2 * layer] = torch.bmm(dz.transpose(1, 2), a_prev)
        grads[2 * layer + 1] = dz.sum(dim=1)
        if layer > 0:
            dz = torch.bmm(dz, params[2 * layer]) * (cache[2 * layer - 1] > 0)
    return grads


def sgd_update(state: TrainState, grads: Params, lr: float, momentum: float, weight_decay: float) -> None:
    """torch.optim.SGD semantics (dampening 0, no Nesterov), in place."""
    if momentum and state.momentum is None:
        state.momentum = [torch.zeros_like(p) for p in state.params]
    for i, (p, g) in enumerate(zip(state.params, grads)):
        if weight_decay:
            g = g.add(p, alpha=weight_decay)
        if momentum:
            buf = state.momentum[i]  # type: ignore[index]
            buf.mul_(momentum).add_(g)
            g = buf
        p.sub_(g, alpha=lr)


def train_segment(state: TrainState, problem: StepProblem, t0: int, t1: int) -> Optional[str]:
    """Advance all trajectories from step t0 to step t1 (exclusive), in place; never falls back."""
    for t in range(t0, t1):
        idx = problem.schedule.indices(t)
        x = poison_batch(problem.poison, problem.x_train[idx], idx, problem.dtype)
        grads = mlp_gradients(state.params, x, problem.y_train[idx])
        sgd_update(state, grads, problem.lr, problem.momentum, problem.weight_decay)
    return None


BACKEND = Backend(
    name=NAME, precision="ieee", train_segment=train_segment, feature_map=FeatureMap,
    capabilities=Capabilities(devices=frozenset({"cpu", "cuda"}), dtypes=frozenset({"float32", "float64"})),
    summary="the readable reference: batched torch ops, closed-form backward (CPU and CUDA)",
)
