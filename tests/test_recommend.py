"""Recommenders: profile math, co-occurrence counts, trending decay, the blender, and the evaluation.

Every expected number below is worked out by hand in the comment next to it. The evaluation runs for
real (pipeline build with the real MiniLM encoder, implicit ALS) on small slices of the shared data.
"""
from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.embedding.base import Encoder
from engine.evaluation.metrics import ndcg_at_k, recall_at_k
from engine.evaluation.recommend_eval import (
    Phase, RecData, coordinate_search, history_matrix, loo_metrics, objective, run_recommend_eval, split,
    target_ranks,
)
from engine.recommend import (
    DEFAULT_EVENT_WEIGHTS, BlendWeights, Blender, CooccurrenceModel, InterestProfile, TrendingModel, eligible_mask,
    event_weight, score_profiles,
)
from engine.ranking.scores import zscore
from tests.conftest import ROOT, make_config, scientific_slice

SHARED = ROOT.parent / "shared" / "data"
E = np.eye(4, dtype=np.float32)  # unit vectors e0..e3


def unit(v: list[float]) -> np.ndarray:
    a = np.array(v, np.float32)
    return a / np.linalg.norm(a)


# -- content profile --------------------------------------------------------------------------------

def test_event_weights_rank_purchase_over_cart_over_click_over_view() -> None:
    w = [event_weight(t) for t in ("purchase", "add_to_cart", "click", "view")]
    assert w == sorted(w, reverse=True) and len(set(w)) == 4
    assert event_weight("remove_from_cart") == 0.0 and event_weight("no-such-type") == 0.0
    assert event_weight("view", {"view": 7.0}) == 7.0


def test_single_profile_is_decayed_weighted_sum() -> None:
    p = InterestProfile(4, max_interests=1, position_decay=0.5)
    p.add(E[0], event_weight("view"), item="a")  # p = 1 * e0
    p.add(E[1], event_weight("purchase"), item="b")  # p = 0.5 * (1 * e0) + 5 * e1
    assert np.allclose(p.centers, [[0.5, 5.0, 0.0, 0.0]])
    assert p.mass.tolist() == [5.5]  # 0.5 * 1 + 5
    assert np.allclose(p.vector(), np.array([0.5, 5.0, 0, 0]) / math.sqrt(0.25 + 25.0))
    # Closed form after many events: sum_i decay ** age_i * w_i * v_i (age 0 = newest), same as the O(1) updates.
    rng = np.random.default_rng(0)
    vs = rng.normal(size=(6, 4)).astype(np.float32)
    ws = [1.0, 2.0, 3.0, 5.0, 1.0, 2.0]
    q = InterestProfile(4, max_interests=1, position_decay=0.7)
    for v, w in zip(vs, ws):
        q.add(v, w)
    expected = sum(0.7 ** (5 - i) * ws[i] * vs[i] for i in range(6))
    assert np.allclose(q.centers[0], expected, atol=1e-5)


def test_time_decay_uses_the_half_life() -> None:
    p = InterestProfile(4, max_interests=1, position_decay=1.0, half_life_s=10.0)
    p.add(E[0], 1.0, timestamp=100.0)
    p.add(E[1], 1.0, timestamp=110.0)  # one half-life later: p = 0.5 * e0 + e1
    assert np.allclose(p.centers, [[0.5, 1.0, 0.0, 0.0]])
    p.add(E[2], 2.0, timestamp=130.0)  # two more half-lives: p = 0.25 * (0.5 e0 + e1) + 2 e2
    assert np.allclose(p.centers, [[0.125, 0.25, 2.0, 0.0]])
    assert p.mass[0] == pytest.approx(0.25 * 1.5 + 2.0)


