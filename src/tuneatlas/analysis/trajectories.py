"""S3 trajectory analysis: pure array functions on embeddings captured every Δt steps.

Every function takes embeddings ``V`` of shape ``[T, D, H]`` (T captures in step order, D points,
H dimensions) and, where classes matter, integer ``labels`` of shape ``[D]``. Nothing here reads
files or knows about steps: index ``t`` is the capture index; the caller maps it to a step.

Which space. The paper (seed 002, §4.2) defines the embedding v_t^d as the last-layer [CLS]
hidden state itself and states the speed, the classic stay-point rule and the linearity index
on v_t^d; the 2-D PCA view is only used to draw. These functions therefore work in whatever
space they are given, and `tuneatlas.studies.s3` passes the full hidden space by default
(``space="hidden"``) with the PCA plane as an option (``space="pca"``). The thresholds D of
the classic rule are absolute distances, so they only mean what the paper meant in the space
and model the paper used.

Conventions fixed here (the paper leaves them implicit):
- interval i is capture i -> i+1; its displacement is ||v_{i+1} - v_i||. The speed at capture
  i+1 is the displacement over the interval that ends there ("past 10 steps", paper F9).
- classic stay point: v_t is staying when the displacements of the T intervals starting at t
  are all strictly below D; window starts t = 0 .. n_captures - 1 - T.
- linearity index: S_t = ||v_{t+k} - v_t|| / sum_{h=t}^{t+k-1} ||v_{h+1} - v_h|| for
  t = 0 .. n_captures - 1 - k. A point that does not move over the window (0/0) gets S = 0,
  i.e. it is staying: the index flags points that make no net progress, and a point at rest
  makes none (the ratio itself is undefined there).
- trajectory similarity: time-aligned ("lock-step") Euclidean distance, the mean over captures
  of the distance between two points at the same capture. Every trajectory is sampled at the
  same steps, so no alignment search (DTW) is needed. Trajectories and final embeddings are
  clustered by the same deterministic average-linkage agglomerative clustering, so the
  comparison isolates the similarity measure (a final embedding is a 1-capture trajectory).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import AgglomerativeClustering
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score

__all__ = [
    "ClusteringComparison",
    "check_embeddings",
    "class_means",
    "classic_stay_mask",
    "cluster_final",
    "cluster_trajectories",
    "compare_clusterings",
    "displacements",
    "first_stay_index",
    "has_stay",
    "linearity_index",
    "linearity_stay_mask",
    "match_clusters",
    "pca_project",
    "trajectory_distances",
]


def check_embeddings(V: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    """Validate ``V`` as float ``[T, D, H]`` (and ``labels`` as ``[D]``); return it as float64.

    float64 because displacements of nearly-staying points are differences of nearby float32
    vectors; summing many of them in float32 loses digits the thresholds care about.
    """
    V = np.asarray(V)
    if V.ndim != 3:
        raise ValueError(f"embeddings must be [T captures, D points, H dims]; got shape {V.shape}")
    if V.shape[0] < 1 or V.shape[1] < 1:
        raise ValueError(f"embeddings need at least one capture and one point; got {V.shape}")
    if not np.all(np.isfinite(V)):
        raise ValueError("embeddings contain NaN or inf; the capture that produced them is broken")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (V.shape[1],):
            raise ValueError(f"labels must have shape [D]={V.shape[1]}; got {labels.shape}")
    return V.astype(np.float64, copy=False)


def pca_project(V: np.ndarray, n_components: int = 2, fit_on: int = -1) -> tuple[np.ndarray, PCA]:
    """Fit PCA on capture ``fit_on`` (the final one by default) and project every capture with it.

    Returns the coordinates ``[T, D, n_components]`` and the fitted PCA (its mean and components
    are the one fixed map applied to all captures, so motion in the plot is motion of the
    embeddings, not of the axes).
    """
    V = check_embeddings(V)
    T, D, H = V.shape
    if n_components > min(D, H):
        raise ValueError(f"n_components={n_components} exceeds min(points, dims)={min(D, H)}")
    # svd_solver="full" is exact and deterministic (no randomised solver for small inputs).
    pca = PCA(n_components=n_components, svd_solver="full").fit(V[fit_on])
    coords = pca.transform(V.reshape(T * D, H)).reshape(T, D, n_components)
    return coords, pca


def displacements(V: np.ndarray) -> np.ndarray:
    """Displacement per sampling interval, ``||v_{t+1} - v_t||``, shape ``[T-1, D]``."""
    V = check_embeddings(V)
    return np.linalg.norm(np.diff(V, axis=0), axis=-1)


def class_means(values: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over the points of each class: ``values [R, D]`` -> (classes ``[C]``, means ``[R, C]``).

    NaNs are ignored so callers may mark undefined entries; a class with only NaNs in a row
    gets NaN for that row.
    """
    values = np.asarray(values, dtype=np.float64)
    labels = np.asarray(labels)
    if values.ndim != 2 or values.shape[1] != labels.shape[0]:
        raise ValueError(f"values must be [rows, D={labels.shape[0]}]; got {values.shape}")
    classes = np.unique(labels)
    means = np.full((values.shape[0], classes.size), np.nan)
    for j, c in enumerate(classes):
        block = values[:, labels == c]
        ok = ~np.isnan(block)
        n = ok.sum(axis=1)
        total = np.where(ok, block, 0.0).sum(axis=1)
        means[:, j] = np.divide(total, n, out=np.full(n.shape, np.nan), where=n > 0)
    return classes, means


