"""Seeded synthetic embedding sets with CLIP-like structure, for ANN tests and benchmarks.

Not Gaussian noise: like ``faiss.contrib.datasets.SyntheticDataset``, rows come from a
low-dimensional latent space pushed through a random projection and a nonlinearity,
then L2-normalised. On top of that the latent points are clustered (Zipf-sized
clusters, as catalog categories are) and a small isotropic noise term is added, so
neighbourhoods are neither trivial nor structureless.

The generator's parameters (centres, projection, frequencies) depend on ``seed`` only;
rows are drawn per chunk from independent seeded streams, so the base set and the
held-out queries come from the same distribution and any ``n`` is reproducible
without holding temporaries for all rows at once.

Example:
    >>> spec = SyntheticSpec(d=64, seed=3)
    >>> base = generate(spec, 1000, stream=0)
    >>> queries = generate(spec, 10, stream=1)    # held out: another stream
    >>> base.shape, queries.dtype
    ((1000, 64), dtype('float32'))
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

CHUNK = 65_536


@dataclass(frozen=True)
class SyntheticSpec:
    """Distribution of a synthetic embedding set."""

    d: int = 512
    seed: int = 0
    latent_dim: int = 16
    n_clusters: int = 1000
    cluster_spread: float = 0.5
    zipf_exponent: float = 0.8
    noise: float = 0.15


@dataclass(frozen=True)
class _Model:
    centres: npt.NDArray[np.float64]
    weights: npt.NDArray[np.float64]
    projection: npt.NDArray[np.float64]
    frequency: npt.NDArray[np.float64]
    phase: npt.NDArray[np.float64]


def _model(spec: SyntheticSpec) -> _Model:
    rs = np.random.default_rng([spec.seed, 0xC11])
    centres = rs.normal(size=(spec.n_clusters, spec.latent_dim))
    weights = 1.0 / np.arange(1, spec.n_clusters + 1) ** spec.zipf_exponent
    projection = rs.normal(size=(spec.latent_dim, spec.d)) / np.sqrt(spec.latent_dim)
    frequency = rs.uniform(0.3, 2.0, size=spec.d)  # higher -> less linear
    phase = rs.uniform(0, 2 * np.pi, size=spec.d)
    return _Model(centres, weights / weights.sum(), projection, frequency, phase)


def generate(
    spec: SyntheticSpec, n: int, *, stream: int = 0, out: npt.NDArray[np.float32] | None = None
) -> npt.NDArray[np.float32]:
    """``n`` L2-normalised float32 rows of dimension ``spec.d`` from stream ``stream``,
    written into ``out`` when given."""
    out = np.empty((n, spec.d), np.float32) if out is None else out
    for chunk_index, start in enumerate(range(0, n, CHUNK)):
        m = min(CHUNK, n - start)
        out[start : start + m] = generate_chunk(spec, m, stream, chunk_index)
    return out


def generate_chunk(
    spec: SyntheticSpec, m: int, stream: int, chunk_index: int
) -> npt.NDArray[np.float32]:
    """Rows ``chunk_index * CHUNK`` onwards of a stream (each chunk seeded by its index,
    so a large set can be generated piece by piece with the same result)."""
    model = _model(spec)
    rs = np.random.default_rng([spec.seed, stream, chunk_index])
    cluster = rs.choice(spec.n_clusters, size=m, p=model.weights)
    z = model.centres[cluster] + spec.cluster_spread * rs.normal(size=(m, spec.latent_dim))
    x = np.sin((z @ model.projection) * model.frequency + model.phase)
    x += spec.noise * rs.normal(size=x.shape)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def describe(x: npt.NDArray[np.float32], *, sample: int = 1000, seed: int = 0) -> dict[str, float]:
    """Cosine statistics of a sample: random pairs and the nearest other row."""
    rs = np.random.default_rng(seed)
    idx = rs.choice(len(x), size=min(sample, len(x)), replace=False)
    s = x[idx] @ x.T
    s[np.arange(len(idx)), idx] = -np.inf
    top = np.sort(s, axis=1)[:, ::-1]
    pairs = (x[idx] * x[rs.choice(len(x), size=len(idx))]).sum(1)
    return {
        "random_pair_cos_mean": float(pairs.mean()),
        "nn1_cos_mean": float(top[:, 0].mean()),
        "nn10_cos_mean": float(top[:, 9].mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description="describe a synthetic embedding set")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    x = generate(SyntheticSpec(d=args.d, seed=args.seed), args.n)
    print(describe(x))


if __name__ == "__main__":
    main()