def test_multi_interest_merges_near_items_and_drops_the_lightest() -> None:
    p = InterestProfile(4, max_interests=2, merge_threshold=0.9, position_decay=0.5)
    p.add(E[0], 1.0, item="a")
    p.add(E[1], 1.0, item="b")  # cos(e1, e0) = 0 < 0.9: a second interest
    near = unit([1.0, 0.0, 0.1, 0.0])  # cos with e0 = 0.995 >= 0.9: joins interest "a"
    p.add(near, 2.0, item="c")
    # Before the third event both interests decay by 0.5: masses 0.25 (a) and 0.5 (b), then a += 2.
    assert p.mass.tolist() == pytest.approx([2.25, 0.5])
    assert p.anchors == ["c", "b"] and p.sizes == [2, 1]
    assert np.allclose(p.centers[0], 0.25 * E[0] + 2.0 * near)
    p.add(E[3], 1.0, item="d")  # orthogonal: needs a new interest; the lightest ("b", 0.25) is dropped
    assert p.anchors == ["c", "d"]
    assert p.mass.tolist() == pytest.approx([1.125, 1.0])
    # The sum of the interests is still the single-vector profile p <- decay * p + w * v.
    single = InterestProfile(4, max_interests=1, position_decay=0.5)
    for v, w in ((E[0], 1.0), (E[1], 1.0), (near, 2.0), (E[3], 1.0)):
        single.add(v, w)
    assert np.allclose(single.centers[0], p.centers.sum(axis=0) + 0.25 * E[1])  # + the dropped interest


def test_kernel_scores_by_hand() -> None:
    p = InterestProfile(4, max_interests=4, merge_threshold=1.01, position_decay=0.5)
    p.add(E[0], 1.0, item=0)
    p.add(E[1], 1.0, item=1)  # masses 0.5 (e0) and 1.0 (e1)
    items = np.stack([E[0], E[1], E[2], unit([1.0, 1.0, 0.0, 0.0])])
    scores, best = p.score(items, beta=2.0)
    c = math.sqrt(0.5)
    expected = [
        0.5 * 1 + 1.0 * math.exp(-2.0),  # e0: cos 1 with interest 0, 0 with interest 1
        0.5 * math.exp(-2.0) + 1.0,  # e1
        1.5 * math.exp(-2.0),  # e2: orthogonal to both
        1.5 * math.exp(2.0 * (c - 1.0)),  # (e0 + e1) / sqrt 2: cos sqrt(1/2) with both
    ]
    assert np.allclose(scores, expected, rtol=1e-5)
    assert best[:2].tolist() == [0, 1]
    # The reason's history row: the anchor of the interest that contributed most.
    assert p.because_rows(best, {0: 10, 1: 11}).tolist() == [10, 11, 11, 11]  # ties of cosine: heavier wins
    # With the default merge_threshold (1.0) only the same item merges into an existing interest.
    q = InterestProfile(4)
    for r in (0, 1, 0):
        q.add(E[r], 1.0, item=r)
    assert q.sizes == [2, 1] and q.anchors == [0, 1]
    # Empty profile: zeros and no interest.
    z, b = InterestProfile(4).score(items)
    assert not z.any() and (b == -1).all()


def test_batched_scores_equal_each_profile_and_json_round_trip() -> None:
    rng = np.random.default_rng(1)
    V = rng.normal(size=(30, 8)).astype(np.float32)
    V /= np.linalg.norm(V, axis=1, keepdims=True)
    profiles = [InterestProfile(8, max_interests=3, merge_threshold=0.5, position_decay=0.8) for _ in range(5)]
    for u, prof in enumerate(profiles[1:], start=1):  # profile 0 stays empty
        for r in rng.integers(0, 30, size=u * 3).tolist():
            prof.add(V[r], 1.0 + r % 3, item=r)
    for gram in (None, V @ V.T):
        batched = score_profiles(profiles, V, beta=7.0, chunk=2, item_gram=gram)
        for u, prof in enumerate(profiles):
            assert np.allclose(batched[u], prof.score(V, beta=7.0)[0], rtol=1e-4, atol=1e-6)
    again = InterestProfile.from_dict(json.loads(json.dumps(profiles[3].to_dict())))
    assert np.array_equal(again.centers, profiles[3].centers) and again.anchors == profiles[3].anchors
    assert np.allclose(again.score(V)[0], profiles[3].score(V)[0])


