"""A certificate as one self-contained HTML page: the plain-text report, the attack-strength plot
(embedded, so the page is a single file) and the table of unsafe counts behind it."""
from __future__ import annotations

import base64
import html
from typing import Any, Dict, Optional

from .certificate import digest
from .figures import certificate_figure
from .report import summary_text


def cells_table(doc: Dict[str, Any]) -> str:
    """The measured cells of the plot as an HTML table, one row per (attack, budget)."""
    figure = certificate_figure(doc)
    rows = []
    for s in figure.series:
        for delta, k, m, (low, high) in zip(s.deltas, s.unsafe, s.n, s.intervals):
            rows.append(f"<tr><td>{html.escape(s.label)}</td><td>{delta:.4g}</td><td>{k} / {m}</td>"
                        f"<td>{k / m:.4f}</td><td>[{low:.4f}, {high:.4f}]</td></tr>")
    return ("<table><thead><tr><th>attack</th><th>δ</th><th>unsafe runs</th><th>fraction</th>"
            "<th>95% Clopper–Pearson</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def certificate_html(doc: Dict[str, Any], png: Optional[bytes], missing_plot: str = "") -> str:
    """The page. ``png`` is the plot (``figures.png_bytes`` of ``certificate_figure(doc)``);
    without it the page says why (``missing_plot``) and keeps everything else."""
    title = f"barrierkit certificate: {doc['status']}"
    if png is not None:
        plot = (f'<img alt="unsafe fraction against the budget per attack" '
                f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">')
    else:
        plot = f"<p><em>No plot: {html.escape(missing_plot)}</em></p>"
    source = ("the empirical cells of certify --emp" if doc.get("empirical") is not None
              else "the probes' verification runs (sampling attack only: certify --emp adds stronger attacks)")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; max-width: 60em; margin: 2em auto; padding: 0 1em; }}
pre {{ white-space: pre-wrap; background: #f6f6f6; padding: 1em; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<h2>Unsafe fraction against the budget</h2>
{plot}
<p>From {html.escape(source)}; certificate digest <code>{digest(doc)}</code>.</p>
{cells_table(doc)}
<h2>Report</h2>
<pre>{html.escape(summary_text(doc))}</pre>
</body></html>
"""


__all__ = ["cells_table", "certificate_html"]
