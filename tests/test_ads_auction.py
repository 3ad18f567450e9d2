"""The sponsored-products auction (engine.ads.auction): GSP prices with ctr * bid ranking, by hand."""
from __future__ import annotations

import math

import pytest

from engine.ads.auction import Bidder, Won, calibrated_ctr, run_auction
from engine.errors import InvalidQuery


def _b(campaign: str, bid: int, ctr: float, item: str | None = None) -> Bidder:
    return Bidder(campaign, item or f"item-{campaign}", bid, ctr, 0.5)


def _summary(won: list[Won]) -> list[tuple[int, int, str, int]]:
    return [(w.slot, w.position, w.bidder.campaign_id, w.price) for w in won]


A, B, C = _b("A", 100, 0.05), _b("B", 200, 0.02), _b("C", 50, 0.04)  # rank scores 5.0, 4.0, 2.0


def test_three_bidders_two_slots_by_hand() -> None:
    won = run_auction([C, B, A], [1, 5], reserve=10)
    # A: ceil(4.0 / 0.05) = 80; B: ceil(2.0 / 0.02) = 100 (C, the first loser, sets B's price).
    assert _summary(won) == [(0, 1, "A", 80), (1, 5, "B", 100)]
    assert won[0].rank_score == pytest.approx(5.0) and won[1].rank_score == pytest.approx(4.0)
    assert all(isinstance(w.price, int) for w in won)


def test_price_rounds_up_to_the_next_minor_unit() -> None:
    # next score 0.03 * 101 = 3.03; 3.03 / 0.05 = 60.6 -> 61 (61 * 0.05 = 3.05 >= 3.03, 60 * 0.05 < 3.03).
    won = run_auction([_b("A", 100, 0.05), _b("B", 101, 0.03)], [1], reserve=1)
    assert won[0].price == 61
    assert won[0].price * 0.05 >= 0.03 * 101 > (won[0].price - 1) * 0.05


def test_price_is_never_above_the_bid_even_where_the_naive_ceil_is() -> None:
    # Two equal bidders (bid 7, ctr 0.3): a tie, broken by campaign id. The naive formula gives
    # ceil(2.1 / 0.3) = ceil(7.000000000000001) = 8 > 7 in floating point; the price is the bid.
    first, second = _b("a", 7, 0.3), _b("b", 7, 0.3)
    assert math.ceil(second.rank_score / first.ctr) > first.bid
    won = run_auction([second, first], [1, 2], reserve=1)
    assert _summary(won) == [(0, 1, "a", 7), (1, 2, "b", 1)]


def test_exact_tie_pays_the_full_bid() -> None:
    won = run_auction([_b("A", 40, 0.25), _b("B", 20, 0.5)], [1], reserve=1)  # both 10.0
    # Ties go to the higher bid: A wins and pays 40 (40 * 0.25 = 10 >= 10; 39 * 0.25 < 10).
    assert _summary(won) == [(0, 1, "A", 40)]


def test_reserve_floors_the_price() -> None:
    won = run_auction([_b("A", 100, 0.5), _b("B", 30, 0.01)], [1], reserve=25)  # next score 0.3 -> 1 cent
    assert won[0].price == 25


def test_no_next_bidder_pays_the_reserve() -> None:
    assert _summary(run_auction([A], [1, 5], reserve=10)) == [(0, 1, "A", 10)]
    assert _summary(run_auction([A], [1], reserve=0)) == [(0, 1, "A", 0)]


def test_last_slot_is_priced_by_the_first_loser() -> None:
    won = run_auction([A, B, C], [1], reserve=10)
    assert _summary(won) == [(0, 1, "A", 80)]


def test_bidders_under_the_reserve_are_dropped_and_set_no_price() -> None:
    won = run_auction([A, B, C], [1, 5], reserve=60)  # C bids 50 < 60
    assert _summary(won) == [(0, 1, "A", 80), (1, 5, "B", 60)]
    assert run_auction([C], [1], reserve=51) == []


def test_an_item_never_wins_two_slots() -> None:
    # Two campaigns advertise the same item; only its best entry stays (and its second entry sets no price).
    x1, x2, y = _b("X1", 100, 0.05, "shared"), _b("X2", 90, 0.05, "shared"), _b("Y", 60, 0.05, "other")
    won = run_auction([x2, y, x1], [1, 2, 3], reserve=1)
    assert _summary(won) == [(0, 1, "X1", 60), (1, 2, "Y", 1)]
    assert [w.bidder.item_id for w in won] == ["shared", "other"]