def test_profile_codec_stores_single_item_interests_by_reference() -> None:
    from engine.recommend.content import decode_profile, encode_profile

    def vectors_of(items: list[str]) -> tuple[np.ndarray, np.ndarray]:
        found = np.array([i in served for i in items], bool)
        return found, np.array([served.get(i, E[0]) for i in items], np.float32).reshape(-1, 4)

    served = {"a": E[0], "b": E[1], "c": unit([0, 0, 1, 1])}
    p = InterestProfile(4, max_interests=3, merge_threshold=0.5)
    p.add(E[0], 2.0, item="a")  # interest 0: 2 * e0, a single item
    p.add(unit([1, 0.2, 0, 0]), 1.0, item="a2")  # cos 0.98 with e0 >= 0.5: merges, anchor "a2" (not served)
    p.add(E[1], 1.0, item="b")  # interest 1: 1 * e1
    p.add(served["c"], 3.0, item="c")  # interest 2
    raw = encode_profile(p, vectors_of)
    assert len(raw.split(b"\n", 1)[1]) == 4 * 4  # only the merged interest keeps its floats
    back = decode_profile(raw, vectors_of)
    assert back.anchors == p.anchors and np.allclose(back.mass, p.mass) and np.allclose(back.centers, p.centers)
    with pytest.raises(ValueError):
        decode_profile(raw)  # interests by reference need the look-up
    del served["b"]  # b is no longer served: its interest goes, the others stay
    gone = decode_profile(raw, vectors_of)
    assert gone.anchors == ["a2", "c"] and np.allclose(gone.centers, p.centers[[0, 2]])


def test_profile_search_through_faiss_matches_exact_scores() -> None:
    from engine.index.vector import VectorIndex, build_vector_index

    rng = np.random.default_rng(2)
    V = rng.normal(size=(200, 16)).astype(np.float32)
    V /= np.linalg.norm(V, axis=1, keepdims=True)
    index, info = build_vector_index(V, approx_threshold=1000, nprobe=1, target_recall=0.9)
    vi = VectorIndex(index, V, info.nprobe)
    p = InterestProfile(16, max_interests=3, merge_threshold=0.95)
    for r in (3, 50, 120):
        p.add(V[r], 1.0, item=r)
    rows, scores = p.search(vi, 5, beta=10.0)
    exact, _ = p.score(V, beta=10.0)
    top = np.lexsort((np.arange(200), -exact))[:5]
    assert rows.tolist() == top.tolist()
    assert np.allclose(scores, exact[top], rtol=1e-5)


# -- co-occurrence ----------------------------------------------------------------------------------

def test_cooccurrence_counts_by_hand() -> None:
    m = CooccurrenceModel(window=2, distance_decay=0.5, backward_weight=0.5)
    m.add_sequence(["a", "b", "c"])
    m.add_sequence(["b", "c"])
    # Sequence 1: a->b gap 1 (1, back 0.5); b->c gap 1 (1, back 0.5); a->c gap 2 (0.5, back 0.25).
    # Sequence 2: b->c gap 1 (1, back 0.5).
    expected = {("a", "b"): 1.0, ("b", "a"): 0.5, ("b", "c"): 2.0, ("c", "b"): 1.0, ("a", "c"): 0.5, ("c", "a"): 0.25}
    for (x, y), v in expected.items():
        assert m.count(x, y) == pytest.approx(v)
    assert len(m) == 6 and m.count("a", "a") == 0.0
    assert m.mass == {"a": 1.0, "b": 2.0, "c": 2.0}
    # With a window of 1 only adjacent events pair.
    w1 = CooccurrenceModel(window=1, distance_decay=0.5, backward_weight=0.5)
    w1.add_sequence(["a", "b", "c"])
    assert w1.count("a", "c") == 0.0 and w1.count("a", "b") == 1.0
    # Forward-only transitions.
    fwd = CooccurrenceModel(window=3, backward_weight=0.0)
    fwd.add_sequence(["a", "b"])
    assert fwd.count("a", "b") == 1.0 and fwd.count("b", "a") == 0.0 and "b" not in fwd.pairs


