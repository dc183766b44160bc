"""Timing and memory, done the same way for every method.

CPU: ``warmup`` untimed calls, then ``repeats`` timed calls (perf_counter); the minimum is the
headline (the machine may be shared) and the median is reported beside it. GPU:
``triton.testing.do_bench`` (warm-up, L2 flushed before each call, CUDA events, one
synchronisation at the end, never per iteration), or CUDA events around a batch of calls when
Triton is missing; median and 20/80 % quantiles. Peak host memory: the process's resident
high-water mark (VmHWM), reset before each case where Linux allows it; device memory:
``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``.
"""
from __future__ import annotations

import gc
import inspect
import resource
import statistics
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch


def _summary(seconds: List[float], timer: str) -> Dict:
    ordered = sorted(seconds)

    def q(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(p * (len(ordered) - 1))))]

    return {"min_s": ordered[0], "median_s": statistics.median(ordered), "q20_s": q(0.2), "q80_s": q(0.8),
            "max_s": ordered[-1], "samples": len(ordered), "timer": timer}


def time_cpu(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> Dict:
    """Seconds per call of ``fn``: ``warmup`` untimed calls, then ``repeats`` timed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return _summary(times, "perf_counter")


def _from_quantiles(ms: List[float], timer: str) -> Dict:
    """do_bench's (min, q20, median, q80, max) in ms, stored as quantiles (not as 5 samples)."""
    lo, q20, med, q80, hi = (m / 1e3 for m in ms)
    return {"min_s": lo, "median_s": med, "q20_s": q20, "q80_s": q80, "max_s": hi, "samples": None, "timer": timer}


def _one_call_ms(fn: Callable[[], object]) -> float:
    """One call timed with CUDA events (also the first warm-up call)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return max(start.elapsed_time(end), 1e-3)


MIN_GPU_SAMPLES = 5
MAX_GPU_SPAN_MS = 20_000.0


def time_gpu(fn: Callable[[], object], warmup_ms: float = 50.0, rep_ms: float = 300.0) -> Dict:
    """Seconds per call of ``fn`` on the current CUDA device (no per-iteration sync).

    The timed span is stretched to at least MIN_GPU_SAMPLES calls, so a slow method's median is
    never a single sample.
    """
    estimate = _one_call_ms(fn)
    # at least MIN_GPU_SAMPLES calls, but a slow baseline never gets more than MAX_GPU_SPAN_MS
    rep_ms = max(rep_ms, min(MIN_GPU_SAMPLES * estimate * 1.2, MAX_GPU_SPAN_MS))
    warmup_ms = max(warmup_ms, min(estimate, MAX_GPU_SPAN_MS / 4))
    try:
        from triton.testing import do_bench
    except ImportError:
        do_bench = None
    if do_bench is not None:
        if "return_mode" in inspect.signature(do_bench).parameters:
            ms = do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="all")
            return _summary([m / 1e3 for m in ms], "triton.testing.do_bench")
        ms = do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.0, 0.2, 0.5, 0.8, 1.0])  # an older Triton
        return _from_quantiles(list(ms), "triton.testing.do_bench (quantiles)")
    for _ in range(max(1, int(warmup_ms / estimate))):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    iters = max(1, int(rep_ms / estimate / MIN_GPU_SAMPLES))
    times = []
    for _ in range(MIN_GPU_SAMPLES):
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / iters / 1e3)
    return _summary(times, "cuda events")


def time_call(fn: Callable[[], object], device: torch.device, repeats: int = 5, warmup: int = 1,
              gpu_warmup_ms: float = 50.0, gpu_rep_ms: float = 300.0) -> Dict:
    if torch.device(device).type == "cuda":
        return time_gpu(fn, gpu_warmup_ms, gpu_rep_ms)
    return time_cpu(fn, repeats, warmup)


def _status_kb(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets the resident high-water mark (VmHWM) to the current RSS
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak host and device memory of the block it wraps (``with PeakMemory(device) as m``)."""

    def __init__(self, device="cpu"):
        self.device = torch.device(device)
        self.result: Dict = {}

    def __enter__(self) -> "PeakMemory":
        gc.collect()  # the previous case's cycles, so its memory does not count here
        gc.freeze()  # what is alive now stays: the next gc.collect() scans only newer objects (cheap)
        self.resettable = _reset_hwm()
        self.rss_before = _status_kb("VmRSS")
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc) -> None:
        hwm = _status_kb("VmHWM") if self.resettable else None
        if hwm is not None:
            peak_mb, source = hwm / 1024.0, "VmHWM (reset before the case)"
        else:  # ru_maxrss: kilobytes on Linux; the whole process's high-water mark
            peak_mb, source = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, "ru_maxrss (process lifetime)"
        before = (self.rss_before or 0) / 1024.0
        self.result = {"peak_rss_mb": peak_mb, "rss_before_mb": before, "peak_rss_delta_mb": peak_mb - before,
                       "rss_source": source}
        if self.device.type == "cuda":
            self.result["peak_device_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20


def pin_threads(threads: Optional[int] = None) -> Tuple[int, Optional[int]]:
    """Fix torch's and numba's thread counts to ``threads`` (default: torch's count now).

    numba's OpenMP threading layer shares the OpenMP runtime with torch, and starting it can
    change torch's thread count; so the layer is started first and both counts are set after.
    Returns the previous (torch, numba) counts, for :func:`restore_threads`.
    """
    before = torch.get_num_threads()
    n = threads or before
    numba_before = None
    try:
        import numba
    except ImportError:
        numba = None
    if numba is not None:
        numba_before = numba.get_num_threads()  # starts the threading layer
        numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    torch.set_num_threads(n)
    return before, numba_before


def restore_threads(previous: Tuple[int, Optional[int]]) -> None:
    torch.set_num_threads(previous[0])
    if previous[1] is not None:
        import numba

        numba.set_num_threads(previous[1])
