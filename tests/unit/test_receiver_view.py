"""The fault runner's view of what the receiver accepted (tests/reliability/harness.py)."""

from __future__ import annotations

from tests.reliability.harness import Publish, receiver_view


def accepted(*rows: tuple[int, int, str]) -> list[Publish]:
    return [Publish(seq, epoch, "full", 1, float(seq), leader) for seq, epoch, leader in rows]


def test_one_term_after_another_in_seq_order_is_clean() -> None:
    window = accepted((1, 3, "a"), (2, 3, "a"), (3, 4, "b"), (4, 5, "a"))

    assert receiver_view(window) == (0, 0)


def test_a_term_that_publishes_again_after_a_newer_one_is_counted_each_time() -> None:
    # a, then b, then a again twice: the interleaving the fence must prevent
    window = accepted((1, 3, "a"), (2, 4, "b"), (3, 3, "a"), (4, 3, "a"), (5, 4, "b"))

    regressions, ended = receiver_view(window)

    assert regressions == 0
    assert ended == 3


def test_the_same_epoch_from_two_leaders_is_two_terms() -> None:
    window = accepted((1, 3, "a"), (2, 3, "b"), (3, 3, "a"))

    assert receiver_view(window) == (0, 1)


def test_a_seq_at_or_below_an_accepted_one_is_a_regression() -> None:
    window = accepted((5, 1, "a"), (5, 1, "a"), (4, 1, "a"), (6, 1, "a"))

    assert receiver_view(window) == (2, 0)