def test_events_sequences_and_bulk_fit_agree() -> None:
    rng = np.random.default_rng(3)
    seqs = [rng.integers(0, 12, size=int(rng.integers(1, 9))).tolist() for _ in range(40)]
    one = CooccurrenceModel(window=3, distance_decay=0.7, backward_weight=0.6)
    for s in seqs:
        one.add_sequence(s)
    live = CooccurrenceModel(window=3, distance_decay=0.7, backward_weight=0.6)
    for t in range(9):  # events interleaved across users, as they would arrive
        for u, s in enumerate(seqs):
            if t < len(s):
                live.add_event(f"user{u}", s[t])
    bulk = CooccurrenceModel(window=3, distance_decay=0.7, backward_weight=0.6)
    bulk.add_sequences(seqs)
    rows = {i: i for i in range(12)}
    for other in (live, bulk):
        assert other.mass == pytest.approx(one.mass)
        assert np.allclose(other.count_csr(rows, 12).toarray(), one.count_csr(rows, 12).toarray())
    # An event's weight scales its pairs by sqrt(w_prev * w_new).
    w = CooccurrenceModel(window=2, backward_weight=1.0)
    w.add_event("u", "x", 4.0)
    w.add_event("u", "y", 1.0)
    assert w.count("x", "y") == pytest.approx(2.0) and w.mass == {"x": 4.0, "y": 1.0}


def test_cooccurrence_scores_by_hand_and_as_a_matrix() -> None:
    m = CooccurrenceModel(window=2, distance_decay=0.5, backward_weight=0.5)
    m.add_sequence(["a", "b", "c"])
    m.add_sequence(["b", "c"])
    got = m.scores([("b", 1.0)], source_exponent=0.5, target_exponent=0.0)
    # score(j) = r_b * mass_b ** -0.5 * C[b, j]: C[b, c] = 2, C[b, a] = 0.5, mass_b = 2.
    assert got["c"][0] == pytest.approx(2 / math.sqrt(2)) and got["a"][0] == pytest.approx(0.5 / math.sqrt(2))
    assert got["c"][1] == "b"
    two = m.scores([("a", 0.5), ("b", 1.0)], source_exponent=0.0, target_exponent=1.0)
    # c: 0.5 * C[a, c] / mass_c + 1 * C[b, c] / mass_c = 0.5 * 0.5 / 2 + 2 / 2; the bigger share is b's.
    assert two["c"][0] == pytest.approx(0.125 + 1.0) and two["c"][1] == "b"
    rows = {"a": 0, "b": 1, "c": 2}
    S = m.to_csr(rows, 3, source_exponent=0.0, target_exponent=1.0)
    H = np.array([[0.5, 1.0, 0.0]], np.float32)
    dense, because = m.scores_dense([("a", 0.5), ("b", 1.0)], rows, 3, source_exponent=0.0, target_exponent=1.0)
    assert np.allclose((H @ S.toarray())[0], dense)
    assert because.tolist() == [1, 0, 1]  # a <- b, b <- a, c <- b
    # One item's scores of a few candidates (the ranker's live inputs) are exactly those of scores().
    for item in ("a", "b", "c", "unknown"):
        full = m.scores([(item, 1.0)])
        cands = ["c", "unknown", "a", "b"]
        assert m.scores_of(item, cands).tolist() == [full.get(j, (0.0, None))[0] for j in cands]


# -- trending ---------------------------------------------------------------------------------------

