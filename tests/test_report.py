"""The report says only what the certificate supports, and explains what needs explaining."""
import copy

import pytest

from barrierkit.certificate import Certificate
from barrierkit.outcomes import overall_status
from barrierkit.radius import radii
from barrierkit.report import radii_lines

pytestmark = pytest.mark.portability  # also run under ATEN_CPU_CAPABILITY=default and avx2 (tests/test_portability.py)


def with_radii(doc):
    doc["radii"] = radii(doc["probes"], overall_status(doc["probes"])[2], doc["radii"]["max_budget"], doc["config"]["delta_hi"])
    return doc


def test_delta_cert_above_delta_direct_is_explained(cli_certificate):
    """A probe the barrier certifies fails the direct bound when one of its training runs ended
    unsafe: the direct bound counts the training split too."""
    doc = copy.deepcopy(Certificate.load(cli_certificate).doc)
    best = max((p for p in doc["probes"] if p["status"] == "CERTIFIED"), key=lambda p: p["delta"])
    best["n_unsafe_train"] = 1
    for p in doc["probes"]:
        p["direct"]["passed"] = p["direct"]["passed"] and p is not best and p["delta"] < best["delta"]
    text = "\n".join(radii_lines(with_radii(doc)))
    assert doc["radii"]["delta_direct"] is None or doc["radii"]["delta_direct"] < best["delta"]
    assert "δ_cert > δ_direct" in text and "training split 1" in text and "counts every run" in text


def test_delta_direct_above_delta_cert_is_explained(cli_certificate):
    doc = copy.deepcopy(Certificate.load(cli_certificate).doc)
    best = max((p for p in doc["probes"] if p["status"] == "CERTIFIED"), key=lambda p: p["delta"])
    best.update(status="INCONCLUSIVE", reason="eta_check=0.1 >= -tau=-1e-07")
    text = "\n".join(radii_lines(with_radii(doc)))
    assert "δ_direct > δ_cert" in text and "could not certify" in text and "eta_check=0.1" in text


def test_a_recipe_that_does_not_learn_gets_a_near_chance_warning(tmp_path, capsys):
    from barrierkit.cli import main

    out = tmp_path / "c.json"
    main(["certify", "--steps", "40", "--record-every", "20", "--lr", "1e-5", "--n-verify", "40", "--n-train", "20",
          "--n-clean", "10", "--n-pool", "10", "--max-probes", "2", "--epsilon", "0.6", "--beta", "0.1", "--delta-hi",
          "0.01", "--quiet", "--out", str(out)])
    captured = capsys.readouterr()
    cert = Certificate.load(out)
    assert cert.check() == [] and len(cert.doc["warnings"]) == 1 and "near chance" in cert.doc["warnings"][0]
    assert "Warnings:" in captured.out and "near chance" in captured.err
