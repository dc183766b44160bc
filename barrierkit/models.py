"""The MLP family with parameters stacked over N models (leading trajectory axis).

Parameters are a list ``[W1, b1, W2, b2, ...]`` with ``W_l`` of shape ``[N, out, in]`` and
``b_l`` of shape ``[N, out]``: the layout and order of ``torch.nn.Linear``, so a flat parameter
vector theta in R^d is the concatenation in ``nn.Module.parameters()`` order.

Initialisation mirrors torch's default for ``nn.Linear`` (U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for
weights and biases) but draws from the counter-based RNG: element j of theta for a trajectory
with init seed s is ``(2u - 1)/sqrt(fan_in)`` with u the uniform of lane ``j % 4`` of
Philox(s; j // 4, 0, INIT, 0). Its mean theta_bar_0 is the zero vector.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np
import torch

from .config import ModelSpec
from .rng import Stream, bits_torch, uniform_from_bits_torch

Params = List[torch.Tensor]


@dataclass(frozen=True)
class MLPShape:
    """Concrete layer sizes: input_dim -> hidden... -> n_classes."""

    input_dim: int
    hidden: Tuple[int, ...]
    n_classes: int

    @classmethod
    def from_spec(cls, spec: ModelSpec, input_dim: int, n_classes: int) -> "MLPShape":
        return cls(int(input_dim), tuple(spec.hidden), int(n_classes))

    @property
    def widths(self) -> Tuple[int, ...]:
        return (self.input_dim, *self.hidden, self.n_classes)

    @property
    def layer_shapes(self) -> List[Tuple[int, ...]]:
        """Shapes of [W1, b1, W2, b2, ...] for one model."""
        out: List[Tuple[int, ...]] = []
        for fan_in, fan_out in zip(self.widths[:-1], self.widths[1:]):
            out += [(fan_out, fan_in), (fan_out,)]
        return out

    @property
    def param_count(self) -> int:
        return int(sum(np.prod(s) for s in self.layer_shapes))

    @property
    def spec_hash(self) -> str:
        return hashlib.sha256(json.dumps({"family": "mlp-relu", "widths": self.widths}).encode()).hexdigest()


def init_params(shape: MLPShape, init_seeds: Sequence[int], dtype: torch.dtype = torch.float32, device="cpu") -> Params:
    """Initial parameters of N models, one per init seed (exactly reproducible from the seed)."""
    seeds = torch.as_tensor(np.asarray(init_seeds, dtype=np.int64), device=device).view(-1, 1)
    d = shape.param_count
    lanes_needed = (d + 3) // 4
    counters = torch.arange(lanes_needed, dtype=torch.int64, device=device).view(1, -1)
    words = bits_torch(seeds, counters, 0, Stream.INIT, device=device)
    flat_u = torch.stack(words, dim=-1).reshape(seeds.shape[0], -1)[:, :d]
    u = uniform_from_bits_torch(flat_u)  # float64, exact
    params: Params = []
    offset = 0
    for s in shape.layer_shapes:
        fan_in = shape.widths[len(params) // 2]
        size = int(np.prod(s))
        bound = 1.0 / np.sqrt(fan_in)
        block = (2.0 * u[:, offset:offset + size] - 1.0) * bound
        params.append(block.reshape(seeds.shape[0], *s).to(dtype).contiguous())
        offset += size
    return params


def flatten(params: Params) -> torch.Tensor:
    """theta as [N, d] in nn.Module parameter order."""
    return torch.cat([p.reshape(p.shape[0], -1) for p in params], dim=1)


def forward(params: Params, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """Logits [N, B, C] for inputs x [N, B, D] (or shared x [B, D]) and the pre-activations.

    Returns (logits, [a0, z1, a1, z2, ..., ]) where a0 is the input and z_l the pre-activations
    of hidden layers; the closed-form backward uses them.
    """
    n_layers = len(params) // 2
    a = x
    cache: List[torch.Tensor] = [x]
    for layer in range(n_layers):
        w, b = params[2 * layer], params[2 * layer + 1]
        if a.dim() == 2:
            z = torch.einsum("bi,noi->nbo", a, w) + b[:, None, :]
        else:
            z = torch.baddbmm(b[:, None, :], a, w.transpose(1, 2))
        if layer < n_layers - 1:
            cache.append(z)
            a = torch.relu(z)
            cache.append(a)
        else:
            return z, cache
    raise AssertionError("unreachable: an MLP has at least one layer")


def loss_and_accuracy(params: Params, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean softmax cross-entropy and accuracy per model on a shared set: ([N], [N])."""
    logits, _ = forward(params, x)
    logp = torch.log_softmax(logits, dim=-1)
    yy = y.view(1, -1, 1).expand(logits.shape[0], -1, 1)
    loss = -logp.gather(-1, yy).squeeze(-1).mean(dim=1)
    # the count over the number of points, one correctly rounded division: the same value on every
    # device and in kernels/mlp_features.py (torch's CUDA mean multiplies by fl(1/P) instead)
    acc = (logits.argmax(dim=-1) == y.view(1, -1)).to(logits.dtype).sum(dim=1) / y.numel()
    return loss, acc


def to_module(params: Params, index: int) -> torch.nn.Sequential:
    """One model of the stack as an ``nn.Sequential`` of Linear/ReLU (for tests and baselines)."""
    layers: List[torch.nn.Module] = []
    n_layers = len(params) // 2
    for layer in range(n_layers):
        w, b = params[2 * layer][index], params[2 * layer + 1][index]
        lin = torch.nn.Linear(w.shape[1], w.shape[0], dtype=w.dtype)
        with torch.no_grad():
            lin.weight.copy_(w)
            lin.bias.copy_(b)
        layers.append(lin)
        if layer < n_layers - 1:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


MODEL_BLOCK = 64  # models per block of in_fixed_blocks


def in_fixed_blocks(fn, stacked, rows: int = MODEL_BLOCK) -> torch.Tensor:
    """``fn(*block)`` over blocks of ``rows`` models of tensors stacked on a leading N axis (the
    last block zero-padded), concatenated and cut to N.

    Every call then sees the same shapes, so the same kernels and summation orders run whatever
    N or a model's position: chunking cannot change a bit, on the CPU or on a GPU (where cuBLAS
    and torch's reductions pick their configuration from the shapes).
    """
    n = stacked[0].shape[0]
    out = []
    for i in range(0, n, rows):
        block = [t[i:i + rows] for t in stacked]
        short = rows - block[0].shape[0]
        if short:  # only the last block is copied and padded
            block = [torch.cat([b, b.new_zeros(short, *b.shape[1:])]) for b in block]
        out.append(fn(*block))
    return torch.cat(out)[:n]