def test_trending_decay_by_hand() -> None:
    t = TrendingModel(half_life_s=10.0)
    t.add_event("x", 1.0, timestamp=0.0)
    t.add_event("x", 1.0, timestamp=10.0)
    t.add_event("y", 1.0, timestamp=10.0)
    assert t.score("x", now=10.0) == pytest.approx(1.5)  # 0.5 + 1
    assert t.score("x", now=20.0) == pytest.approx(0.75)
    assert t.score("y") == pytest.approx(1.0)  # now = latest event
    assert t.top(1, now=10.0) == [("x", pytest.approx(1.5))]
    # Far-apart events rebase instead of overflowing.
    t.add_event("z", 1.0, timestamp=10.0 + 10.0 * 1000)
    assert t.score("z") == pytest.approx(1.0) and t.score("x") == pytest.approx(1.5 * 2.0 ** -1000)
    counts = TrendingModel()
    for item in "aab":
        counts.add_event(item)
    assert counts.scores_dense({"a": 1, "b": 0}, 3).tolist() == [1.0, 2.0, 0.0]
    with pytest.raises(ValueError):
        TrendingModel(5.0).add_event("a")


# -- blender ----------------------------------------------------------------------------------------

def test_zscore_by_hand() -> None:
    z = zscore(np.array([1.0, 2.0, 3.0, 100.0]), np.array([True, True, True, False]))
    assert np.allclose(z, [-math.sqrt(1.5), 0.0, math.sqrt(1.5), 0.0])  # mean 2, std sqrt(2/3)
    assert not zscore(np.full(5, 3.0)).any()
    batch = zscore(np.array([[0.0, 2.0], [5.0, 5.0]]))
    assert np.allclose(batch, [[-1.0, 1.0], [0.0, 0.0]])
    rng = np.random.default_rng(4)  # one row (the serving path) agrees with the batched form
    x, ok = rng.normal(size=(3, 50)), rng.random(50) > 0.3
    batched = zscore(x, ok)
    for i, row in enumerate(x):
        assert np.allclose(zscore(row, ok), batched[i]) and np.allclose(zscore(row), zscore(x)[i])


def _catalog() -> dict:
    titles = ["Alpha drill", "Beta drill", "Gamma saw", "Delta glue", "Epsilon tape"]
    cats = ["Tools > Drills", "Tools > Drills", "Tools > Saws", "Adhesives", "Adhesives"]
    return {"title_of": lambda r: titles[r], "category_of": lambda r: cats[r]}


def test_blender_exclusions_and_filters() -> None:
    parts = {"popular": np.array([5.0, 4.0, 3.0, 2.0, 1.0])}
    b = Blender(BlendWeights(content=0.0, cooccurrence=0.0, popular=1.0))
    rows = lambda recs: [r.row for r in recs]  # noqa: E731
    assert rows(b.recommend(parts, k=3)) == [0, 1, 2]
    assert rows(b.recommend(parts, k=3, purchased=[0])) == [1, 2, 3]
    assert rows(Blender(b.weights, exclude_purchased=False).recommend(parts, k=3, purchased=[0])) == [0, 1, 2]
    assert rows(b.recommend(parts, k=3, seen=[0])) == [0, 1, 2]
    assert rows(Blender(b.weights, exclude_seen=True).recommend(parts, k=3, seen=[0, 1])) == [2, 3, 4]
    in_stock = np.array([True, False, True, True, True])
    assert rows(b.recommend(parts, k=3, in_stock=in_stock)) == [0, 2, 3]
    price_ok = np.array([False, True, True, False, True])  # e.g. Snapshot.filter_mask(max_price=...)
    assert rows(b.recommend(parts, k=5, filter_mask=price_ok, in_stock=in_stock)) == [2, 4]
    assert b.recommend(parts, k=3, filter_mask=np.zeros(5, bool)) == []
    assert eligible_mask(4, exclude_rows=[1, 9], in_stock=np.array([1, 1, 0, 1], bool)).tolist() == [True, False, False, True]
    # Ties go to the lowest row.
    assert rows(b.recommend({"popular": np.array([1.0, 2.0, 2.0, 2.0, 0.0])}, k=3)) == [1, 2, 3]


