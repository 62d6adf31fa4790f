"""The kNN monitor follows the published protocol (k=200, cosine, exp(sim/0.1) weights)."""

from __future__ import annotations

import numpy as np

from pretrain.knn import knn_accuracy


def _protocol(bank, labels, queries, k=200, t=0.1):
    """The protocol written out with numpy: top-k cosine neighbours vote with exp(sim / t)."""
    bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = queries @ bank.T
    votes = np.zeros((len(queries), labels.max() + 1))
    for i, row in enumerate(sims):
        top = np.argsort(-row)[: min(k, len(bank))]
        np.add.at(votes[i], labels[top], np.exp(row[top] / t))
    return votes.argmax(1)


def test_matches_the_protocol_written_out():
    rng = np.random.default_rng(0)
    bank, labels = rng.normal(size=(600, 16)), rng.integers(0, 5, 600)
    queries = rng.normal(size=(300, 16))
    truth = _protocol(bank, labels, queries)
    assert knn_accuracy(bank, labels, queries, truth) == 1.0
    assert knn_accuracy(bank, labels, queries, rng.integers(0, 5, 300)) < 0.5


def test_two_hundred_neighbours_vote_not_twenty():
    # 20 class-0 neighbours at cosine 0.95 and 180 class-1 neighbours at 0.85: the 20 nearest (the
    # old k=20 protocol) say 0; 200 neighbours weighted exp(sim / 0.1) say 1 (180 e^8.5 > 20 e^9.5)
    def at(cos: float, n: int) -> np.ndarray:
        return np.tile([[cos, np.sqrt(1 - cos**2)]], (n, 1))

    bank, labels = np.concatenate([at(0.95, 20), at(0.85, 180)]), np.array([0] * 20 + [1] * 180)
    query = np.array([[1.0, 0.0]])
    assert knn_accuracy(bank, labels, query, np.array([1])) == 1.0
    assert knn_accuracy(bank, labels, query, np.array([0]), k=20) == 1.0


def test_a_bank_smaller_than_k_votes_with_all_of_it():
    bank, labels = np.eye(3), np.arange(3)
    assert knn_accuracy(bank, labels, np.eye(3) + 0.01, labels) == 1.0
