"""The attack-strength plot: the unsafe fraction against the budget δ, one line per attack, with
95 % Clopper-Pearson intervals and a certificate's δ_cert, δ_direct and ε marked.

The series come from a certificate's ``empirical`` cells (``certify --emp``) or, without them,
from its probes' verification runs (the sampling attack alone), or from ``barrierkit attack``'s
rows. Drawing needs matplotlib (the ``plot`` extra); the series do not.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from .empirical import clopper_pearson


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed; the message says how to install it."""


@dataclass(frozen=True)
class Series:
    """One attack's measured points, increasing in δ."""

    label: str
    deltas: List[float]
    unsafe: List[int]
    n: List[int]

    @property
    def fractions(self) -> List[float]:
        return [k / m for k, m in zip(self.unsafe, self.n)]

    @property
    def intervals(self) -> List[List[float]]:
        return [clopper_pearson(k, m) for k, m in zip(self.unsafe, self.n)]


@dataclass(frozen=True)
class Figure:
    """What one plot shows: its series and the marks (vertical budgets, a horizontal rate)."""

    title: str
    series: List[Series]
    budgets: Dict[str, float] = field(default_factory=dict)  # label -> δ, drawn as vertical lines
    rate: Optional[float] = None  # the certificate's ε, drawn as a horizontal line
    rate_label: str = ""
    budget_symbol: str = "δ"  # δ′ when the budget is the test-time one


def series_from_rows(rows: Sequence[Dict[str, Any]], own: Optional[str] = None) -> List[Series]:
    """One series per attack from cells with ``attack``, ``delta``, ``unsafe`` and ``n`` (the
    order of first appearance; ``own`` is labelled as the certified attack)."""
    by_attack: Dict[str, List[Dict[str, Any]]] = {}
    for r in rows:
        by_attack.setdefault(r["attack"], []).append(r)
    out = []
    for attack, cells in by_attack.items():
        cells = sorted(cells, key=lambda r: r["delta"])
        out.append(Series(f"{attack} (certified attack)" if attack == own else attack, [float(r["delta"]) for r in cells],
                          [int(r["unsafe"]) for r in cells], [int(r["n"]) for r in cells]))
    return out


def certificate_figure(doc: Dict[str, Any]) -> Figure:
    """The plot of a certificate: its δ_emp cells when it has them, else its probes' verification
    runs; δ_cert and δ_direct (where they exist) and ε at δ_cert marked."""
    from .report import certified_attack, searched_threat, searches_evasion

    own = certified_attack(doc)
    symbol = "δ′" if searches_evasion(doc) else "δ"
    emp = doc.get("empirical")
    if emp is not None:
        series = series_from_rows(emp["rows"], own)
    else:
        probes = sorted(doc["probes"], key=lambda p: p["delta"])
        series = [Series(f"{own} (certified attack, verification runs)", [float(p["delta"]) for p in probes],
                         [int(p["n_unsafe_verify"]) for p in probes], [int(p["n_verify"]) for p in probes])]
    radii = doc["radii"]
    budgets = {f"{symbol}_{name} = {radii['delta_' + name]:.4g}": float(radii["delta_" + name])
               for name in ("cert", "direct") if radii["delta_" + name] is not None}
    threat = searched_threat(doc)
    norm = "ℓ∞" if threat["norm"] == "inf" else "ℓ2"
    rho = "ρ′" if searches_evasion(doc) else "ρ"
    title = (f"{doc['status']}: {doc['config']['sample']['dataset']}, {rho} = {threat['rho']:g}, {norm}, "
             f"α = {doc['config']['alpha']:g}")
    certified = radii["delta_cert"] is not None
    return Figure(title, series, budgets, rate=float(doc["epsilon"]) if certified else None,
                  rate_label=f"ε = {doc['epsilon']:.3g} (bound at {symbol}_cert)" if certified else "",
                  budget_symbol=symbol)


def strength_figure(result: Dict[str, Any]) -> Figure:
    """The plot of a ``barrierkit attack`` result (no certificate: nothing marked)."""
    return Figure(f"attack strength: {result['config']['dataset']}, ρ = {result['config']['threat']['rho']:g}, "
                  f"α = {result['alpha']:g}, {result['n']} runs per cell", series_from_rows(result["rows"]))


def require_matplotlib() -> None:
    """PlotUnavailable unless matplotlib can be imported (checked before long work)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotUnavailable("the plot needs matplotlib: pip install 'barrierkit[plot]'") from None


def png_bytes(figure: Figure) -> bytes:
    """The figure drawn as a PNG (matplotlib's Agg canvas, no global pyplot state); PlotUnavailable
    when matplotlib is not installed."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(7.0, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for k, s in enumerate(figure.series):  # markers shrink series by series so coinciding points stay visible
        low = [f - i[0] for f, i in zip(s.fractions, s.intervals)]
        high = [i[1] - f for f, i in zip(s.fractions, s.intervals)]
        ax.errorbar(s.deltas, s.fractions, yerr=[low, high], marker="osD^v"[k % 5], markersize=max(3.0, 9.0 - 2.0 * k),
                    capsize=3 + k, linestyle=("-", "--", "-.", ":")[k % 4], alpha=0.85, label=s.label)
    for (label, delta), style in zip(figure.budgets.items(), ("-", "--", ":")):
        ax.axvline(delta, color="black", linestyle=style, linewidth=1.0, label=label)
    if figure.rate is not None:
        ax.axhline(figure.rate, color="grey", linestyle=":", linewidth=1.0, label=figure.rate_label)
    ax.set_xlabel("test-time budget δ′" if figure.budget_symbol == "δ′" else "poisoning budget δ")
    ax.set_ylabel("unsafe fraction (95% Clopper–Pearson)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(figure.title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


__all__ = ["Figure", "PlotUnavailable", "Series", "certificate_figure", "png_bytes", "require_matplotlib", "series_from_rows", "strength_figure"]
