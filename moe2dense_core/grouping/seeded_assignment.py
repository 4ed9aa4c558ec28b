"""Seeded one-pass clustering shared by the similarity groupers [defined here].

Seeds: the k highest-scoring kept experts (ranked[:k]), one per group. Every other kept expert joins
the seed it is most similar to:

    group(e) = argmax_{g < k} sim(e, seed_g)     (ties: the higher-ranked seed)

Groups are listed in seed rank order; inside a group the seed comes first, then the members in rank
order (descending score, ties by index). A group of one (a seed nobody joined) is copied unmerged.

The similarity groupers measure sim as a cosine read off a Gram matrix of inner products,
cos_ij = G_ij / sqrt(G_ii G_jj) (`cosine_from_gram`); `groups_by_gram` is that whole path for a Gram
matrix over all E experts of the layer (`output_cluster`, `router_cluster`).
"""

from __future__ import annotations

import torch


def assign_to_seeds(ranked: list[int], num_groups: int, similarity: torch.Tensor) -> list[list[int]]:
    """Groups of expert indices.

    ranked: the K kept experts by descending score; num_groups: k ≤ K;
    similarity: [K, K] float64, similarity[a, b] = sim(ranked[a], ranked[b]) (only columns < k are read).
    """
    groups = [[seed] for seed in ranked[:num_groups]]
    for position in range(num_groups, len(ranked)):
        nearest = int(torch.argmax(similarity[position, :num_groups]))  # first maximum = higher-ranked seed
        groups[nearest].append(ranked[position])
    return groups


def cosine_from_gram(gram: torch.Tensor) -> torch.Tensor:
    """cos_ij = G_ij / sqrt(G_ii G_jj) [n, n] from a Gram matrix [n, n]; 0 where G_ii or G_jj is 0."""
    norms = torch.sqrt(torch.diagonal(gram).clamp(min=0))
    outer = norms[:, None] * norms[None, :]
    return torch.where(outer > 0, gram / torch.where(outer > 0, outer, torch.ones_like(outer)), 0.0)


def groups_by_gram(ranked: list[int], num_groups: int, gram: torch.Tensor) -> list[list[int]]:
    """Seeded groups by cosine similarity, from a Gram matrix over all E experts of the layer.

    gram: [E, E] float64 inner products (e.g. LayerStats.gram); its kept block G_S [K, K] (rows and
    columns in `ranked` order) is symmetrised as (G_S + G_Sᵀ)/2 against accumulation round-off, turned
    into cosines and passed to `assign_to_seeds`.
    """
    kept = torch.as_tensor(ranked, dtype=torch.long)
    kept_gram = gram[kept][:, kept]
    return assign_to_seeds(ranked, num_groups, cosine_from_gram((kept_gram + kept_gram.T) / 2))