def test_blender_combines_z_scores_with_the_weights() -> None:
    co = np.array([0.0, 4.0, 0.0, 0.0, 0.0])
    ct = np.array([1.0, 1.0, 3.0, 1.0, 1.0])
    b = Blender(BlendWeights(content=0.5, cooccurrence=1.0, popular=0.0))
    # z(co) = [-0.5, 2, -0.5, -0.5, -0.5]; z(ct) = same pattern for row 2: total row 1 = 2 - 0.25, row 2 = -0.5 + 1.
    total = b.combine({"cooccurrence": co, "content": ct})
    assert np.allclose(total, [-0.75, 1.75, 0.5, -0.75, -0.75])
    recs = b.recommend({"cooccurrence": co, "content": ct}, k=2)
    assert [r.row for r in recs] == [1, 2] and recs[0].score == pytest.approx(1.75)
    assert recs[0].parts == pytest.approx({"cooccurrence": 2.0, "content": -0.25})
    batch = b.combine({"cooccurrence": np.stack([co, ct]), "content": np.stack([ct, co])}, np.ones((2, 5), bool))
    assert np.allclose(batch[0], total)
    with pytest.raises(ValueError):
        b.combine({"nope": co})


def test_mmr_trades_relevance_for_diversity() -> None:
    vectors = np.stack([E[0], unit([1.0, 0.05, 0, 0]), E[1], E[2], E[3]])  # rows 0 and 1 are near-duplicates
    parts = {"popular": np.array([1.0, 0.95, 0.9, 0.1, 0.0])}
    w = BlendWeights(content=0.0, cooccurrence=0.0, popular=1.0)
    plain = Blender(w).recommend(parts, k=3, item_vectors=vectors)
    assert [r.row for r in plain] == [0, 1, 2]
    diverse = Blender(w, mmr_lambda=0.5).recommend(parts, k=3, item_vectors=vectors)
    # After row 0, row 1 scores 0.5 * 0.95-ish - 0.5 * 0.9988 < row 2's 0.5 * 0.9 - 0: row 2 goes second.
    assert [r.row for r in diverse][:2] == [0, 2]
    assert Blender(w, mmr_lambda=1.0).recommend(parts, k=3, item_vectors=vectors)[1].row == 1
    with pytest.raises(ValueError):
        Blender(w, mmr_lambda=1.5)


def test_every_recommendation_carries_its_reason() -> None:
    n = 5
    co = np.array([0.0, 0.0, 0.0, 3.0, 0.0])  # row 3, because of history row 0
    co_because = np.array([-1, -1, -1, 0, -1])
    ct = np.array([0.1, 0.1, 2.0, 0.1, 0.1])  # row 2 is close to the interest anchored at history row 1
    ct_because = np.full(n, 1)
    pop = np.array([0.0, 0.0, 0.0, 0.0, 9.0])  # row 4 is popular
    b = Blender(BlendWeights(content=1.0, cooccurrence=1.0, popular=1.0))
    recs = b.recommend({"cooccurrence": co, "content": ct, "popular": pop}, k=5, purchased=[0, 1],
                       because={"cooccurrence": co_because, "content": ct_because}, **_catalog())
    by_row = {r.row: r for r in recs}
    assert set(by_row) == {2, 3, 4}
    assert by_row[3].reason == "often bought after Alpha drill" and by_row[3].because_row == 0
    assert by_row[2].reason == "because you viewed Beta drill" and by_row[2].reason_source == "content"
    assert by_row[4].reason == "trending in Adhesives" and by_row[4].reason_source == "popular"
    assert all(r.reason for r in recs)
    assert json.loads(json.dumps(recs[0].to_dict()))["reason"] == recs[0].reason


# -- evaluation -------------------------------------------------------------------------------------

