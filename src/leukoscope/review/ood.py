"""Does this image look like the training data? A Mahalanobis out-of-distribution score on the network's
penultimate features.

Softmax confidence is no out-of-distribution detector: a model trained on one lab's smears can call another
lab's normal lymphocytes Pre-B ALL with 0.95 confidence. So the review flag also looks at the features: the
distance to the nearest class mean under a shared (pooled within-class) covariance, fitted on the training
part and thresholded so that about 5% of the validation images are flagged. Pixel-level checks (blur,
blank or noise images) are in leukoscope.review.quality.

The covariance of 1,280 features from ~2,000 images is poorly conditioned, so it is shrunk (Ledoit-Wolf)
and stored as a low-rank model: the top principal directions with their variances, plus one residual
variance for everything else. That keeps `ood.npz` small (~0.3 MB for MobileNetV2 instead of 6.5 MB for a
full precision matrix) while the distance stays a proper Mahalanobis distance of that covariance.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leukoscope.data.fileio import write_bytes
from leukoscope.errors import ModelError

OOD_FILE = "ood.npz"  # the statistics in a model package (MahalanobisOOD.save / load)
DEFAULT_COMPONENTS = 64
DEFAULT_QUANTILE = 0.95


@dataclass
class MahalanobisOOD:
    """Class means, a low-rank shrunk shared covariance, and the threshold on the distance."""

    means: np.ndarray  # (C, D)
    components: np.ndarray  # (k, D) orthonormal principal directions
    variances: np.ndarray  # (k,) variance along each direction
    residual_variance: float  # variance in every direction orthogonal to the components
    threshold: float = float("inf")

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray, *, n_components: int = DEFAULT_COMPONENTS) -> MahalanobisOOD:
        """Fit class means and the pooled within-class covariance (Ledoit-Wolf shrinkage) on `features`.

        >>> rng = np.random.default_rng(0)
        >>> ood = MahalanobisOOD.fit(rng.normal(size=(40, 5)), np.arange(40) % 2)
        >>> bool(ood.score(np.full((1, 5), 50.0))[0] > ood.score(rng.normal(size=(1, 5)))[0])
        True
        """
        from sklearn.covariance import ledoit_wolf_shrinkage

        x = np.asarray(features, dtype=np.float64)
        y = np.asarray(labels)
        if x.ndim != 2 or len(x) != len(y) or len(x) < 2:
            raise ValueError(f"need (N, D) features with N >= 2 and N labels, got {x.shape} and {y.shape}")
        present = np.unique(y)
        n_classes = int(y.max()) + 1
        means = np.zeros((n_classes, x.shape[1]))
        for c in present:
            means[c] = x[y == c].mean(axis=0)
        centred = x - means[y]
        dof = max(len(x) - len(present), 1)
        cov = centred.T @ centred / dof
        alpha = float(ledoit_wolf_shrinkage(centred, assume_centered=True))
        mu = float(np.trace(cov)) / cov.shape[0]
        eigvals, eigvecs = np.linalg.eigh((1.0 - alpha) * cov + alpha * mu * np.eye(cov.shape[0]))
        order = np.argsort(eigvals)[::-1]
        eigvals, eigvecs = eigvals[order], eigvecs[:, order]
        floor = max(mu * 1e-6, 1e-12)
        k = int(min(n_components, x.shape[1] - 1)) if x.shape[1] > 1 else 1
        rest = eigvals[k:]
        residual = float(rest.mean()) if rest.size else float(eigvals[-1])
        # Classes absent from the fitting data get an unreachable mean, so they never are "nearest".
        for c in set(range(n_classes)) - set(present.tolist()):
            means[c] = np.inf
        return cls(means.astype(np.float32), eigvecs[:, :k].T.astype(np.float32),
                   np.maximum(eigvals[:k], floor).astype(np.float32), max(residual, floor))

    def score(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row to its nearest class mean (larger = less like training)."""
        x = np.asarray(features, dtype=np.float64)
        best = np.full(len(x), np.inf)
        comps = self.components.astype(np.float64)
        for mean in self.means.astype(np.float64):
            if not np.all(np.isfinite(mean)):
                continue
            diff = x - mean
            proj = diff @ comps.T
            total = np.einsum("ij,ij->i", diff, diff)
            inside = np.einsum("ij,ij->i", proj, proj)
            d2 = (proj**2 / self.variances).sum(axis=1) + np.maximum(total - inside, 0.0) / self.residual_variance
            best = np.minimum(best, d2)
        return np.sqrt(best)

    def set_threshold(self, scores: np.ndarray, quantile: float = DEFAULT_QUANTILE) -> float:
        """Threshold at the `quantile` of in-distribution (validation) scores: ~(1 - quantile) flagged."""
        self.threshold = float(np.quantile(np.asarray(scores, dtype=np.float64), quantile))
        return self.threshold

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, means=self.means, components=self.components, variances=self.variances,
                 residual_variance=np.float64(self.residual_variance), threshold=np.float64(self.threshold))
        return buffer.getvalue()

    def save(self, path: str | Path) -> None:
        write_bytes(path, self.to_bytes())

    @classmethod
    def load(cls, path: str | Path) -> MahalanobisOOD:
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(data["means"], data["components"], data["variances"],
                           float(data["residual_variance"]), float(data["threshold"]))
        except (OSError, KeyError, ValueError) as exc:
            raise ModelError(f"cannot read out-of-distribution statistics {path}: {exc}") from None
