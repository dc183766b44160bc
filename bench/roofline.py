"""The roofline model of one batched SGD step, and the peaks it is compared with.

``step_cost`` states how many FLOPs and bytes one step of N trajectories needs at least (the
fused Triton step's model, bench/notes_triton.md); ``fractions`` turns a measured time into the
fraction of the FLOP roof and of the bandwidth roof. The same model is applied to every method
(the loop, torch_ref, torch.func, numba), so a method that moves more bytes than the fused step
shows a smaller fraction: the model is the floor, not a description of each method's traffic.
"""
from __future__ import annotations

from typing import Dict, NamedTuple, Optional, Sequence, Union

import torch


class StepCost(NamedTuple):
    """FLOPs and bytes of one SGD step of ``n`` trajectories (see :func:`step_cost`)."""

    flops: float
    bytes: float

    @property
    def intensity(self) -> float:
        """Arithmetic intensity, FLOP per byte."""
        return self.flops / self.bytes if self.bytes else float("inf")


def _widths(input_dim: int, hidden: Union[int, Sequence[int]], classes: int) -> tuple:
    hidden = (int(hidden),) if isinstance(hidden, int) else tuple(int(h) for h in hidden)
    return (int(input_dim), *hidden, int(classes))


def step_cost(input_dim: int, hidden: Union[int, Sequence[int]], classes: int, batch: int, n: int, *,
              attack: str = "gradient", momentum: bool = False, weight_decay: bool = False,
              steps_per_launch: int = 8, itemsize: int = 4) -> StepCost:
    """FLOPs and bytes of one SGD step of ``n`` MLP trajectories (the fused step's model).

    The model (bench/notes_triton.md), per trajectory and step, for widths
    ``D = w_0 -> w_1 -> ... -> w_L = classes`` (layer l has ``w_{l-1} * w_l`` weights), batch B,
    parameters d, W1 = the first layer's ``w_1 * D`` weights, fp32 (``itemsize`` = 4):

    FLOPs (2 per multiply-add; useful work only: no padding, no softmax/ReLU/bias adds):
      - forward, every layer: ``2 B w_{l-1} w_l``
      - weight gradients, every layer: ``2 B w_{l-1} w_l``
      - activation gradients, every layer but the first: ``2 B w_{l-1} w_l``
      - SGD update: ``2 d`` (p -= lr g), plus ``2 d`` for weight decay (g += wd p) and ``2 d`` for
        momentum (buf = m buf + g)

    Bytes (DRAM traffic of the fused kernel, gathers counted as DRAM: an upper bound when the
    data fits in L2):
      - W1 read and written once: ``2 * itemsize * |W1|``; its momentum buffer the same, if any
      - the batch rows gathered twice (forward of step s inside the pass of step s-1, then the
        gradient): ``2 * itemsize * B * D``
      - the gradient attack's direction rows, gathered twice as well: ``2 * itemsize * B * D``
      - the step's batch indices and labels (int32): ``4 B + 4 B``
      - the small layers (everything but W1, and their momentum buffers) live in registers
        for a launch of ``steps_per_launch`` steps: read and written once per launch,
        ``2 * itemsize * (d - |W1|) * (1 + momentum) / steps_per_launch``
      - the poison seed (int64), once per launch when there is an attack: ``8 / steps_per_launch``

    Both totals are multiplied by ``n``. Returns ``StepCost(flops, bytes)``.
    """
    widths = _widths(input_dim, hidden, classes)
    layers = list(zip(widths[:-1], widths[1:]))
    macs = [fan_in * fan_out for fan_in, fan_out in layers]
    d = sum(m + fan_out for m, (_, fan_out) in zip(macs, layers))
    w1 = macs[0]
    b = int(batch)
    flops = 2 * b * sum(macs) + 2 * b * sum(macs) + 2 * b * sum(macs[1:])
    flops += 2 * d * (1 + bool(weight_decay) + bool(momentum))
    s = max(1, int(steps_per_launch))
    nbytes = 2 * itemsize * w1 * (1 + bool(momentum))
    nbytes += 2 * itemsize * b * widths[0]
    if attack == "gradient":
        nbytes += 2 * itemsize * b * widths[0]
    nbytes += 4 * b + 4 * b
    nbytes += 2 * itemsize * (d - w1) * (1 + bool(momentum)) / s
    if attack not in (None, "none"):
        nbytes += 8 / s
    return StepCost(float(flops) * n, float(nbytes) * n)


# Datasheet peaks (dense): fp32 FMA and TF32 tensor-core TFLOP/s, HBM TB/s. Matched against
# torch.cuda.get_device_name() in order (first match wins).
DATASHEET = [
    ("H100 PCIe", {"fp32_tflops": 51.0, "tf32_tflops": 378.0, "hbm_tbps": 2.0}),
    ("H100 NVL", {"fp32_tflops": 60.0, "tf32_tflops": 418.0, "hbm_tbps": 3.9}),
    ("H100", {"fp32_tflops": 67.0, "tf32_tflops": 495.0, "hbm_tbps": 3.35}),
    ("H200", {"fp32_tflops": 67.0, "tf32_tflops": 495.0, "hbm_tbps": 4.8}),
    ("A100", {"fp32_tflops": 19.5, "tf32_tflops": 156.0, "hbm_tbps": 2.0}),
    ("L4", {"fp32_tflops": 30.3, "tf32_tflops": 60.0, "hbm_tbps": 0.3}),
]