def test_target_ranks_ties_and_exclusions_by_hand() -> None:
    scores = np.array([
        [0.9, 0.5, 0.5, 0.1],  # target 2: 0.9 above, tie with row 1 (lower row first) -> rank 3
        [0.9, 0.5, 0.5, 0.1],  # target 1, row 0 excluded -> rank 1
        [0.2, 0.2, 0.2, 0.2],  # target 3, all tied: rows 0, 1, 2 first -> rank 4
        [0.9, 0.5, 0.5, 0.1],  # target 0 excluded (in the history) -> miss (n + 1)
    ])
    excluded = np.zeros((4, 4), bool)
    excluded[1, 0] = excluded[3, 0] = True
    ranks = target_ranks(scores, np.array([2, 1, 3, 0]), excluded, chunk=3)
    assert ranks.tolist() == [3, 1, 4, 5]


def test_leave_one_out_metrics_by_hand_and_against_the_generic_ones() -> None:
    ranks = np.array([1, 3, 11, 60])
    m = loo_metrics(ranks)
    assert m["R@10"] == 0.5 and m["R@50"] == 0.75
    assert m["N@10"] == pytest.approx((1 + 0.5) / 4, abs=1e-4)  # 1/log2(2) + 1/log2(4)
    assert m["N@50"] == pytest.approx((1 + 0.5 + 1 / math.log2(12)) / 4, abs=1e-4)
    for k in (10, 50):  # the same as recall/nDCG of engine.evaluation.metrics with one relevant item
        gen_r = np.mean([recall_at_k([0] * (r - 1) + [1], {1}, k) if r > 1 else recall_at_k([1], {1}, k) for r in ranks])
        gen_n = np.mean([ndcg_at_k([0.0] * (r - 1) + [1.0], [1.0], k) for r in ranks])
        assert m[f"R@{k}"] == pytest.approx(gen_r, abs=1e-4) and m[f"N@{k}"] == pytest.approx(gen_n, abs=1e-4)
    assert objective(m) == m["R@10"] + m["N@10"]


def test_split_keeps_targets_out_of_the_fit() -> None:
    data = RecData("toy", ["a", "b", "c", "d", "e"], list("ABCDE"), np.eye(5, dtype=np.float32),
                   [np.array([0, 1, 2, 3]), np.array([4, 2, 1]), np.array([1, 2])])
    train, train_t, val, test = split(data)  # the 2-item user is dropped: nothing left to fit
    assert [t.tolist() for t in train] == [[0, 1], [4]] and train_t is None
    assert val.targets.tolist() == [2, 2] and [h.tolist() for h in val.hists] == [[0, 1], [4]]
    assert test.targets.tolist() == [3, 1] and [h.tolist() for h in test.hists] == [[0, 1, 2], [4, 2]]
    assert test.excluded[1].tolist() == [False, False, True, False, True]
    H = history_matrix([np.array([1, 1, 3])], 5, [np.array([0.5, 0.25, 1.0])])
    assert H.toarray().tolist() == [[0.0, 0.75, 0.0, 1.0, 0.0]]
    assert isinstance(val, Phase) and val.n_users == 2


def test_coordinate_search_finds_the_grid_optimum_of_a_separable_objective() -> None:
    calls = []

    def f(p: dict) -> dict:
        calls.append(p)
        v = -abs(p["x"] - 2) - abs(p["y"] - 0.5)
        return {"R@10": v, "N@10": 0.0}

    best, m, trace = coordinate_search({"x": [0, 1, 2, 3], "y": [0.0, 0.5, 1.0]}, f)
    assert best == {"x": 2, "y": 0.5} and m["R@10"] == 0.0
    assert len(calls) == len(trace) == len({(c["x"], c["y"]) for c in calls})  # memoised


# -- the evaluation on small real slices --------------------------------------------------------------

def _check_report(report, rows: set[str]) -> dict:
    data = report.to_dict()
    json.dumps(data)
    assert set(data["test"]) == rows and set(data["validation"]) == rows
    for split_name in ("test", "validation"):
        for m in data[split_name].values():
            assert set(m) == {"R@10", "N@10", "R@50", "N@50"}
            assert all(0.0 <= v <= 1.0 for v in m.values())
            assert m["R@10"] <= m["R@50"] and m["N@10"] <= m["N@50"]
    # The joint search includes the co-occurrence-only blend (content and popularity weights 0), so on
    # validation the tuned blend cannot be worse (up to float32 rounding of the z-scores).
    assert objective(data["validation"]["blend"]) >= objective(data["validation"]["co-occurrence"]) - 2e-3
    assert any("TEST" in line for line in report.lines())
    return data


