"""The attack-strength plot and the HTML report: their series, the PNG, the page, and the CLI's
--plot / --html (checked before work, nothing written on a bad certificate or a missing matplotlib)."""
import copy
import html
import json
import os
import sys

import pytest

from barrierkit.certificate import Certificate
from barrierkit.cli import main
from barrierkit.empirical import clopper_pearson
from barrierkit.figures import PlotUnavailable, certificate_figure, png_bytes, series_from_rows, strength_figure
from barrierkit.html_report import certificate_html

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_series_group_by_attack_in_increasing_budget():
    rows = [{"attack": "b", "delta": 0.2, "unsafe": 3, "n": 10}, {"attack": "a", "delta": 0.1, "unsafe": 0, "n": 10},
            {"attack": "b", "delta": 0.1, "unsafe": 1, "n": 10}]
    series = series_from_rows(rows, own="a")
    assert [s.label for s in series] == ["b", "a (certified attack)"]
    assert series[0].deltas == [0.1, 0.2] and series[0].unsafe == [1, 3]
    assert series[0].fractions == [0.1, 0.3]
    assert series[0].intervals[1] == clopper_pearson(3, 10)


def test_certificate_figure_from_the_emp_cells(cli_certificate):
    doc = Certificate.load(cli_certificate).doc
    figure = certificate_figure(doc)
    emp = doc["empirical"]
    assert [s.label.split(" ")[0] for s in figure.series] == emp["attacks"]
    assert sum(len(s.deltas) for s in figure.series) == len(emp["rows"])
    assert figure.budgets[f"δ_cert = {doc['radii']['delta_cert']:.4g}"] == doc["radii"]["delta_cert"]
    assert figure.rate == doc["epsilon"]


def test_certificate_figure_without_emp_uses_the_verification_runs(cli_certificate):
    doc = copy.deepcopy(Certificate.load(cli_certificate).doc)
    doc["empirical"] = None
    (series,) = certificate_figure(doc).series
    assert "verification runs" in series.label
    probes = sorted(doc["probes"], key=lambda p: p["delta"])
    assert series.deltas == [p["delta"] for p in probes]
    assert series.unsafe == [p["n_unsafe_verify"] for p in probes] and series.n == [p["n_verify"] for p in probes]
    assert any(k > 0 for k in series.unsafe), "the fixture's refuted probes have unsafe verification runs"


def test_an_uncertified_document_marks_no_rate(cli_certificate):
    doc = copy.deepcopy(Certificate.load(cli_certificate).doc)
    doc["radii"]["delta_cert"] = None
    figure = certificate_figure(doc)
    assert figure.rate is None and not any(label.startswith("δ_cert") for label in figure.budgets)


def test_strength_figure_of_an_attack_result():
    result = {"config": {"dataset": "digits", "threat": {"rho": 0.5}}, "alpha": 0.05, "n": 10,
              "rows": [{"attack": "sign", "delta": 0.1, "unsafe": 2, "n": 10}]}
    figure = strength_figure(result)
    assert figure.budgets == {} and figure.rate is None and figure.series[0].unsafe == [2]


def test_png_is_a_png(cli_certificate):
    pytest.importorskip("matplotlib")
    data = png_bytes(certificate_figure(Certificate.load(cli_certificate).doc))
    assert data.startswith(PNG_MAGIC) and len(data) > 5000


def test_html_page_holds_the_plot_the_cells_and_the_report(cli_certificate):
    cert = Certificate.load(cli_certificate)
    page = certificate_html(cert.doc, PNG_MAGIC + b"x", "")
    assert "data:image/png;base64," in page and json.loads(cli_certificate.read_text())["digest"] in page
    assert page.count("<tr><td>") == len(cert.doc["empirical"]["rows"])
    assert html.escape(cert.summary()) in page  # the whole report, escaped into the page
    without = certificate_html(cert.doc, None, "the plot needs matplotlib")
    assert "No plot: the plot needs matplotlib" in without and "data:image/png" not in without


def test_cli_report_writes_plot_and_html(cli_certificate, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png, page = tmp_path / "p.png", tmp_path / "p.html"
    assert main(["report", str(cli_certificate), "--plot", str(png), "--html", str(page)]) == 0
    assert png.read_bytes().startswith(PNG_MAGIC)
    assert "data:image/png;base64," in page.read_text(encoding="utf-8")
    out = capsys.readouterr().out
    assert f"wrote {png} (--plot)" in out and "barrierkit certificate:" in out


def _hide_matplotlib(monkeypatch):
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError


def test_without_matplotlib_plot_is_refused_and_html_says_so(cli_certificate, tmp_path, capsys, monkeypatch):
    _hide_matplotlib(monkeypatch)
    with pytest.raises(PlotUnavailable):
        png_bytes(certificate_figure(Certificate.load(cli_certificate).doc))
    png, page = tmp_path / "p.png", tmp_path / "p.html"
    assert main(["report", str(cli_certificate), "--plot", str(png), "--html", str(page)]) == 2
    assert "barrierkit[plot]" in capsys.readouterr().err
    assert not png.exists() and not page.exists(), "nothing half-written"
    assert main(["report", str(cli_certificate), "--html", str(page)]) == 0
    assert "No plot: the plot needs matplotlib" in page.read_text(encoding="utf-8")


def test_attack_plot_without_matplotlib_is_refused_before_work(tmp_path, capsys, monkeypatch):
    from conftest import no_work

    no_work(monkeypatch)
    _hide_matplotlib(monkeypatch)
    out = tmp_path / "a.json"
    assert main(["attack", "--attacks", "sign", "--n", "2", "--n-clean", "2", "--out", str(out),
                 "--plot", str(tmp_path / "a.png")]) == 2
    assert "plot: the plot needs matplotlib" in capsys.readouterr().err and not out.exists()


def test_report_files_refused_for_a_bad_certificate_or_path(cli_certificate, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    doc = json.loads(cli_certificate.read_text())
    doc["radii"]["delta_cert"] = 1.0
    bad.write_text(json.dumps(doc))
    png = tmp_path / "p.png"
    png.write_bytes(b"keep me")
    assert main(["report", str(bad), "--plot", str(png)]) != 0
    assert png.read_bytes() == b"keep me", "an existing file is not lost to a certificate that fails its checks"
    assert main(["report", str(cli_certificate), "--html", str(cli_certificate)]) == 2
    assert "same file as certificate" in capsys.readouterr().err
    assert Certificate.load(cli_certificate).check() == []
    assert main(["report", str(cli_certificate), "--plot", str(tmp_path / "no" / "p.png")]) == 2
    assert not os.path.exists(tmp_path / "no")


@pytest.mark.slow
def test_cli_attack_writes_its_plot(tmp_path):
    pytest.importorskip("matplotlib")
    out, png = tmp_path / "a.json", tmp_path / "a.png"
    assert main(["attack", "--attacks", "sign", "--deltas", "0.2", "--n", "3", "--n-clean", "3", "--steps", "20",
                 "--record-every", "10", "--out", str(out), "--plot", str(png), "--quiet"]) == 0
    assert png.read_bytes().startswith(PNG_MAGIC) and json.loads(out.read_text())["rows"][0]["n"] == 3
