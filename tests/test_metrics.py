"""pam_faceid.model.metrics pinned on hand-worked cases, and every caller giving the same figures."""

from __future__ import annotations

import numpy as np
import pytest

from pam_faceid.model import evaluate as ev
from pam_faceid.model.metrics import allowed_impostors, rates, tar_at_far, threshold_at_far


def test_threshold_is_just_above_the_first_impostor_that_must_be_refused():
    # 10 impostors, FAR 0.2 allows 2 accepted: .9 and .8; .7 must be refused, so t is the float just above .7.
    impostor = np.array([.9, .8, .7, .6, .5, .4, .3, .2, .1, 0.])
    t = threshold_at_far(impostor, 0.2)
    assert t == np.nextafter(0.7, 1) and rates(np.array([.75, .7]), impostor, t) == (0.2, 0.5)


def test_f_times_n_not_an_integer_is_floored():
    impostor = np.array([.9, .8, .7, .6, .5, .4, .3, .2, .1, 0.])
    assert threshold_at_far(impostor, 0.15) == np.nextafter(0.8, 1)  # 1.5 -> 1 accepted
    assert threshold_at_far(impostor, 0.099) == np.nextafter(0.9, 1)  # 0.99 -> none
    assert allowed_impostors(0.29, 100) == 29  # 0.29 * 100 is 28.999999999999996 in floats


def test_ties_at_the_cut_are_all_refused():
    # FAR 0.5 of 4 allows 2, but 3 impostors tie at .8: accepting any accepts all 3 (75 %), so all go.
    impostor = np.array([.8, .8, .8, .1])
    t = threshold_at_far(impostor, 0.5)
    assert t == np.nextafter(0.8, 1) and rates(np.array([.8]), impostor, t) == (0.0, 1.0)
    assert tar_at_far(np.array([.9, .8, .8, .2]), impostor, 0.5) == 0.25


def test_all_equal_scores():
    same = np.full(5, 0.5)
    assert threshold_at_far(same, 0.4) == np.nextafter(0.5, 1)
    assert tar_at_far(same, same, 0.4) == 0.0


def test_fewer_impostors_than_one_over_far_refuses_them_all():
    assert threshold_at_far(np.array([.3, .6, .2]), 1e-3) == np.nextafter(0.6, 1)


def test_no_impostors_has_no_threshold():
    with pytest.raises(ValueError, match="no impostor"):
        threshold_at_far(np.array([]), 1e-3)
    with pytest.raises(ValueError, match="no impostor"):
        tar_at_far(np.array([.9]), np.array([]), 1e-3)


def test_float32_scores_are_compared_exactly():
    # The threshold is a float64 just above the float32 score: that score is refused, the next one up accepted.
    impostor = np.array([0.93210006, 0.9321], np.float32)
    t = threshold_at_far(impostor, 0.5)
    assert rates(np.array([], np.float32), impostor, t)[0] == 0.5


def test_only_the_highest_scores_with_a_count():
    impostor = np.linspace(0, 1, 1001)
    top = np.sort(impostor)[-11:]
    assert threshold_at_far(top, 1e-2, count=1001) == threshold_at_far(impostor, 1e-2)
    with pytest.raises(ValueError, match="cannot give"):
        threshold_at_far(top[-5:], 1e-2, count=1001)


def test_roc_metrics_use_the_same_definition():
    rng = np.random.default_rng(7)
    genuine, impostor = rng.normal(0.7, 0.1, 300), rng.normal(0.2, 0.15, 4321)
    impostor[:40] = 0.6  # a block of ties near the cut
    m = ev.roc_metrics(np.r_[genuine, impostor], np.r_[np.ones(300, bool), np.zeros(4321, bool)])
    assert m["tar_at_far_1e-2"] == tar_at_far(genuine, impostor, 1e-2)
    assert m["tar_at_far_1e-3"] == tar_at_far(genuine, impostor, 1e-3)


def test_enrol_threshold_is_the_exact_order_statistic_across_blocks():
    # Enrol-1 over 30 identities of 3 noisy images; the kept highest impostor scores must give the
    # threshold that all impostor scores give, whatever the block size.
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(30, 8))
    groups = [c + 0.6 * rng.normal(size=(3, 8)) for c in centres]
    groups = [(g / np.linalg.norm(g, axis=1, keepdims=True)).astype(np.float32) for g in groups]
    found = [np.ones(3, bool) for _ in groups]
    found[4][1] = False  # a no-face attempt: an impostor attempt that is refused
    sims = []
    for i, g in enumerate(groups):
        for j, h in enumerate(groups):
            if i != j:
                sims.extend(np.where(found[j], h @ g[0], -np.inf))
    want = threshold_at_far(np.array(sims, np.float32), 1e-2)
    for block in (1 << 24, 7):
        res = ev.enrol_scores(groups, found, k=1, threshold=0.5, max_block=block)
        assert res.impostor_attempts == len(sims)
        t, frr = ev.threshold_for_far(res, 1e-2)
        assert t == want and frr == 1.0 - np.mean(res.genuine_scores >= want)


def test_round_up_never_rounds_below_the_threshold():
    from pam_faceid.model.metrics import round_up

    assert round_up(0.93214) == 0.9322 and round_up(0.9321) == 0.9321
    t = float(np.nextafter(0.9321, 1))
    assert round_up(t) == 0.9322 and round_up(-0.12345) == -0.1234