def test_eval_on_a_scientific_slice(tmp_path: Path, models_dir: Path, encoder: Encoder) -> None:
    data_dir = scientific_slice(tmp_path, 50)
    part = pd.read_csv(data_dir / "amazon_scientific_unisrec" / "interactions.csv.gz")
    config = make_config(tmp_path / "indexes", models_dir)
    report = run_recommend_eval(config, "scientific", data_dir=tmp_path / "data", encoder=encoder)
    data = _check_report(report, {"popularity", "content", "content, 1 vector", "co-occurrence", "blend",
                                  "learned ranker (MLP)", "MLP, 3 seeds merged", "LambdaMART"})
    assert data["counts"]["users"] == 50 and data["counts"]["items"] == part["item_id"].nunique()
    assert data["published"]["rows"]["UniSRec (published)"]["R@10"] == 0.1235
    assert data["target_check"]["best_published"] == {"R@10": 0.1235, "N@10": 0.0641}
    assert (tmp_path / "indexes" / "eval" / "scientific" / data["index_version"] / "vectors.npy").is_file()
    # A second run reuses the built index version instead of rebuilding.
    again = run_recommend_eval(config, "scientific", data_dir=tmp_path / "data", encoder=encoder)
    assert again.index_version == report.index_version and again.test == report.test


def test_eval_on_a_movielens_slice_with_als(tmp_path: Path, models_dir: Path, encoder: Encoder) -> None:
    src = SHARED / "movielens_100k"
    ratings = pd.read_csv(src / "u.data", sep="\t", header=None, names=["u", "i", "r", "t"])
    top = ratings["i"].value_counts().index[:80]
    part = ratings[ratings["i"].isin(top)]
    keep = part["u"].value_counts()
    part = part[part["u"].isin(sorted(keep[keep >= 10].index)[:40])]
    out = tmp_path / "data" / "movielens_100k"
    out.mkdir(parents=True)
    part.to_csv(out / "u.data", sep="\t", header=False, index=False)
    lines = (src / "u.item").read_text(encoding="latin-1").splitlines()
    wanted = {str(i) for i in part["i"].unique()}
    (out / "u.item").write_text("\n".join(ln for ln in lines if ln.split("|")[0] in wanted) + "\n", encoding="latin-1")
    config = make_config(tmp_path / "indexes", models_dir)
    report = run_recommend_eval(config, "movielens100k", data_dir=tmp_path / "data", encoder=encoder)
    data = _check_report(report, {"popularity", "content", "content, 1 vector", "co-occurrence", "blend", "ALS (implicit)"})
    assert data["counts"]["users"] == 40 and data["counts"]["items"] == len(wanted)
    assert set(data["tuned"]["als"]) == {"factors", "regularization", "alpha", "iterations"}
    assert data["target_check"] is None
    # The item vectors came from the embedding cache in the eval folder.
    assert (tmp_path / "indexes" / "eval" / "movielens100k" / "cache" / "embeddings.sqlite").is_file()


def test_unknown_dataset_is_refused(tmp_path: Path, models_dir: Path) -> None:
    with pytest.raises(ValueError):
        run_recommend_eval(make_config(tmp_path / "indexes", models_dir), "nope")


def test_default_weights_are_documented() -> None:
    assert set(BlendWeights().as_dict()) == {"content", "cooccurrence", "popular"}
    assert DEFAULT_EVENT_WEIGHTS["purchase"] > DEFAULT_EVENT_WEIGHTS["add_to_cart"] > DEFAULT_EVENT_WEIGHTS["click"]
    assert gzip  # the shared data files are gzip CSV, read by pandas
