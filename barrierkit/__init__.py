"""barrierkit: barrier certificates for the robustness of neural-network training to poisoning.

The configuration classes are imported with the package; the rest (``certify``, ``replay``,
``sample``, ``Certificate``, ``Trajectories``, ``Dataset``, ``get_dataset``) load on first use, so
``import barrierkit`` stays cheap. No module of the package imports this one.
"""
from importlib import import_module
from typing import Any

from .config import (BarrierConfig, CertifyConfig, ConfigError, FeatureSpec, ModelSpec, SampleConfig, SamplingAttack,
                     ThreatModel, TrainRecipe)
from .version import __version__

_LAZY = {
    "certify": "api", "replay": "api", "sample": "engine", "Certificate": "certificate", "CertificateError": "certificate",
    "Trajectories": "trajectories", "TrajectoriesError": "trajectories", "Dataset": "data", "get_dataset": "data",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BarrierConfig", "CertifyConfig", "ConfigError", "FeatureSpec", "ModelSpec", "SampleConfig", "SamplingAttack",
           "ThreatModel", "TrainRecipe", "__version__", *_LAZY]
