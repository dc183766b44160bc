"""Test-time (evasion) attacks and a sound per-point bound, batched over N trained models.

After training, a fraction rho' of the test set is perturbed within ||Delta'||_p <= delta'
(p = inf or 2) and clipped to the input domain. Three ways to judge the perturbed test set:

* ``random``: one perturbation drawn uniformly from the ball per point (a sampling attack);
* ``pgd``: projected gradient ascent on the point's loss (cross-entropy or the logit margin),
  sign steps for l_inf and normalised steps for l_2, from the clean point and from ``restarts``
  random starts; a point counts as flipped when any start flips it (the attacker keeps the best);
* ``ibp``: interval bound propagation proves, per point, that *no* perturbation in the ball can
  change the prediction; the points it cannot prove count as flipped. That is an upper bound on
  the damage of every attack, so a label derived from it is worst-case over evasion.

Everything runs in float64 on the models' weights (a float32 model is upcast exactly), over
fixed-size blocks of models and test points, so a result does not depend on how the N models or
the P points are chunked. Random draws are counter-based (Philox on each run's poison seed, its
own stream words), so every perturbation replays from the seeds. The readable per-model twins
(autograd PGD on an ``nn.Module``, interval arithmetic with W+ and W-) live in the tests.
"""
from __future__ import annotations

import math
from typing import Any, Callable, List, Sequence, Tuple

import torch

from .config import ConfigError, EvasionThreat
from .labels import exact_alpha
from .models import MODEL_BLOCK, Params, forward, in_fixed_blocks
from .rng import Stream, ball_point_torch, bits_torch, uniform_from_bits_torch

POINT_BLOCK = 128  # test points per block: every block has the same shape, whatever P
PROOF_TOL = 1e-9  # a point is proven robust when its worst-case logit margin exceeds this ...
PROOF_RTOL = 1e-9  # ... after subtracting this much of the sizes of the two logits (float64 rounds each one separately)


def check_in_domain(x: Any, domain: Tuple[float, float]) -> None:
    """The clean test points (array or tensor) must lie in the domain box: the l_2 projection and
    bound assume it. A ConfigError naming ``domain`` otherwise."""
    lo, hi = domain
    if x.shape[0] and not (float(x.min()) >= lo and float(x.max()) <= hi):
        raise ConfigError("domain", f"the test points lie outside the threat's domain ({lo:g}, {hi:g}): the test-time "
                                    "attacks and the interval bound perturb points inside it")


def as_float64(params: Params) -> Params:
    """The models' weights in float64 (exact for float32 weights)."""
    return [p.to(torch.float64) for p in params]


def perturbed_points(seeds: torch.Tensor, n_test: int, rho: float) -> torch.Tensor:
    """Bool [N, P]: which test points run n's attacker perturbs (Bernoulli(rho) per point, drawn
    from run n's seed on the TEST_SUBSET stream)."""
    idx = torch.arange(n_test, dtype=torch.int64, device=seeds.device).view(1, -1)
    words = bits_torch(seeds.view(-1, 1), idx, 0, Stream.TEST_SUBSET)
    return uniform_from_bits_torch(words[0]) < rho


