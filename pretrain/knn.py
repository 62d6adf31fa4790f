"""kNN accuracy of frozen features: the standard quick read of representation quality."""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import KNeighborsClassifier


def knn_accuracy(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, k: int = 20
) -> float:
    """Cosine-distance kNN accuracy, as in lightly's and solo-learn's benchmarks (Wu et al., 2018)."""
    model = KNeighborsClassifier(n_neighbors=min(k, len(train_y)), metric="cosine", weights="distance")
    return float(np.mean(model.fit(train_x, train_y).predict(test_x) == test_y))
