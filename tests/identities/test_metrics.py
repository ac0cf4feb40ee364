from __future__ import annotations

import pytest

from hime_cli.identities.metrics import bcubed_prf, pairwise_prf


def test_pairwise_hand_computed() -> None:
    # truth: {a,b,c} {d,e}; predicted: {a,b} {c,d,e}
    truth = ["x", "x", "x", "y", "y"]
    pred = [0, 0, 1, 1, 1]
    # true pairs: ab ac bc de = 4; predicted pairs: ab cd ce de = 4; TP: ab de = 2
    m = pairwise_prf(truth, pred)
    assert m.precision == pytest.approx(0.5)
    assert m.recall == pytest.approx(0.5)
    assert m.f1 == pytest.approx(0.5)


def test_pairwise_all_in_one_cluster() -> None:
    truth = [1, 1, 2, 2]
    pred = [0, 0, 0, 0]
    # predicted pairs 6, true pairs 2, TP 2
    m = pairwise_prf(truth, pred)
    assert m.precision == pytest.approx(2 / 6)
    assert m.recall == pytest.approx(1.0)
    assert m.f1 == pytest.approx(2 * (1 / 3) / (1 / 3 + 1))


def test_pairwise_perfect_and_label_names_do_not_matter() -> None:
    m = pairwise_prf(["a", "a", "b"], [7, 7, 3])
    assert (m.precision, m.recall, m.f1) == (1.0, 1.0, 1.0)


def test_pairwise_all_singletons_predicted() -> None:
    m = pairwise_prf(["a", "a", "b"], [0, 1, 2])
    assert m.precision == 1.0  # nothing claimed
    assert m.recall == 0.0
    assert m.f1 == 0.0


def test_bcubed_hand_computed() -> None:
    truth = ["x", "x", "x", "y", "y"]
    pred = [0, 0, 1, 1, 1]
    # precision per item: a 2/2, b 2/2, c 1/3, d 2/3, e 2/3 -> (1+1+1/3+2/3+2/3)/5 = 11/15
    # recall per item:    a 2/3, b 2/3, c 1/3, d 2/2, e 2/2 -> (2/3+2/3+1/3+1+1)/5 = 11/15
    m = bcubed_prf(truth, pred)
    assert m.precision == pytest.approx(11 / 15)
    assert m.recall == pytest.approx(11 / 15)
    assert m.f1 == pytest.approx(11 / 15)


def test_bcubed_singletons_weigh_like_everyone() -> None:
    truth = ["a", "a", "a", "a", "b"]
    pred = [0, 0, 0, 0, 0]
    # precision: four items 4/5, one item 1/5 -> (16/5 + 1/5)/5 = 17/25; recall all 1
    m = bcubed_prf(truth, pred)
    assert m.precision == pytest.approx(17 / 25)
    assert m.recall == pytest.approx(1.0)


def test_length_mismatch_raises() -> None:
    with pytest.raises(ValueError):
        pairwise_prf([1, 2], [1])
    with pytest.raises(ValueError):
        bcubed_prf([1, 2], [1])