def classic_stay_mask(V: np.ndarray, d_thr: float, t_thr: int = 4) -> np.ndarray:
    """Classic stay points: ``mask[t, d]`` is True when point d's displacements over the
    ``t_thr`` consecutive intervals starting at capture t are all ``< d_thr``.

    Shape ``[T - t_thr, D]`` (empty in the first axis when there are too few captures).
    """
    if t_thr < 1:
        raise ValueError(f"time threshold T must be >= 1 interval; got {t_thr}")
    if not d_thr > 0:
        raise ValueError(f"space threshold D must be > 0; got {d_thr}")
    disp = displacements(V)
    below = disp < d_thr
    n_windows = below.shape[0] - t_thr + 1
    if n_windows <= 0:
        return np.zeros((0, below.shape[1]), dtype=bool)
    # Count of below-threshold intervals per window via a cumulative sum: O(T*D), no loop over t.
    csum = np.concatenate([np.zeros((1, below.shape[1]), int), np.cumsum(below, axis=0)])
    return (csum[t_thr:] - csum[:-t_thr]) == t_thr


def linearity_index(V: np.ndarray, k: int = 5) -> np.ndarray:
    """Linearity index ``S[t, d] = ||v_{t+k} - v_t|| / sum_{h=t}^{t+k-1} ||v_{h+1} - v_h||``.

    Shape ``[T - k, D]``, values in [0, 1]: 1 for straight-line motion, 0 for a point that
    returns to where it started. A window with zero path length (the point did not move) is
    defined as 0, i.e. staying.
    """
    if k < 1:
        raise ValueError(f"window size k must be >= 1 interval; got {k}")
    V = check_embeddings(V)
    T = V.shape[0]
    if T - k <= 0:
        return np.zeros((0, V.shape[1]))
    disp = displacements(V)
    csum = np.concatenate([np.zeros((1, disp.shape[1])), np.cumsum(disp, axis=0)])
    path = csum[k:] - csum[:-k]
    chord = np.linalg.norm(V[k:] - V[:-k], axis=-1)
    S = np.divide(chord, path, out=np.zeros_like(chord), where=path > 0)
    # The triangle inequality bounds S by 1; rounding can overshoot by an ulp.
    return np.clip(S, 0.0, 1.0)


def linearity_stay_mask(V: np.ndarray, epsilon: float, k: int = 5) -> np.ndarray:
    """Linearity-index stay points: ``S[t, d] < epsilon``, shape ``[T - k, D]``."""
    if not 0 < epsilon <= 1:
        raise ValueError(f"epsilon must be in (0, 1]; got {epsilon}")
    return linearity_index(V, k) < epsilon


def has_stay(mask: np.ndarray) -> np.ndarray:
    """Per trajectory: at least one stay point, ``[D]`` bool."""
    return np.asarray(mask, dtype=bool).any(axis=0)


