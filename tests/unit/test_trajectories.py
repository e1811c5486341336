"""Trajectory analysis on hand-made trajectories whose answers are known exactly."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.decomposition import PCA

from tuneatlas.analysis import trajectories as tr


def _walk_then_stop(n_moves: int, n_still: int, step: float = 1.0, dims: int = 3) -> np.ndarray:
    """One point moving `step` per interval along x for `n_moves` intervals, then at rest."""
    xs = np.concatenate([np.arange(n_moves + 1) * step, np.full(n_still, n_moves * step)])
    V = np.zeros((xs.size, 1, dims))
    V[:, 0, 0] = xs
    return V


def test_displacements_are_per_interval_euclidean_lengths():
    V = np.zeros((3, 1, 2))
    V[1, 0] = [3.0, 4.0]
    V[2, 0] = [3.0, 4.0]
    np.testing.assert_allclose(tr.displacements(V), [[5.0], [0.0]])


def test_classic_stay_first_step_after_walking_stops():
    # 5 moves of 1 unit then 6 still captures: intervals 0..4 have length 1, 5..10 length 0.
    V = _walk_then_stop(n_moves=5, n_still=6)
    mask = tr.classic_stay_mask(V, d_thr=0.5, t_thr=4)
    assert mask.shape == (V.shape[0] - 1 - 4 + 1, 1)
    # The first window of 4 intervals all < 0.5 starts at interval 5 (capture 5).
    assert tr.first_stay_index(mask).tolist() == [5]
    assert mask[:, 0].tolist() == [False] * 5 + [True] * 3
    # A threshold above the walking speed makes the point stay from the very first window...
    assert tr.first_stay_index(tr.classic_stay_mask(V, d_thr=1.5, t_thr=4)).tolist() == [0]
    # ...but "< D" is strict: a displacement equal to D does not count as staying.
    assert tr.first_stay_index(tr.classic_stay_mask(V, d_thr=1.0, t_thr=4)).tolist() == [5]


def test_classic_stay_needs_t_consecutive_intervals():
    V = _walk_then_stop(n_moves=5, n_still=3)  # only 3 still intervals at the end
    assert not tr.has_stay(tr.classic_stay_mask(V, d_thr=0.5, t_thr=4))[0]
    assert tr.first_stay_index(tr.classic_stay_mask(V, d_thr=0.5, t_thr=3)).tolist() == [5]


def test_classic_stay_too_few_captures_gives_empty_mask():
    mask = tr.classic_stay_mask(np.zeros((4, 2, 3)), d_thr=1.0, t_thr=4)
    assert mask.shape == (0, 2)
    assert tr.has_stay(mask).tolist() == [False, False]
    assert tr.first_stay_index(mask).tolist() == [-1, -1]


def test_linearity_index_is_one_for_straight_line_motion():
    rng = np.random.default_rng(0)
    direction = rng.normal(size=8)
    speeds = rng.uniform(0.5, 3.0, size=12)  # uneven speed along one line is still straight
    V = (np.concatenate([[0.0], np.cumsum(speeds)])[:, None] * direction)[:, None, :]
    for k in (1, 3, 5):
        S = tr.linearity_index(V, k)
        assert S.shape == (V.shape[0] - k, 1)
        np.testing.assert_allclose(S, 1.0, rtol=0, atol=1e-12)


def test_linearity_index_oscillation_is_zero_for_even_windows_only():
    # x = 0, 1, 0, 1, ...: back after every 2 intervals.
    V = np.zeros((11, 1, 2))
    V[1::2, 0, 0] = 1.0
    S4 = tr.linearity_index(V, 4)
    np.testing.assert_allclose(S4, 0.0, atol=1e-12)
    # An odd window ends one unit away after k units of path: S = 1/k at every start.
    np.testing.assert_allclose(tr.linearity_index(V, 5), 1 / 5, atol=1e-12)
    assert tr.linearity_stay_mask(V, epsilon=0.1, k=4).all()
    assert not tr.linearity_stay_mask(V, epsilon=0.1, k=5).any()
    assert tr.linearity_stay_mask(V, epsilon=0.25, k=5).all()


def test_linearity_index_walk_then_oscillate_switches_at_the_right_window():
    # Straight walk for 5 intervals, then oscillate +-1 around x=5.
    xs = [0, 1, 2, 3, 4, 5, 6, 5, 6, 5, 6, 5]
    V = np.zeros((len(xs), 1, 1))
    V[:, 0, 0] = xs
    S = tr.linearity_index(V, 2)[:, 0]
    # Windows starting at 0..4 stay on the straight part (S=1); from t=5 on they go +1-1 (S=0).
    np.testing.assert_allclose(S[:5], 1.0)
    np.testing.assert_allclose(S[5:], 0.0)
    assert tr.first_stay_index(tr.linearity_stay_mask(V, 0.1, k=2)).tolist() == [5]


def test_linearity_index_zero_motion_counts_as_staying():
    V = np.ones((8, 3, 4))  # three points that never move
    S = tr.linearity_index(V, 5)
    assert S.shape == (3, 3)
    assert np.all(S == 0.0)
    assert tr.linearity_stay_mask(V, epsilon=0.1, k=5).all()
    assert tr.classic_stay_mask(V, d_thr=1e-9, t_thr=4).all()


def test_linearity_index_rejects_bad_arguments():
    V = np.zeros((6, 1, 2))
    with pytest.raises(ValueError, match="window size"):
        tr.linearity_index(V, 0)
    with pytest.raises(ValueError, match="epsilon"):
        tr.linearity_stay_mask(V, epsilon=0.0)
    with pytest.raises(ValueError, match=r"\[T captures"):
        tr.linearity_index(np.zeros((6, 2)), 2)
    with pytest.raises(ValueError, match="NaN"):
        tr.displacements(np.full((3, 1, 2), np.nan))


def test_pca_projection_of_final_capture_equals_sklearn():
    rng = np.random.default_rng(1)
    V = rng.normal(size=(4, 30, 6)) * np.array([5.0, 3.0, 1.0, 0.5, 0.2, 0.1])
    coords, pca = tr.pca_project(V)
    assert coords.shape == (4, 30, 2)
    ref = PCA(n_components=2, svd_solver="full").fit(V[-1])
    np.testing.assert_allclose(coords[-1], ref.transform(V[-1]), atol=1e-10)
    # Earlier captures use the same map (final capture's mean and axes), not their own PCA.
    np.testing.assert_allclose(coords[0], (V[0] - ref.mean_) @ ref.components_.T, atol=1e-10)
    assert not np.allclose(np.abs(coords[0]), np.abs(PCA(2).fit_transform(V[0])))


def test_class_means_ignore_nan_and_group_by_label():
    values = np.array([[1.0, 3.0, 10.0, np.nan], [2.0, np.nan, np.nan, np.nan]])
    classes, means = tr.class_means(values, np.array([0, 0, 1, 1]))
    assert classes.tolist() == [0, 1]
    np.testing.assert_allclose(means[0], [2.0, 10.0])
    assert means[1, 0] == 2.0 and np.isnan(means[1, 1])


def _separated_trajectories(seed: int = 0, n_classes: int = 4, per_class: int = 6):
    """Per class: points start near the origin and drift to a distinct far-away corner."""
    rng = np.random.default_rng(seed)
    T, H = 12, 5
    targets = rng.normal(size=(n_classes, H)) * 20.0
    labels = np.repeat(np.arange(n_classes), per_class)
    frac = np.linspace(0.0, 1.0, T)[:, None, None]
    V = frac * targets[labels][None] + rng.normal(scale=0.3, size=(T, labels.size, H))
    return V, labels


def test_trajectory_distances_lock_step():
    V = np.zeros((2, 2, 1))
    V[:, 1, 0] = [3.0, 1.0]  # point 1 is 3 then 1 away from point 0
    np.testing.assert_allclose(tr.trajectory_distances(V), [[0.0, 2.0], [2.0, 0.0]])


def test_clustering_recovers_separated_classes():
    V, labels = _separated_trajectories()
    # Shuffle point order so recovery cannot come from position in the array.
    perm = np.random.default_rng(3).permutation(labels.size)
    V, labels = V[:, perm], labels[perm]
    cmp = tr.compare_clusterings(V, labels)
    assert cmp.ari_trajectory == 1.0
    assert cmp.ari_final == 1.0
    assert cmp.ari_between == 1.0
    # Cluster ids are renamed to the classes they match.
    assert cmp.trajectory.tolist() == labels.tolist()
    again = tr.compare_clusterings(V, labels)
    assert again.trajectory.tolist() == cmp.trajectory.tolist()


def test_trajectory_and_final_clusterings_can_disagree():
    # Two pairs that end at the same place but travel very different paths.
    T = 10
    V = np.zeros((T, 4, 2))
    path = np.linspace(0, 1, T)
    V[:, 0] = np.stack([path * 10, np.zeros(T)], axis=1)
    V[:, 1] = np.stack([path * 10, np.zeros(T)], axis=1) + 0.01
    V[:, 2] = np.stack([path * 10, 30 * np.sin(np.pi * path)], axis=1)
    V[:, 3] = np.stack([path * 10 + 30, np.zeros(T)], axis=1)
    V[-1, 3] = V[-1, 0] + [0.0, 0.02]  # ends with 0 and 1
    V[-1, 2] = [100.0, 0.0]
    labels = np.array([0, 0, 1, 1])
    traj = tr.cluster_trajectories(V, 2)
    final = tr.cluster_final(V, 2)
    assert traj[0] == traj[1] and traj[3] != traj[0]
    assert final[0] == final[1] == final[3] and final[2] != final[0]
    cmp = tr.compare_clusterings(V, labels)
    assert cmp.ari_between < 1.0


def test_match_clusters_renames_without_changing_the_partition():
    ref = np.array([0, 0, 1, 1, 2, 2])
    clusters = np.array([7, 7, 3, 3, 5, 5])
    assert tr.match_clusters(clusters, ref).tolist() == ref.tolist()
    extra = tr.match_clusters(np.array([0, 0, 1, 1, 2, 3]), np.array([0, 0, 1, 1, 1, 1]))
    assert sorted(set(extra.tolist())) == [0, 1, 2, 3]
    assert extra[:4].tolist() == [0, 0, 1, 1]