def uniform_in_ball(seeds: torch.Tensor, idx: torch.Tensor, dim: int, delta: float, norm: str, draw: int) -> torch.Tensor:
    """[N, B, dim] float64: a point drawn uniformly from the norm ball of radius ``delta``, for
    test points idx [N, B] of each run; ``draw`` numbers independent draws (restarts)."""
    n_words = dim + dim % 2  # Box-Muller takes words in pairs: an odd dim draws one word more
    blocks = torch.arange((n_words + 3) // 4, dtype=torch.int64, device=idx.device)
    words = bits_torch(seeds.view(-1, 1, 1), idx.unsqueeze(-1), blocks.view(1, 1, -1), Stream.TEST_DELTA, 2 * draw)
    words = torch.stack(words, dim=-1).reshape(idx.shape[0], idx.shape[1], -1)
    radius_u = bits_torch(seeds.view(-1, 1), idx, 0, Stream.TEST_DELTA, 2 * draw + 1)[0] if norm == "2" else None
    return ball_point_torch(words, radius_u, delta, norm, dim)


def project(x_adv: torch.Tensor, x: torch.Tensor, delta: float, norm: str, domain: Tuple[float, float]) -> torch.Tensor:
    """x_adv moved back into {x + Delta : ||Delta||_p <= delta} intersected with the domain box.

    l_inf: exact (the intersection is a box). l_2: onto the ball, then into the box; clipping
    moves every coordinate towards x's (x is in the box), so the result stays in the ball."""
    step = x_adv - x
    if norm == "inf":
        step = step.clamp(-delta, delta)
    else:
        length = torch.linalg.vector_norm(step, dim=-1, keepdim=True)
        step = step * torch.where(length > delta, delta / length.clamp_min(1e-300), torch.ones_like(length))
    return (x + step).clamp(*domain)


def logit_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[N, B]: z_y - max_{j != y} z_j (positive: correctly classified with no tie)."""
    true = logits.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    others = logits.scatter(-1, y.unsqueeze(-1), float("-inf"))
    return true - others.max(dim=-1).values


def correct(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Bool [N, B]: argmax (first on ties, as the accuracy counts it) is the label."""
    return logits.argmax(dim=-1) == y


def input_gradient(params: Params, x: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """d loss / d x [N, B, D] of every point's own loss (closed-form MLP backward), and the
    logits it was taken at. ``ce``: cross-entropy; ``margin``: max_{j != y} z_j - z_y."""
    logits, cache = forward(params, x)
    if loss == "ce":
        g = torch.softmax(logits, dim=-1)
        g = g - torch.nn.functional.one_hot(y, logits.shape[-1]).to(g.dtype)
    else:
        others = logits.scatter(-1, y.unsqueeze(-1), float("-inf"))
        g = torch.zeros_like(logits)
        g.scatter_(-1, others.argmax(dim=-1, keepdim=True), 1.0)
        g.scatter_(-1, y.unsqueeze(-1), -1.0)
    n_layers = len(params) // 2
    for layer in range(n_layers - 1, -1, -1):
        g = torch.bmm(g, params[2 * layer])  # [N, B, out] @ [N, out, in]
        if layer > 0:
            g = g * (cache[2 * layer - 1] > 0)  # z of the layer below
    return g, logits


def _ascent_step(g: torch.Tensor, norm: str, size: float) -> torch.Tensor:
    if norm == "inf":
        return size * torch.sign(g)
    length = torch.linalg.vector_norm(g, dim=-1, keepdim=True)
    return size * g / torch.where(length > 0, length, torch.ones_like(length))


def pgd_ascent(params: Params, x: torch.Tensor, y: torch.Tensor, x_start: torch.Tensor, delta: float, norm: str,
               domain: Tuple[float, float], settings: EvasionThreat) -> Tuple[torch.Tensor, torch.Tensor]:
    """One start of PGD (``settings``: steps, step_size, loss) for points x [N, B, D] with labels
    y [N, B]: the last iterate and Bool [N, B], whether any iterate (the start included) was
    misclassified."""
    size = settings.step_size * delta
    x_adv = x_start
    flipped = torch.zeros(y.shape, dtype=torch.bool, device=x.device)
    if norm == "inf":  # the ball within the domain is a box: one clamp per step projects onto it
        low, high = (x - delta).clamp(*domain), (x + delta).clamp(*domain)
    for _ in range(settings.steps):
        g, logits = input_gradient(params, x_adv, y, settings.loss)
        flipped |= ~correct(logits, y)
        if norm == "inf":
            x_adv = torch.clamp(torch.add(x_adv, torch.sign(g), alpha=size), low, high)
        else:
            x_adv = project(x_adv + _ascent_step(g, norm, size), x, delta, norm, domain)
    return x_adv, flipped | ~correct(forward(params, x_adv)[0], y)


def pgd_start(seeds: torch.Tensor, idx: torch.Tensor, x: torch.Tensor, delta: float, norm: str,
              domain: Tuple[float, float], start: int) -> torch.Tensor:
    """Start ``start`` of PGD: 0 is the clean point, every later one a uniform draw from the ball
    (random draw ``start - 1`` of each run's seed), projected into the domain."""
    if start == 0:
        return x
    return project(x + uniform_in_ball(seeds, idx, x.shape[-1], delta, norm, start - 1), x, delta, norm, domain)


def pgd_flipped(params: Params, x: torch.Tensor, y: torch.Tensor, seeds: torch.Tensor, idx: torch.Tensor, delta: float,
                norm: str, domain: Tuple[float, float], settings: EvasionThreat) -> torch.Tensor:
    """Bool [N, B]: PGD found a point in the ball that the model misclassifies, from any start
    (x [N, B, D] or the shared [B, D]; idx [N, B] the points' indices in the test set, for the
    random starts)."""
    n = params[0].shape[0]
    x = x.expand(n, *x.shape[-2:]) if x.dim() == 2 else x
    yy = y.expand(n, -1) if y.dim() == 1 else y
    flipped = torch.zeros(yy.shape, dtype=torch.bool, device=x.device)
    for start in range(settings.restarts + 1):
        x_start = pgd_start(seeds, idx, x, delta, norm, domain, start)
        flipped |= pgd_ascent(params, x, yy, x_start, delta, norm, domain, settings)[1]
    return flipped


def random_flipped(params: Params, x: torch.Tensor, y: torch.Tensor, seeds: torch.Tensor, idx: torch.Tensor, delta: float,
                   norm: str, domain: Tuple[float, float]) -> torch.Tensor:
    """Bool [N, B]: the model misclassifies the point moved by one uniform draw from the ball."""
    n = params[0].shape[0]
    x = x.expand(n, *x.shape[-2:]) if x.dim() == 2 else x
    yy = y.expand(n, -1) if y.dim() == 1 else y
    x_adv = project(x + uniform_in_ball(seeds, idx, x.shape[-1], delta, norm, 0), x, delta, norm, domain)
    return ~correct(forward(params, x_adv)[0], yy)


def input_interval(x: torch.Tensor, delta: float, norm: str, domain: Tuple[float, float], w1: torch.Tensor,
                   b1: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Bounds [N, B, H1] on the first layer's pre-activations over the ball around x [B, D]
    intersected with the domain box. l_inf: the box is exact. l_2: W x + b -/+ delta ||W_row||_2,
    intersected with the bounds over the whole domain box (each is a superset of the set)."""
    lo, hi = domain
    if norm == "inf":
        return _affine_bounds(*_clipped_box(x, delta, domain, w1.shape[0]), w1, b1)
    center = torch.einsum("bi,noi->nbo", x, w1) + b1[:, None, :]
    reach = delta * torch.linalg.vector_norm(w1, dim=-1)[:, None, :]
    box = torch.full_like(x[:1], lo).expand(w1.shape[0], 1, -1), torch.full_like(x[:1], hi).expand(w1.shape[0], 1, -1)
    box_low, box_high = _affine_bounds(*box, w1, b1)
    return torch.maximum(center - reach, box_low), torch.minimum(center + reach, box_high)


def _affine_bounds(low: torch.Tensor, high: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Bounds of x @ W.T + b for x in the box [low, high] ([N, B, in] each), centre-radius form."""
    mid, rad = (high + low) / 2, (high - low) / 2
    center = torch.baddbmm(b[:, None, :], mid, w.transpose(1, 2))
    reach = torch.bmm(rad, w.abs().transpose(1, 2))
    return center - reach, center + reach


def ibp_margin_bound(params: Params, x: torch.Tensor, y: torch.Tensor, delta: float, norm: str,
                     domain: Tuple[float, float], rtol: float = 0.0) -> torch.Tensor:
    """[N, B]: a lower bound, by interval bound propagation, on the logit margin
    z_y - max_{j != y} z_j over every point of the ball around x [B, D] within the domain. The
    last layer bounds the differences (W_y - W_j) a directly, which is tighter than subtracting
    separate bounds on z_y and z_j; a single-layer model's bound is exact.
    ``rtol`` > 0 lowers each pair's bound by rtol times bounds on |z_y| + |z_j| (rounding slack)."""
    n_layers = len(params) // 2
    if n_layers == 1:
        if norm == "inf":
            low, high = _clipped_box(x, delta, domain, params[0].shape[0])
            return _margin_lower_bound(low, high, params[0], params[1], y, None, rtol)
        return _margin_lower_bound(None, None, params[0], params[1], y, (x, delta, domain), rtol)
    low, high = input_interval(x, delta, norm, domain, params[0], params[1])
    for layer in range(1, n_layers - 1):
        low, high = _affine_bounds(low.clamp_min(0), high.clamp_min(0), params[2 * layer], params[2 * layer + 1])
    return _margin_lower_bound(low.clamp_min(0), high.clamp_min(0), params[-2], params[-1], y, None, rtol)


def ibp_proven(params: Params, x: torch.Tensor, y: torch.Tensor, delta: float, norm: str,
               domain: Tuple[float, float]) -> torch.Tensor:
    """Bool [N, B]: IBP proves that no point of the ball around x (within the domain) changes the
    prediction from y: the margin's lower bound, less PROOF_RTOL of the two logits' sizes (the
    forward pass rounds each logit on its own scale), exceeds PROOF_TOL."""
    return ibp_margin_bound(params, x, y, delta, norm, domain, rtol=PROOF_RTOL) > PROOF_TOL


def _clipped_box(x: torch.Tensor, delta: float, domain: Tuple[float, float], n: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The l_inf ball around x [B, D] intersected with the domain, as [N, B, D] bounds."""
    lo, hi = domain
    return (x - delta).clamp(lo, hi).expand(n, -1, -1), (x + delta).clamp(lo, hi).expand(n, -1, -1)


def _margin_lower_bound(low, high, w: torch.Tensor, b: torch.Tensor, y: torch.Tensor, exact_l2, rtol: float) -> torch.Tensor:
    """min over j != y of a lower bound on (W_y - W_j) a + (b_y - b_j), a in [low, high] (or, for a
    single-layer model under l_2, a = x + Delta in the ball and the domain box), each lowered by
    rtol * (bound on |z_y| + bound on |z_j|); [N, B]."""
    n = w.shape[0]
    if exact_l2 is None:
        bound = _pairwise_lower_bound(low, high, w, b, y)
    else:
        diff_w = w.gather(1, y.view(1, -1, 1).expand(n, -1, w.shape[2])).unsqueeze(2) - w.unsqueeze(1)  # [N, B, C, in]
        diff_b = b.gather(1, y.view(1, -1).expand(n, -1)).unsqueeze(-1) - b.unsqueeze(1)  # [N, B, C]
        x, delta, (lo, hi) = exact_l2
        ball = torch.einsum("nbci,bi->nbc", diff_w, x) - delta * torch.linalg.vector_norm(diff_w, dim=-1) + diff_b
        box = ((lo + hi) / 2) * diff_w.sum(-1) - ((hi - lo) / 2) * diff_w.abs().sum(-1) + diff_b
        bound = torch.maximum(ball, box)
    if rtol:
        if exact_l2 is None:
            reach = torch.maximum(low.abs(), high.abs())
        else:
            reach = torch.full((n, exact_l2[0].shape[0], w.shape[2]), max(abs(lo), abs(hi)), dtype=w.dtype, device=w.device)
        size = torch.einsum("nci,nbi->nbc", w.abs(), reach) + b.abs()[:, None, :]  # [N, B, C]: bounds on |z_c|
        bound = bound - rtol * (size + size.gather(-1, y.view(1, -1, 1).expand(n, -1, 1)))
    bound = bound.scatter(-1, y.view(1, -1, 1).expand(n, -1, 1), float("inf"))
    return bound.min(dim=-1).values


def _pairwise_lower_bound(low: torch.Tensor, high: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
                          y: torch.Tensor) -> torch.Tensor:
    """[N, B, C]: for a in the box [low, high] ([N, B, in]), lower bounds on (W_y - W_j) a + b_y - b_j,
    y each point's label. The C x C class-pair differences are formed once per model (not once
    per point) and applied to every point by two batched matrix products; the row of the point's
    own label is then picked out."""
    n, c, width = w.shape
    pair_w = (w.unsqueeze(2) - w.unsqueeze(1)).reshape(n, c * c, width)  # row y*C + j: W_y - W_j
    pair_b = (b.unsqueeze(2) - b.unsqueeze(1)).reshape(n, 1, c * c)
    mid, rad = (high + low) / 2, (high - low) / 2
    bound = torch.baddbmm(pair_b, mid, pair_w.transpose(1, 2)) - torch.bmm(rad, pair_w.abs().transpose(1, 2))
    rows = (y.view(1, -1, 1) * c + torch.arange(c, device=y.device).view(1, 1, -1)).expand(n, -1, -1)
    return bound.gather(2, rows)


def _blocked(fn: Callable[..., torch.Tensor], params: Params, per_point: Sequence[torch.Tensor], shared_x: bool) -> torch.Tensor:
    """fn over fixed blocks of MODEL_BLOCK models x POINT_BLOCK points (zero-padded), so results
    do not depend on N, P or the chunking; per_point tensors have the point axis first ([P, ...])
    when ``shared_x``, else second ([N, P, ...])."""
    n_points = per_point[0].shape[0 if shared_x else 1]
    columns: List[torch.Tensor] = []
    for lo in range(0, n_points, POINT_BLOCK):
        block = [t[lo:lo + POINT_BLOCK] if shared_x else t[:, lo:lo + POINT_BLOCK] for t in per_point]
        short = POINT_BLOCK - block[0].shape[0 if shared_x else 1]
        if short:
            block = [_pad(t, short, 0 if shared_x else 1) for t in block]

        def on_models(*stacked, block=block):
            models, rows = stacked[:len(params)], stacked[len(params):]
            return fn(list(models), *(block if shared_x else rows))

        stacked = list(params) + ([] if shared_x else block)
        out = in_fixed_blocks(on_models, stacked, MODEL_BLOCK)
        columns.append(out[:, :POINT_BLOCK - short] if short else out)
    return torch.cat(columns, dim=1)


def _pad(t: torch.Tensor, short: int, axis: int) -> torch.Tensor:
    shape = list(t.shape)
    shape[axis] = short
    return torch.cat([t, t.new_zeros(shape)], dim=axis)


def proven_fraction(params: Params, x: torch.Tensor, y: torch.Tensor, delta: float, norm: str,
                    domain: Tuple[float, float]) -> torch.Tensor:
    """[N] float64: the fraction of the points x [B, D] (labels y) that the interval bound proves
    robust at budget ``delta`` for each model (a proven point is also correctly classified);
    blocked like :func:`evaluate`, so no value depends on N or on chunking."""
    params = as_float64(params)
    proven = _blocked(lambda m, xb, yb: ibp_proven(m, xb, yb, delta, norm, domain), params,
                      [x.to(torch.float64), y.to(torch.int64)], shared_x=True)
    return proven.to(torch.float64).sum(dim=1) / x.shape[0]


def evaluate(params: Params, x_test: torch.Tensor, y_test: torch.Tensor, seeds: torch.Tensor, threat: EvasionThreat,
             delta: float, domain: Tuple[float, float]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Clean and attacked test hit counts ([N] int64 each) of N models under the test-time
    ``threat`` at budget ``delta``.

    Run n perturbs the test points its seed picks (:func:`perturbed_points`, probability
    threat.rho); a perturbed point counts as a hit when the attack does not flip it (``ibp``: when
    it is proven robust), every other point as its clean prediction says. float64 throughout;
    ``seeds`` [N] are the runs' poison seeds."""
    params = as_float64(params)
    x = x_test.to(torch.float64)
    y_test = y_test.to(torch.int64)
    check_in_domain(x, domain)
    n, n_test = params[0].shape[0], x.shape[0]
    clean = _blocked(lambda m, xb, yb: correct(forward(m, xb)[0], yb), params, [x, y_test], shared_x=True)
    if delta == 0 or threat.rho == 0:
        return clean.sum(dim=1), clean.sum(dim=1)
    norm = threat.norm
    chosen = threat.subset == "chosen"  # the attacker perturbs the points it can flip, up to its cap
    at_stake = clean if chosen else perturbed_points(seeds, n_test, threat.rho) & clean  # only these can be flipped
    if threat.attack == "ibp":
        safe = _blocked(lambda m, xb, yb: ibp_proven(m, xb, yb, delta, norm, domain), params, [x, y_test], shared_x=True)
        return clean.sum(dim=1), _attacked_count(clean, at_stake & ~safe, threat, n_test)
    if threat.attack == "pgd":
        def flip(m, xb, yb, sb, ib):
            return pgd_flipped(m, xb, yb, sb[:, 0], ib, delta, norm, domain, threat)
    else:
        def flip(m, xb, yb, sb, ib):
            return random_flipped(m, xb, yb, sb[:, 0], ib, delta, norm, domain)
    flipped = torch.zeros_like(clean)
    width = int(at_stake.sum(dim=1).max())
    if width:
        # each run's points at stake first, in test-set order: the attack runs on those slots only
        # (a slot's result depends on its model and point alone, so the packing changes no bit)
        slots = torch.argsort((~at_stake).to(torch.int8), dim=1, stable=True)[:, :width]
        rows = [x[slots], y_test[slots], seeds.view(-1, 1).expand(n, width), slots]
        hit = _blocked(flip, params, rows, shared_x=False) & at_stake.gather(1, slots)
        flipped.scatter_(1, slots, hit)
    return clean.sum(dim=1), _attacked_count(clean, flipped, threat, n_test)


def _attacked_count(clean: torch.Tensor, flipped: torch.Tensor, threat: EvasionThreat, n_test: int) -> torch.Tensor:
    """[N] hits left on the attacked test set: clean hits less the flipped points, or (subset
    chosen) less at most ⌊rho·P⌋ of them, rho read as the decimal it is written as."""
    lost = flipped.sum(dim=1)
    if threat.subset == "chosen":
        lost = lost.clamp(max=math.floor(exact_alpha(threat.rho) * n_test))  # rho read as written, like alpha
    return clean.sum(dim=1) - lost


__all__ = ["EvasionThreat", "check_in_domain", "evaluate", "proven_fraction", "ibp_margin_bound", "ibp_proven", "pgd_ascent", "pgd_start", "pgd_flipped", "random_flipped", "input_gradient",
           "perturbed_points", "uniform_in_ball", "project", "logit_margin", "PROOF_TOL"]
