"""S1 dimension-subset search: score every (or a seeded sample of) subset of CLS dimensions.

A trained linear head (``W [C, K]``, ``b [C]``) reads a K-dim CLS vector ``h``. At test time only
a subset ``S`` of dimensions feeds it, all others zeroed (DropConnect-style masking)::

    logits = W[:, S] @ h[S] + b

The paper (seed 000) could only *sample* 1-5 % of the C(768, 2) = 294,528 pairs and at most
0.1 % of the C(768, 3) = 75,202,816 triples. This package scores all of them exactly (and keeps
the paper's seeded sampling available). Its modules, each imported by name (no re-exports here):

* ``combinatorics``: counting, ranking, unranking and seeded sampling of subsets;
* ``kernels``: confusion-count metrics, score histograms and the (compiled or eager) block
  kernels that count predictions for dense blocks of pairs/triples;
* ``native``: the binary block kernel as hand-tiled AVX-512 C (``count_greater.c``), built
  per process; the CPU default for binary heads where it builds;
* ``scorer``: ``SubsetScorer``, one split's per-dimension contributions through the head;
* ``pearson``: the closed form the scorer uses for regression heads;
* ``ranking``: the deterministic order (score descending, dims ascending) and running top-k;
* ``search``: ``search_subsets`` (exhaustive or sampled pairs/triples) and its result;
* ``effective``: S1.T3's effective dimensions and S1.FL's per-layer redundancy;
* ``scan``: one fine-tuned run's whole scan (the `subsets` rule) and its Parquet files.

Ranking is deterministic everywhere: score descending, then dimension ids lexicographically
ascending. Scores are fractions like everywhere in tuneatlas (see ``tuneatlas.metrics``).
"""