def datasheet(name: str) -> Optional[Dict[str, float]]:
    for key, peaks in DATASHEET:
        if key in name:
            return dict(peaks)
    return None


def measure_copy_bandwidth(device: torch.device, nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth, bytes/s, read + write counted (median of do_bench)."""
    from .timing import time_gpu

    x = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    y = torch.empty_like(x)
    t = time_gpu(lambda: y.copy_(x))
    del x, y
    return 2.0 * nbytes / t["median_s"]


def measure_sgemm(device: torch.device, size: int = 8192) -> float:
    """fp32 (no TF32) matmul FLOP/s, the FLOP roof when the GPU is not in the datasheet."""
    from .timing import time_gpu

    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        t = time_gpu(lambda: a @ b)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    return 2.0 * size ** 3 / t["median_s"]


def peaks(device: torch.device, peak_gflops: Optional[float] = None, peak_gbps: Optional[float] = None) -> Dict:
    """The roofs a measured time is compared with, and where each number comes from.

    CPU: only what the user passes (``--peak-gflops``, ``--peak-gbps``). GPU: the FLOP roof is
    the datasheet's fp32 FMA peak (TF32 for the tf32 kernel), else a measured sgemm; the
    bandwidth roof is the measured device-to-device copy (as in bench/notes_triton.md), with
    the datasheet's HBM number recorded beside it.
    """
    out: Dict = {"flops": None, "flops_tf32": None, "bytes_per_s": None, "source": {}}
    if peak_gflops:
        out["flops"] = out["flops_tf32"] = peak_gflops * 1e9
        out["source"]["flops"] = "given (--peak-gflops)"
    if peak_gbps:
        out["bytes_per_s"] = peak_gbps * 1e9
        out["source"]["bytes_per_s"] = "given (--peak-gbps)"
    device = torch.device(device)
    if device.type != "cuda":
        if out["flops"] is None or out["bytes_per_s"] is None:
            out["source"]["note"] = "CPU: no roofline fractions unless --peak-gflops and --peak-gbps are given"
        return out
    name = torch.cuda.get_device_name(device)
    sheet = datasheet(name)
    out["datasheet"] = sheet
    if out["flops"] is None:
        if sheet:
            out["flops"], out["flops_tf32"] = sheet["fp32_tflops"] * 1e12, sheet["tf32_tflops"] * 1e12
            out["source"]["flops"] = f"datasheet ({name}): fp32 FMA, TF32 for the tf32 kernel"
        else:
            out["flops"] = out["flops_tf32"] = measure_sgemm(device)
            out["source"]["flops"] = "measured fp32 matmul (device not in the datasheet table)"
    if out["bytes_per_s"] is None:
        out["bytes_per_s"] = measure_copy_bandwidth(device)
        out["source"]["bytes_per_s"] = "measured device-to-device copy (read + write)"
    return out


def fractions(cost: StepCost, seconds: float, roofs: Dict, tf32: bool = False) -> Dict[str, Optional[float]]:
    """Achieved rates and fractions of the roofs for one step that took ``seconds``."""
    flops_peak = roofs.get("flops_tf32" if tf32 else "flops")
    bw_peak = roofs.get("bytes_per_s")
    out: Dict[str, Optional[float]] = {
        "model_flops": cost.flops, "model_bytes": cost.bytes, "model_intensity": cost.intensity,
        "achieved_gflops": cost.flops / seconds / 1e9, "achieved_gbps": cost.bytes / seconds / 1e9,
        "flop_fraction": None, "bandwidth_fraction": None, "roofline_s": None, "roofline_fraction": None,
    }
    if flops_peak and bw_peak:
        floor = max(cost.flops / flops_peak, cost.bytes / bw_peak)
        out.update(flop_fraction=cost.flops / seconds / flops_peak, bandwidth_fraction=cost.bytes / seconds / bw_peak,
                   roofline_s=floor, roofline_fraction=floor / seconds)
    return out


def describe_fraction(f: Dict) -> str:
    """The text printed beside a measured time."""
    base = f"model {f['model_flops'] / 1e9:.3g} GFLOP, {f['model_bytes'] / 1e9:.3g} GB"
    if f.get("flop_fraction") is None:
        return base + f" ({f['achieved_gflops']:.3g} GFLOP/s, {f['achieved_gbps']:.3g} GB/s)"
    return (base + f": {f['flop_fraction']:.1%} of FLOP roof, {f['bandwidth_fraction']:.1%} of bandwidth roof, "
            f"{f['roofline_fraction']:.1%} of the roofline bound ({f['roofline_s'] * 1e3:.3g} ms)")