def test_excluded_organic_items_never_win() -> None:
    won = run_auction([A, B, C], [1, 5], reserve=10, exclude_items={"item-A"})
    # Without A: B wins slot 1 against C (ceil(2.0 / 0.02) = 100), C wins slot 5 at the reserve.
    assert _summary(won) == [(0, 1, "B", 100), (1, 5, "C", 10)]


def test_fewer_bidders_than_slots_leaves_slots_empty() -> None:
    assert _summary(run_auction([A, B], [1, 3, 7], reserve=10)) == [(0, 1, "A", 80), (1, 3, "B", 10)]
    assert run_auction([], [1, 2], reserve=10) == []
    assert run_auction([A], [], reserve=10) == []


def test_tie_break_is_deterministic() -> None:
    # Same rank score 10.0: higher bid first, then campaign id, then item id.
    bidders = [_b("c", 20, 0.5), _b("b", 40, 0.25), _b("a", 20, 0.5, "z"), _b("a", 20, 0.5, "y")]
    expected = [("b", "item-b"), ("a", "y"), ("a", "z"), ("c", "item-c")]
    for order in (bidders, bidders[::-1], bidders[1:] + bidders[:1]):
        won = run_auction(order, [1, 2, 3, 4], reserve=1)
        assert [(w.bidder.campaign_id, w.bidder.item_id) for w in won] == expected


def test_prices_stay_between_reserve_and_bid() -> None:
    import random

    rnd = random.Random(7)
    for _ in range(300):
        bidders = [_b(f"c{i}", rnd.randint(1, 500), rnd.choice([0.1, 0.3, 0.7, 0.07, 0.03, 0.013, 1.0]))
                   for i in range(rnd.randint(1, 8))]
        reserve = rnd.randint(0, 50)
        for w in run_auction(bidders, [1, 2, 4], reserve=reserve):
            assert reserve <= w.price <= w.bidder.bid


