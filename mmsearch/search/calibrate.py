"""The index's chance level: what a cosine is worth against a meaningless query.

A model's cosines have no scale in themselves: a contrastive model maps words it
never learned somewhere in the space, and some stored rows will be near it. So the
index calibrates against chance on itself: :data:`N_PROBES` seeded nonsense strings
(random letters) are embedded by the same model and searched per kind, :data:`CHANCE_DEPTH`
deep. Per kind (:class:`Chance`):

* ``level``, the median of the probes' best cosines: what the best hit of a typical
  query that means nothing gets. Relative fusion (:mod:`mmsearch.search.fuse`) counts
  a vector hit by how far it lies above it;
* ``scale``, the median over probes of how far their cosines fall from the best to the
  :data:`CHANCE_DEPTH`-th hit: the size of the differences chance alone makes among a
  leg's hits, the unit of that height;
* ``floor``, the :data:`PROBE_QUANTILE` of the probes' best cosines: a best hit under
  it is no better than what one meaningless query in twenty gets.

Hybrid's "no good match" cut-off uses the floors: a query whose best hit of every kind
sits under its kind's floor, and whose words the lexical leg found nowhere, matches
nothing better than noise would, and gets an empty answer with a reason.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

N_PROBES = 64
PROBE_QUANTILE = 95.0
#: How deep each probe searches a kind (the fused legs' usual depth).
CHANCE_DEPTH = 50
#: Smallest scale (cosine units) a kind gets, so a tiny index cannot make it zero.
MIN_SCALE = 1e-3


@dataclass(frozen=True)
class Chance:
    """A kind's chance level: ``level`` and ``floor`` (cosines), ``scale`` (a cosine difference)."""

    level: float
    scale: float
    floor: float


def probe_texts(n: int = N_PROBES, seed: int = 0) -> list[str]:
    """``n`` seeded nonsense queries: two random lower-case 'words' of 3 to 8 letters."""
    rng = np.random.default_rng(seed)
    letters = np.asarray(list(string.ascii_lowercase))

    def word() -> str:
        return "".join(rng.choice(letters, size=int(rng.integers(3, 9))))

    return [f"{word()} {word()}" for _ in range(n)]


def kind_chance(top_by_kind: Mapping[str, npt.NDArray[np.float32]]) -> dict[str, Chance]:
    """Each kind's :class:`Chance` from the probes' top cosines against it.

    ``top_by_kind[kind]`` is ``(probes, depth)``, best first (depth may be 1 for a kind
    with one row; its scale is then :data:`MIN_SCALE`).
    """
    out: dict[str, Chance] = {}
    for kind, top in top_by_kind.items():
        top = np.asarray(top, dtype=np.float64)
        if top.ndim == 1:
            top = top[:, None]
        if top.size == 0:
            continue
        level = float(np.median(top[:, 0]))
        floor = float(np.percentile(top[:, 0], PROBE_QUANTILE))
        scale = float(np.median(top[:, 0] - top[:, -1])) if top.shape[1] > 1 else 0.0
        out[kind] = Chance(level, max(scale, MIN_SCALE), floor)
    return out