def first_stay_index(mask: np.ndarray) -> np.ndarray:
    """Per trajectory: capture index of the first stay point, -1 when there is none, ``[D]``."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape[0] == 0:  # too few captures for a single window
        return np.full(mask.shape[1:], -1, dtype=np.int64)
    first = mask.argmax(axis=0)
    return np.where(mask.any(axis=0), first, -1)


def trajectory_distances(V: np.ndarray) -> np.ndarray:
    """Lock-step distance between trajectories: mean over captures of ``||v_t^a - v_t^b||``.

    Shape ``[D, D]``, symmetric, zero diagonal. With one capture it is the plain Euclidean
    distance between points, which is how final embeddings are compared.
    """
    V = check_embeddings(V)
    T, D, _ = V.shape
    total = np.zeros((D, D))
    for t in range(T):  # one [D, D] Gram product per capture keeps memory at O(D^2 + D*H)
        x = V[t]
        sq = (x * x).sum(axis=1)
        d2 = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
        total += np.sqrt(np.clip(d2, 0.0, None))
    dist = total / T
    np.fill_diagonal(dist, 0.0)
    return (dist + dist.T) / 2.0  # exact symmetry despite rounding in the Gram product


def _agglomerative(dist: np.ndarray, n_clusters: int, linkage: str) -> np.ndarray:
    D = dist.shape[0]
    if not 1 <= n_clusters <= D:
        raise ValueError(f"n_clusters must be in [1, {D}] (number of points); got {n_clusters}")
    if linkage not in {"average", "complete", "single"}:
        # Ward needs raw Euclidean features, not a precomputed trajectory distance.
        raise ValueError(f"linkage must be average, complete or single; got {linkage!r}")
    model = AgglomerativeClustering(n_clusters=n_clusters, metric="precomputed", linkage=linkage)
    return model.fit_predict(dist)


def cluster_trajectories(V: np.ndarray, n_clusters: int, linkage: str = "average") -> np.ndarray:
    """Cluster the D trajectories by lock-step distance; cluster id per point ``[D]``.

    Agglomerative clustering has no random initialisation, so the result is a deterministic
    function of ``V`` (ties are broken by point order).
    """
    return _agglomerative(trajectory_distances(V), n_clusters, linkage)


def cluster_final(V: np.ndarray, n_clusters: int, linkage: str = "average") -> np.ndarray:
    """Cluster the final embeddings ``V[-1]`` with the same algorithm; cluster id per point."""
    V = check_embeddings(V)
    return cluster_trajectories(V[-1:], n_clusters, linkage)


def match_clusters(clusters: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Rename cluster ids to the reference labels they overlap most (Hungarian matching).

    Only the names change, so every ARI is unchanged; the point is that cluster j and class j
    line up in a contingency plot. Clusters left without a partner get ids after the largest
    reference label.
    """
    clusters = np.asarray(clusters)
    reference = np.asarray(reference)
    cl = np.unique(clusters)
    ref = np.unique(reference)
    overlap = np.array([[np.sum((clusters == a) & (reference == b)) for b in ref] for a in cl])
    rows, cols = linear_sum_assignment(-overlap)
    rename = {int(cl[r]): int(ref[c]) for r, c in zip(rows, cols, strict=True)}
    spare = int(ref.max()) + 1
    for a in cl:
        if int(a) not in rename:
            rename[int(a)] = spare
            spare += 1
    return np.array([rename[int(a)] for a in clusters], dtype=np.int64)


@dataclass(frozen=True)
class ClusteringComparison:
    """Trajectory clustering vs final-embedding clustering, both against the true classes."""

    trajectory: np.ndarray  # [D] cluster id (renamed to the best-matching class)
    final: np.ndarray  # [D] cluster id (renamed to the best-matching class)
    ari_trajectory: float  # ARI(trajectory clusters, classes)
    ari_final: float  # ARI(final clusters, classes)
    ari_between: float  # ARI(trajectory clusters, final clusters)


def compare_clusterings(
    V: np.ndarray,
    labels: np.ndarray,
    n_clusters: int | None = None,
    linkage: str = "average",
) -> ClusteringComparison:
    """Paper §5.3: cluster trajectories and final embeddings into ``n_clusters`` (default: the
    number of classes) and compare each with the classes and with each other by ARI."""
    V = check_embeddings(V, labels)
    labels = np.asarray(labels)
    n = int(np.unique(labels).size) if n_clusters is None else n_clusters
    traj = match_clusters(cluster_trajectories(V, n, linkage), labels)
    final = match_clusters(cluster_final(V, n, linkage), labels)
    return ClusteringComparison(
        trajectory=traj,
        final=final,
        ari_trajectory=float(adjusted_rand_score(labels, traj)),
        ari_final=float(adjusted_rand_score(labels, final)),
        ari_between=float(adjusted_rand_score(traj, final)),
    )
