"""Trajectories: the one data structure the stages share (features, outcomes, seeds, timings).

Nothing downstream of the engine touches parameters; it reads this. Saved as a single ``.npz``
(arrays plus a JSON metadata string, no pickle), written atomically.
"""
from __future__ import annotations

import json
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import IO, Any, Dict, Optional

import numpy as np

from .io import write_atomic
from .labels import check_hits

SEED_COLUMNS = ("init", "poison", "schedule")
FORMAT = "barrierkit.trajectories/3"
READABLE = (FORMAT, "barrierkit.trajectories/2")  # /2 predates reference_hits (poisoning runs only)


@dataclass
class Trajectories:
    """N recorded training runs at one budget delta."""

    features: np.ndarray  # [N, K+1, k] float64
    test_hits: np.ndarray  # [N] int64: correctly classified test points of theta(T)
    test_size: int  # P, the number of test points; g(theta(T)) = test_hits / P
    seeds: np.ndarray  # [N, 3] int64: (init, poison, schedule)
    poison_fraction: np.ndarray  # [N] float64: realised fraction of poisoned training points
    delta: float
    meta: Dict[str, Any] = field(default_factory=dict)
    reference_hits: Optional[np.ndarray] = None  # [N] int64, evasion runs only: each run's own clean count

    def __post_init__(self) -> None:
        n = self.features.shape[0]
        if self.features.ndim != 3:
            raise ValueError(f"features: must be [N, K+1, k], got shape {self.features.shape}")
        self.test_hits = check_hits(self.test_hits, self.test_size)
        self.test_size = int(self.test_size)
        if self.reference_hits is not None:
            self.reference_hits = check_hits(self.reference_hits, self.test_size, "reference_hits")
            if self.reference_hits.shape != (n,):
                raise ValueError(f"reference_hits: must have shape ({n},), got {self.reference_hits.shape}")
        for name in ("test_hits", "poison_fraction"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"{name}: must have shape ({n},), got {getattr(self, name).shape}")
        if self.seeds.shape != (n, 3):
            raise ValueError(f"seeds: must have shape ({n}, 3), got {self.seeds.shape}")

    @property
    def n(self) -> int:
        return int(self.features.shape[0])

    @property
    def intervals(self) -> int:
        """K, the number of recorded intervals."""
        return int(self.features.shape[1] - 1)

    @property
    def test_accuracy(self) -> np.ndarray:
        """g(theta(T)) = test_hits / P per trajectory, float64 (safety labels use the counts)."""
        return self.test_hits / self.test_size

    def write_to(self, fh: IO[bytes]) -> None:
        """The .npz bytes (arrays plus the metadata as a JSON string, no pickle) into ``fh``."""
        extra = {} if self.reference_hits is None else {"reference_hits": self.reference_hits}
        np.savez(fh, format=np.array(FORMAT), features=self.features, test_hits=self.test_hits,
                 test_size=np.int64(self.test_size), seeds=self.seeds, poison_fraction=self.poison_fraction,
                 delta=np.float64(self.delta), meta=np.array(json.dumps(self.meta, sort_keys=True)), **extra)

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically to ``path`` (.npz, owner-only): never a half-written file."""
        write_atomic(path, self.write_to)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Trajectories":
        """Read a file written by :meth:`save`; a missing, foreign, old or damaged file raises
        :class:`TrajectoriesError` naming it."""
        name = os.fspath(path)
        try:
            with np.load(name, allow_pickle=False) as z:
                if "format" not in z.files or str(z["format"]) not in READABLE:
                    raise TrajectoriesError(f"{name}: not a {FORMAT} file (files from before exact hit counts must be re-sampled)")
                return cls(
                    features=z["features"], test_hits=z["test_hits"], test_size=int(z["test_size"]), seeds=z["seeds"],
                    poison_fraction=z["poison_fraction"], delta=float(z["delta"]), meta=json.loads(str(z["meta"])),
                    reference_hits=z["reference_hits"] if "reference_hits" in z.files else None,
                )
        except TrajectoriesError:
            raise
        except OSError as exc:
            raise TrajectoriesError(f"{name}: cannot read trajectories: {exc.strerror or exc}") from None
        except (KeyError, EOFError, zipfile.BadZipFile, ValueError, TypeError, zlib.error) as exc:
            # a truncated or altered archive fails in zipfile, zlib, numpy's header parser, json or
            # the field checks; all of them mean the same thing to the reader
            raise TrajectoriesError(f"{name}: damaged or not a trajectories file ({type(exc).__name__}: {exc})") from None


class TrajectoriesError(ValueError):
    """A trajectories file is missing, unreadable, damaged or of another format; names the file."""