@pytest.mark.parametrize("kwargs, field", [
    ({"bid": 0}, "bid"), ({"bid": -5}, "bid"), ({"bid": 1.5}, "bid"), ({"bid": True}, "bid"),
    ({"ctr": 0.0}, "ctr"), ({"ctr": 1.2}, "ctr"), ({"ctr": float("nan")}, "ctr"), ({"ctr": True}, "ctr"),
])
def test_bad_bidders_name_the_field(kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {"campaign_id": "A", "item_id": "i", "bid": 10, "ctr": 0.1, "relevance": 1.0}
    args.update(kwargs)
    with pytest.raises(InvalidQuery) as e:
        Bidder(**args)  # type: ignore[arg-type]
    assert e.value.field == field


@pytest.mark.parametrize("positions", [[0, 1], [2, 1], [1, 1], [1, 2.0], [True], [-1]])
def test_bad_positions_name_the_field(positions: list[object]) -> None:
    with pytest.raises(InvalidQuery) as e:
        run_auction([A], positions, reserve=1)  # type: ignore[arg-type]
    assert e.value.field == "positions"


@pytest.mark.parametrize("reserve", [-1, 1.5, True, None])
def test_bad_reserve_names_the_field(reserve: object) -> None:
    with pytest.raises(InvalidQuery) as e:
        run_auction([A], [1], reserve=reserve)  # type: ignore[arg-type]
    assert e.value.field == "reserve"


def test_calibrated_ctr_by_hand() -> None:
    assert calibrated_ctr(0, 0, prior_ctr=0.02) == pytest.approx(0.02)
    assert calibrated_ctr(10, 100, prior_ctr=0.02) == pytest.approx((10 + 2) / 200)  # 0.06
    assert calibrated_ctr(3, 50, prior_ctr=0.01, prior_strength=50.0) == pytest.approx(3.5 / 100)
    assert calibrated_ctr(500, 10_000, prior_ctr=0.01) == pytest.approx(501 / 10_100)  # the data takes over


@pytest.mark.parametrize("args, kwargs, field", [
    ((-1, 10), {"prior_ctr": 0.1}, "clicks"), ((11, 10), {"prior_ctr": 0.1}, "clicks"),
    ((1.0, 10), {"prior_ctr": 0.1}, "clicks"), ((1, -10), {"prior_ctr": 0.1}, "impressions"),
    ((1, 10), {"prior_ctr": 0.0}, "prior_ctr"), ((1, 10), {"prior_ctr": 1.5}, "prior_ctr"),
    ((1, 10), {"prior_ctr": 0.1, "prior_strength": 0.0}, "prior_strength"),
])
def test_calibrated_ctr_rejects_bad_input(args: tuple[object, object], kwargs: dict[str, float],
                                          field: str) -> None:
    with pytest.raises(InvalidQuery) as e:
        calibrated_ctr(*args, **kwargs)  # type: ignore[arg-type]
    assert e.value.field == field


def test_min_relevance_per_slot_fills_each_slot_among_its_qualifiers() -> None:
    a = Bidder("A", "a", 100, 0.05, relevance=0.40)  # best rank score (5.0), not relevant enough for slot 1
    b = Bidder("B", "b", 50, 0.05, relevance=0.70)  # 2.5
    c = Bidder("C", "c", 40, 0.05, relevance=0.80)  # 2.0
    won = run_auction([a, b, c], [1, 5], reserve=10, min_relevance=[0.6, 0.3])
    # slot 1 (needs 0.6): B and C qualify; B wins and pays C's score / its ctr = 40
    # slot 5 (needs 0.3): A and C remain; A wins and pays C's score / its ctr = 40
    assert [(w.position, w.bidder.campaign_id, w.price) for w in won] == [(1, "B", 40), (5, "A", 40)]
    assert run_auction([a], [1], reserve=10, min_relevance=[0.5]) == []
    with pytest.raises(InvalidQuery, match="min_relevance"):
        run_auction([a], [1, 5], reserve=10, min_relevance=[0.5])


def test_page_relevance_lets_an_ad_show_lower_where_it_is_as_relevant_by_hand() -> None:
    a = Bidder("A", "a", 100, 0.05, relevance=0.50)  # rank score 5.0
    b = Bidder("B", "b", 50, 0.05, relevance=0.70)  # 2.5
    c = Bidder("C", "c", 40, 0.05, relevance=0.30)  # 2.0
    page = [0.80, 0.75, 0.60, 0.55, 0.52, 0.45, 0.40]  # the organic results' relevance, positions 1..7
    won = run_auction([a, b, c], [1, 5], reserve=10, page_relevance=page)
    # slot 1 offers positions 1-4 (the next slot is 5): A (0.50) meets none, B (0.70) meets position 3;
    # B wins, shown at 3, priced against the next qualifier (none: C is 0.30) -> the reserve.
    # slot 5 offers positions 5-7: A meets 6 (0.45); C meets none; A pays the reserve.
    assert [(w.slot, w.position, w.bidder.campaign_id, w.price) for w in won] == [(0, 3, "B", 10), (1, 6, "A", 10)]
    # a slot past the page's end has no organic result to match: any bidder may take it
    assert [(w.position, w.bidder.campaign_id) for w in run_auction([c], [9], reserve=10, page_relevance=page)] \
        == [(9, "C")]
    # GSP within a slot's qualifiers: B and A both qualify for positions 5-7; A ranks first and pays 2.5 / 0.05
    won = run_auction([a, b], [5], reserve=10, page_relevance=page)
    assert [(w.position, w.bidder.campaign_id, w.price) for w in won] == [(6, "A", 50)]
    with pytest.raises(InvalidQuery, match="min_relevance"):
        run_auction([a], [1], reserve=10, min_relevance=[0.5], page_relevance=page)


@pytest.mark.parametrize("page_relevance", [None, [0.0] * 10])
def test_two_listings_of_one_product_are_one_bidder(page_relevance: list[float] | None) -> None:
    # A and B advertise two listings of one product (Bidder.product): B is gone behind A, wins no slot and
    # sets no price, so A pays against C: ceil(2.0 / 0.05) = 40; C, with nobody after it, pays the reserve.
    a = Bidder("A", "item-a", 100, 0.05, 0.5, "P")
    b = Bidder("B", "item-b", 200, 0.02, 0.5, "P")
    won = run_auction([b, C, a], [1, 5], reserve=10, page_relevance=page_relevance)
    assert _summary(won) == [(0, 1, "A", 40), (1, 5, "C", 10)]
    assert Bidder("A", "item-a", 100, 0.05).product == "item-a"  # without a key, each item is its own product
