"""S5's names: the clusters of a clustering and the cluster-specialised members trained on them.

Pure functions of k, shared by the plan (member dataset and run ids) and the clustering jobs
(`tuneatlas.analysis.clusters`: cluster names in the assignments).
"""

from __future__ import annotations

from typing import Any


def cluster_labels(k: int) -> list[str]:
    """A, B, C, ... for k <= 26 (the study's names), else c01, c02, ... (always distinct)."""
    if k <= 26:
        return [chr(ord("A") + i) for i in range(k)]
    width = len(str(k))
    return [f"c{i + 1:0{width}d}" for i in range(k)]


def members(k: int) -> list[dict[str, Any]]:
    """The k cluster-specialised members, in the study's order (k = 3: AB, BC, CA).

    Member i trains on every cluster but cluster (i - 1) mod k, listed cyclically from cluster
    i. Its name joins the lower-case cluster names for k <= 4 (`ab`, `bc`, `ca`) and reads
    `wo-<excluded>` ("without") beyond, so that ids stay short, readable and distinct.
    """
    labels = cluster_labels(k)
    out = []
    for i in range(k):
        excluded = (i - 1) % k
        included = [labels[(i + j) % k] for j in range(k - 1)]
        name = "".join(included).lower() if k <= 4 else f"wo-{labels[excluded].lower()}"
        out.append({"name": name, "clusters": included, "excluded": labels[excluded]})
    return out
