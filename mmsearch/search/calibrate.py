"""Hybrid's calibrated cut-off: how high a cosine must be to beat a meaningless query.

"No good match" needs a scale, and a model's cosines have none in themselves: a
contrastive model maps words it never learned somewhere in the space, and some
stored rows will be near it. So the index calibrates against chance on itself:
:data:`N_PROBES` seeded nonsense strings (random letters) are embedded by the same
model and searched per kind; a kind's *floor* is the :data:`PROBE_QUANTILE` of their
best cosines. A query whose best hit of every kind sits under that kind's floor —
and whose words the lexical leg found nowhere — matches nothing better than noise
would, and gets an empty answer with a reason.
"""

from __future__ import annotations

import string
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

N_PROBES = 64
PROBE_QUANTILE = 95.0


def probe_texts(n: int = N_PROBES, seed: int = 0) -> list[str]:
    """``n`` seeded nonsense queries: two random lower-case 'words' of 3 to 8 letters."""
    rng = np.random.default_rng(seed)
    letters = np.asarray(list(string.ascii_lowercase))

    def word() -> str:
        return "".join(rng.choice(letters, size=int(rng.integers(3, 9))))

    return [f"{word()} {word()}" for _ in range(n)]


def kind_floors(best_by_kind: Mapping[str, npt.NDArray[np.float32]]) -> dict[str, float]:
    """Each kind's floor from the probes' best cosines against it."""
    return {
        kind: float(np.percentile(best, PROBE_QUANTILE))
        for kind, best in best_by_kind.items()
        if len(best)
    }
