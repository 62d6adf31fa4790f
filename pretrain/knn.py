"""kNN accuracy of frozen features: the standard quick read of representation quality."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from lightly.utils.benchmarking import knn_predict

#: the protocol of lightly's and solo-learn's benchmark tables (Wu et al., CVPR 2018)
K, TEMPERATURE = 200, 0.1
PROTOCOL = "weighted kNN, cosine similarity, k=200, weights exp(sim/0.1)"


def knn_accuracy(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    k: int = K,
    temperature: float = TEMPERATURE,
) -> float:
    """Top-1 accuracy of lightly's ``knn_predict`` on L2-normalized features: the protocol of the
    published kNN tables, so that figures set beside them are computed the same way.

        >>> knn_accuracy(bank, bank_labels, queries, query_labels)  # doctest: +SKIP
        0.847

    A bank smaller than ``k`` votes with all of it. Queries go in chunks so that the similarity
    matrix and the ``k x classes`` votes per query stay at about 32M entries.
    """
    bank = F.normalize(torch.as_tensor(train_x, dtype=torch.float32), dim=1)
    labels = torch.tensor(np.asarray(train_y), dtype=torch.long)  # a copy: the input may be read-only
    queries = F.normalize(torch.as_tensor(test_x, dtype=torch.float32), dim=1)
    classes = int(max(labels.max(), int(np.max(test_y)))) + 1
    k = min(k, len(bank))
    chunk = max(1, 2**25 // max(len(bank), k * classes))
    predictions = torch.cat(
        [knn_predict(part, bank.T, labels, classes, k, temperature)[:, 0] for part in queries.split(chunk)]
    )
    return float((predictions.numpy() == np.asarray(test_y)).mean())
