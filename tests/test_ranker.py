"""Issue 9, parts 3-5 and 9: the learned ranker trains, serves from a published version, hot-reloads, refuses a
corrupt file, and sees at serving exactly the features it is trained on."""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.config import EngineConfig
from engine.embedding.base import Encoder
from engine.learn import registry
from engine.learn.dataset import logged_rows
from engine.learn.model import MlpRanker
from engine.learn.train import TrainConfig, mean_ndcg, train_from_logs, train_mlp
from engine.ranking.features import RECOMMEND_FEATURES, position_feature
from engine.service import Engine

COL = {name: i for i, name in enumerate(RECOMMEND_FEATURES)}


def test_training_on_a_tiny_set_ranks_the_known_preferred_item_first() -> None:
    rng = np.random.default_rng(7)
    F = len(RECOMMEND_FEATURES)

    def lists(n: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
        X = rng.normal(0, 0.1, size=(n * 6, F)).astype(np.float32)  # a little noise in every other feature
        X[:, COL["sim_last"]] = rng.uniform(-0.2, 0.5, n * 6)
        X[:, COL["same_category_last"]] = rng.integers(0, 2, n * 6)
        y = np.zeros(n * 6, np.float32)
        for i in range(n):  # the shopper takes the one item close to their last one, in its category
            best = i * 6 + int(rng.integers(0, 6))
            X[best, COL["sim_last"]] = rng.uniform(0.6, 1.0)
            X[best, COL["same_category_last"]] = 1.0
            y[best] = 1.0
        return X, y, [6] * n

    X, y, g = lists(120)
    Xv, yv, gv = lists(30)
    res = train_mlp(X, y, g, Xv, yv, gv, RECOMMEND_FEATURES, TrainConfig(hidden=(16,), lr=1e-2, batch_size=32, seed=0))
    Xt, yt, gt = lists(50)
    scores = res.model.score(Xt)
    firsts = [int(np.argmax(scores[i * 6:(i + 1) * 6])) == int(np.argmax(yt[i * 6:(i + 1) * 6])) for i in range(50)]
    assert all(firsts), f"{sum(firsts)}/50 lists have the preferred item first"
    assert mean_ndcg(scores, yt, gt) == pytest.approx(1.0)
    again = train_mlp(X, y, g, Xv, yv, gv, RECOMMEND_FEATURES, TrainConfig(hidden=(16,), lr=1e-2, batch_size=32, seed=0))
    assert np.array_equal(again.model.score(Xt), scores), "fixed seeds give the same model"


def test_a_column_constant_in_training_moves_neither_training_nor_serving() -> None:
    """The same net is trained with or without a column the training rows hold at one value (its weights
    0), and a value it takes at serving does not move the score."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3)).astype(np.float32)
    y = (X[:, 0] + 0.5 * rng.normal(size=400) > 0).astype(np.float32)
    groups = [10] * 40
    cfg = TrainConfig(max_epochs=6, batch_size=64)
    plain = train_mlp(X[:300], y[:300], groups[:30], X[300:], y[300:], groups[30:], ("a", "b", "c"), cfg).model
    Xc = np.insert(X, 1, 7.0, axis=1)
    held = train_mlp(Xc[:300], y[:300], groups[:30], Xc[300:], y[300:], groups[30:], ("a", "k", "b", "c"), cfg).model
    assert np.allclose(plain.score(X), held.score(Xc), atol=1e-6)
    assert not held.layers[0][0][1].any() and held.layers[0][0][[0, 2, 3]].any()
    served = Xc.copy()
    served[:, 1] = 123.0
    assert np.allclose(held.score(served), held.score(Xc))


def test_an_ensemble_is_one_mlp_scoring_its_members_mean_logit(tmp_path: Path) -> None:
    from engine.learn.model import merge_mlps

    rng = np.random.default_rng(3)
    F = len(RECOMMEND_FEATURES)
    X = rng.normal(size=(1000, F)).astype(np.float32)
    y = (X[:, COL["sim_last"]] + 0.5 * rng.normal(size=1000) > 1.0).astype(np.float32)
    g = [10] * 100
    cfg = TrainConfig(hidden=(8, 4), lr=1e-2, batch_size=64, max_epochs=5, seed=11)
    members = [train_mlp(X, y, g, X, y, g, RECOMMEND_FEATURES, replace(cfg, seed=11 + i)).model for i in range(3)]
    merged = train_mlp(X, y, g, X, y, g, RECOMMEND_FEATURES, replace(cfg, ensemble=3)).model
    assert [W.shape for W, _ in merged.layers] == [(F, 24), (24, 12), (12, 1)]
    want = np.mean([m.score(X) for m in members], axis=0)
    assert np.allclose(merged.score(X), want, atol=1e-5) and np.allclose(merge_mlps(members).score(X), want, atol=1e-5)
    assert not np.allclose(members[0].score(X), members[1].score(X))  # the seeds differ, so the mean is news
    merged.save(tmp_path)
    assert np.array_equal(MlpRanker.load(tmp_path, features=RECOMMEND_FEATURES).score(X), merged.score(X))
    with pytest.raises(ValueError, match="same features"):
        merge_mlps([members[0], MlpRanker(members[0].features, members[0].mean + 1, members[0].scale, members[0].layers)])


def test_the_scientific_bootstrap_publishes_the_seeds_merged(tmp_path: Path, models_dir: Path) -> None:
    from engine.evaluation.ranker_eval import SEEDS, train_bootstrap
    from tests.conftest import make_config, scientific_slice

    data_dir = scientific_slice(tmp_path, 60)
    config = make_config(tmp_path / "indexes", models_dir)
    manifest = train_bootstrap(config, "recommend", "scientific", seed=4, data_dir=data_dir)
    assert manifest["training"]["seeds"] == [4 + i for i in range(len(SEEDS))]
    assert len(manifest["training"]["members"]) == len(SEEDS) == manifest["training"]["ensemble"]
    model = registry.load_version(config.rankers_path, "recommend", manifest["version"], RECOMMEND_FEATURES)[0]
    assert model.layers[0][0].shape == (len(RECOMMEND_FEATURES), 64 * len(SEEDS))  # the members side by side
    assert set(manifest["metrics"]) == {"validation", "test"} and "mlp" in manifest["metrics"]["test"]


def reference_text_features(stats: Any, query: str, items: list[tuple[str, str, str | None, tuple[str, ...]]]
                            ) -> dict[str, np.ndarray]:
    """The query-text features computed the plain way, one candidate at a time from its tokens, as the
    definitions in engine.ranking.features read (the served code matches prepared RowTexts against the query
    over all candidates at once). ``items``: (title, description, brand, category path)."""
    import math

    from engine.index.keyword import tokenize
    from engine.ranking.features import BM25_B, BM25_K1, SEARCH_FIELDS, brand_key
    from engine.ranking.fields import norm

    q_tokens = tokenize([query])[0]
    terms = list(dict.fromkeys(q_tokens))
    total = sum(stats.idf.get(t, 0.0) for t in terms)
    q = norm(query)
    q_tri = {f" {q} "[i:i + 3] for i in range(len(q))} if q else set()
    out: dict[str, list[float]] = {}
    for title_text, description, brand_text, category in items:
        fields = dict(zip(SEARCH_FIELDS, tokenize([title_text, description, brand_text or "", " ".join(category)])))
        row: dict[str, float] = {}
        for f, doc in fields.items():
            norm_len = BM25_K1 * (1 - BM25_B + BM25_B * len(doc) / stats.avg_len[f])
            row[f"bm25_{f}"] = sum(stats.idf[t] * doc.count(t) * (BM25_K1 + 1) / (doc.count(t) + norm_len)
                                   for t in terms if t in stats.idf and t in doc)
        anywhere = {t for doc in fields.values() for t in doc}
        row["cover_title"] = sum(stats.idf.get(t, 0.0) for t in terms if t in fields["title"]) / total if total else 0.0
        row["cover_all"] = sum(stats.idf.get(t, 0.0) for t in terms if t in anywhere) / total if total else 0.0
        row["missing_title"] = sum(t not in fields["title"] for t in terms)
        qb = set(zip(q_tokens[:-1], q_tokens[1:]))
        tb = set(zip(fields["title"][:-1], fields["title"][1:]))
        row["bigrams_title"] = len(qb & tb) / len(qb) if qb else 0.0
        title = norm(title_text)
        t_tri = {f" {title} "[i:i + 3] for i in range(len(title))} if title else set()
        row["title_trigrams"] = len(q_tri & t_tri) / len(q_tri | t_tri) if q_tri else 0.0
        row["exact_title"] = float(bool(q) and title == q)
        row["phrase_in_title"] = float(bool(q) and f" {q} " in f" {title} ")
        brand = brand_key(brand_text)
        row["brand_in_query"] = float(bool(q) and bool(brand) and f" {brand} " in f" {q} ")
        leaf = norm(category[-1]) if category else ""
        row["category_in_query"] = float(bool(q) and bool(leaf) and f" {leaf} " in f" {q} ")
        row["title_terms"] = math.log1p(len(fields["title"]))
        row["query_terms"] = math.log1p(len(terms))
        for name, v in row.items():
            out.setdefault(name, []).append(v)
    return {name: np.asarray(v, np.float64) for name, v in out.items()}


def test_search_text_features_equal_their_plain_definition(engine: Engine) -> None:
    """The served search features (each item's text prepared once, the query matched against all candidates
    at once) equal the definition computed one candidate at a time: on real items and queries (repeated and
    unknown terms, a brand, an exact title, stop words only, one letter), and on hand-made items with
    descriptions, repeated terms and empty fields."""
    from engine.index.keyword import tokenize
    from engine.ranking.features import SEARCH_FEATURES, RowText, SearchCandidates, TextVocab, brand_key, search_features
    from engine.ranking.fields import FieldTokens, norm, query_terms
    from engine.search import search_inputs

    snap = engine.snapshot()
    stats = FieldTokens.of(snap).stats
    p0 = snap.catalog[0]
    queries = [p0.title, f"{p0.brand or 'acme'} {p0.title.split()[0]}", "pla filament spool pla",
               "glass beaker 600 ml zzqx", "the and of", "a", "nitrile gloves", "filament filament spool 3d printing"]
    rows = list(range(min(60, len(snap))))
    real = [(snap.catalog[r].title, snap.catalog[r].description, snap.catalog[r].brand, snap.catalog[r].category)
            for r in rows]
    made = [("PLA Filament Spool", "pla pla filament for 3d printers; the spool holds 1 kg of PLA filament", "eSUN",
             ("Industrial & Scientific", "3D Printing Filament")),
            ("Nitrile Gloves", "", None, ()),
            ("", "glass beaker, 600 ml, glass", "Pyrex Labs", ("Lab", "Beakers")),
            ("spool", "spool " * 40, "", ("Spool",))]
    rng = np.random.default_rng(2)
    col = {name: i for i, name in enumerate(SEARCH_FEATURES)}
    nonzero = set()
    for query in queries:
        bm25, vec = rng.random(len(rows)), rng.random(len(rows))
        got = search_features(search_inputs(snap, query, np.asarray(rows), bm25, vec, bm25 + vec, None))
        vocab = TextVocab()
        texts = [RowText.of(tokenize([t, d, b or "", " ".join(c)]), norm(t), brand_key(b), norm(c[-1]) if c else "",
                             vocab) for t, d, b, c in made]
        z = np.zeros(len(made))
        got_made = search_features(SearchCandidates(query_terms(query), norm(query), z, z, z, texts, vocab, stats))
        for items, values in ((real, got), (made, got_made)):
            for name, want in reference_text_features(stats, query, items).items():
                np.testing.assert_allclose(values[:, col[name]], want, rtol=1e-6, atol=1e-7, err_msg=f"{name}: {query!r}")
                nonzero |= {name} if want.any() else set()
    assert {"bm25_title", "bm25_description", "bm25_brand", "bm25_category", "cover_title", "cover_all",
            "bigrams_title", "title_trigrams", "exact_title", "phrase_in_title", "missing_title",
            "brand_in_query", "category_in_query"} <= nonzero, "the queries exercise every feature"


def test_search_features_hold_when_the_prepared_texts_start_over(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the kept texts outgrow MAX_ROWS they start over with a new vocabulary: the features of the same
    query are unchanged, and a search that got its texts before the reset still computes with their own
    vocabulary."""
    from engine.ranking import fields
    from engine.ranking.features import search_features
    from engine.search import search_inputs

    snap = engine.snapshot()
    n = len(snap)
    monkeypatch.setattr(fields, "_by_version", {})  # a FieldTokens of its own, which prepares one row at start
    monkeypatch.setattr(fields, "SAMPLE", 1)
    monkeypatch.setattr(fields, "MAX_ROWS", n - 1)
    rows = np.arange(n // 3, dtype=np.int64)
    bm25, vec = np.linspace(1, 0, len(rows)), np.linspace(0, 1, len(rows))
    before = search_inputs(snap, "pla filament spool", rows, bm25, vec, bm25 + vec, None)
    want = search_features(before)
    assert want.any()
    fields.FieldTokens.of(snap).texts(list(range(n // 3, n)))  # all n rows would be kept: starts over
    after = search_inputs(snap, "pla filament spool", rows, bm25, vec, bm25 + vec, None)
    assert after.vocab is not before.vocab
    assert np.array_equal(search_features(after), want)
    assert np.array_equal(search_features(before), want), "the earlier texts keep their own vocabulary"


def reverse_blend() -> MlpRanker:
    """A one-layer 'model' that ranks the blend's candidates in reverse: score = -blend."""
    W = np.zeros((len(RECOMMEND_FEATURES), 1), np.float32)
    W[COL["blend"], 0] = -1.0
    F = len(RECOMMEND_FEATURES)
    return MlpRanker(RECOMMEND_FEATURES, np.zeros(F, np.float32), np.ones(F, np.float32), [(W, np.zeros(1, np.float32))])


def ingest(engine: Engine, user: str, items: list[str]) -> None:
    now = time.time()
    result = engine.ingest([{"event_id": f"{user}-{i}", "user_id": user, "type": "view", "item_id": item,
                             "timestamp": now - 100 + i} for i, item in enumerate(items)])
    assert len(result.accepted) == len(items)


def test_no_model_serves_the_blend_a_published_one_hot_reloads_a_corrupt_one_is_refused(
        config: EngineConfig, encoder: Encoder) -> None:
    engine = Engine(config, encoder=encoder, log_impressions=True)
    ingest(engine, "ann", ["goggles", "fil-pla-red"])
    blend = engine.recommend("ann", k=5)
    assert engine.rankers.get("recommend") is None
    assert engine.impressions is not None
    engine.impressions.flush()
    assert engine.events.get_impression(blend.request_id).policy == "blend"

    version = registry.publish(config.rankers_path, "recommend", reverse_blend(), {"training": {"data": "test"}})
    learned = engine.recommend("ann", k=5)
    engine.impressions.flush()
    assert engine.events.get_impression(learned.request_id).policy == f"ranker:{version}"
    served = engine.info().to_dict()["rankers"]
    assert served["search"] is None and served["recommend"]["version"] == version
    assert served["recommend"]["training"] == {"data": "test"}
    ids = [r.id for r in learned.recommendations]
    assert ids != [r.id for r in blend.recommendations]
    scores = [r.score for r in learned.recommendations]
    assert scores == sorted(scores, reverse=True), "the model's scores order the list"

    # A corrupt version is refused: the one before keeps serving, and the error says why.
    bad = registry.publish(config.rankers_path, "recommend", reverse_blend(), {"training": {"data": "test2"}})
    (registry.version_dir(config.rankers_path, "recommend", bad) / "weights.npz").write_bytes(b"not a model")
    Engine(config, encoder=encoder)  # another process starting now must not crash either
    still = engine.recommend("ann", k=5)
    assert [r.id for r in still.recommendations] == ids
    loaded = engine.rankers.get("recommend")
    assert loaded is not None and loaded.version == version
    assert "sha256" in (engine.rankers.last_error("recommend") or "")
    assert "sha256" in engine.info().to_dict()["rankers"]["recommend"]["error"]

    # Rolled back past it, and with no pointer at all, the blend serves again.
    assert registry.rollback(config.rankers_path, "recommend") == version
    (config.rankers_path / "recommend" / "current").unlink()
    assert [r.id for r in engine.recommend("ann", k=5).recommendations] == [r.id for r in blend.recommendations]


def test_features_logged_at_serving_are_the_training_rows(config: EngineConfig, encoder: Encoder, tmp_path: Path
                                                          ) -> None:
    """The same request: the features the served model scored (logged with the impression) are the rows the
    trainer builds from the log, and the model gives them the scores it served."""
    engine = Engine(config, encoder=encoder, log_impressions=True)
    registry.publish(config.rankers_path, "recommend", reverse_blend(), {"training": {"data": "test"}})
    ingest(engine, "bob", ["goggles", "fil-pla-red", "gloves-latex"])
    recs = engine.recommend("bob", k=6)
    clicked = recs.recommendations[2].id
    engine.ingest([{"event_id": "bob-click", "user_id": "bob", "type": "click", "item_id": clicked,
                    "request_id": recs.request_id, "position": 3}])
    assert engine.impressions is not None
    engine.impressions.flush()
    rows = logged_rows(engine.events, "recommend", RECOMMEND_FEATURES, since=time.time() - 60, until=None,
                       window_s=1800)
    assert rows.groups == [6]
    assert rows.y.tolist() == [0, 0, 0.5, 0, 0, 0]
    served = np.array([[r.features[n] for n in RECOMMEND_FEATURES] for r in recs.recommendations], np.float32)
    positions = [position_feature(i) for i in range(1, 7)]
    assert np.allclose(rows.X[:, COL["position"]], positions)
    unbiased = rows.X.copy()
    unbiased[:, COL["position"]] = 0.0
    assert np.allclose(unbiased, served, atol=1e-5)
    assert np.allclose(reverse_blend().score(unbiased), [r.score for r in recs.recommendations], atol=1e-4)


def test_train_from_logs_needs_enough_lists_and_publishes(config: EngineConfig, encoder: Encoder) -> None:
    from engine.errors import InvalidQuery

    engine = Engine(config, encoder=encoder, log_impressions=True)
    ingest(engine, "cy", ["goggles", "fil-pla-red"])
    with pytest.raises(InvalidQuery, match="at least"):
        train_from_logs(config, "recommend", publish=False)
    rng = np.random.default_rng(0)
    for n in range(40):  # shoppers who take the item the blend ranked third (or, now and then, second)
        recs = engine.recommend("cy", k=5, exclude=[])
        pos = 2 if rng.random() < 0.2 else 3
        engine.ingest([{"event_id": f"cy-c{n}", "user_id": "cy", "type": "click",
                        "item_id": recs.recommendations[pos - 1].id, "request_id": recs.request_id, "position": pos}])
    assert engine.impressions is not None
    engine.impressions.flush()
    manifest = train_from_logs(config, "recommend")
    assert manifest["training"]["lists_used"] == 40
    scores = manifest["metrics"]["val_ndcg@10"]
    assert scores["mlp"] > scores["served_order"], "the clicked third item moves up"
    assert registry.current_version(config.rankers_path, "recommend") == manifest["version"]
    assert engine.rankers.get("recommend") is not None


def test_search_is_reranked_by_a_published_search_model_with_the_logged_features(
        config: EngineConfig, encoder: Encoder) -> None:
    from engine.ranking.features import SEARCH_FEATURES

    engine = Engine(config, encoder=encoder, log_impressions=True)
    plain = engine.search("pla filament", k=5)
    F = len(SEARCH_FEATURES)
    W = np.zeros((F, 1), np.float32)
    W[SEARCH_FEATURES.index("fused"), 0] = -1.0  # the fused order, reversed over the best 100
    version = registry.publish(config.rankers_path, "search",
                               MlpRanker(SEARCH_FEATURES, np.zeros(F, np.float32), np.ones(F, np.float32),
                                         [(W, np.zeros(1, np.float32))]), {"training": {"data": "test"}})
    learned = engine.search("pla filament", k=5)
    assert [h.id for h in learned.hits] != [h.id for h in plain.hits]
    fused = [h.score for h in learned.hits]
    assert fused == sorted(fused), "reversed: the model's order, not the fused one"
    assert engine.impressions is not None
    engine.impressions.flush()
    imp = engine.events.get_impression(learned.request_id)
    assert imp.policy == f"ranker:{version}"
    logged = np.array([[f[n] for n in SEARCH_FEATURES] for f in imp.features], np.float32)
    served = np.array([[h.features[n] for n in SEARCH_FEATURES] for h in learned.hits], np.float32)
    assert np.allclose(logged, served)
    col = {n: i for i, n in enumerate(SEARCH_FEATURES)}
    # Without a model the features are computed off the request path, by the log's flusher, and stored.
    assert plain.hits[0].features is None
    top = engine.events.get_impression(plain.request_id).features[0]  # the fused order's best hit
    assert top["bm25_title"] > 0 and top["cover_title"] == 1.0 and top["bm25"] == plain.hits[0].bm25
    # The title features: the query against the best hit's title embedded alone, and its character trigrams.
    snap = engine.snapshot()
    title_cos = snap.title_scores(engine.embed_query("pla filament"), np.array([snap.catalog.row(plain.hits[0].id)]))
    assert title_cos is not None and top["title_vector"] == pytest.approx(float(title_cos[0]), abs=1e-6)
    assert top["title_vector"] > 0.3 and 0 < top["title_trigrams"] <= 1
    assert np.allclose(logged[:, col["fused"]], fused, atol=1e-5)


def test_search_price_features_come_from_the_shoppers_usual_price(config: EngineConfig, encoder: Encoder) -> None:
    """A personalized search gives the ranker the candidates' prices against the shopper's usual price (the
    median over their history's items, as for recommendations); without a shopper, or with personalization
    off, the price features stay 0."""
    from engine.ranking.features import SEARCH_FEATURES, usual_price

    engine = Engine(config, encoder=encoder, log_impressions=True)
    ingest(engine, "pat", ["goggles", "gloves-latex", "unpriced-tool", "solder-iron"])  # 9.97, 8.25, -, 34.99
    assert usual_price([9.97, 8.25, float("nan"), 34.99]) == pytest.approx(9.97)
    mine = engine.search("nitrile gloves", k=5, user="pat")
    plain = engine.search("nitrile gloves", k=5)
    off = engine.search("nitrile gloves", k=5, user="pat", personalize=0)
    assert engine.impressions is not None
    engine.impressions.flush()
    prices = {p.id: p.price for p in engine.snapshot().catalog}
    logged = engine.events.get_impression(mine.request_id).features
    for hit, f in zip(mine.hits, logged):
        price = prices[hit.id]
        assert f["price_known"] == (1.0 if price else 0.0)
        assert f["price_ratio"] == pytest.approx(np.log(price / 9.97) if price else 0.0, abs=1e-5)
    assert any(f["price_known"] == 1.0 for f in logged)
    for result in (plain, off):
        assert all(f["price_known"] == 0.0 and f["price_ratio"] == 0.0
                   for f in engine.events.get_impression(result.request_id).features)
    # With a published model the features are computed while serving: the same price columns, scored.
    F = len(SEARCH_FEATURES)
    W = np.zeros((F, 1), np.float32)
    W[SEARCH_FEATURES.index("price_ratio"), 0] = -1.0  # the cheapest against the usual price first
    registry.publish(config.rankers_path, "search", MlpRanker(SEARCH_FEATURES, np.zeros(F, np.float32),
                                                              np.ones(F, np.float32), [(W, np.zeros(1, np.float32))]),
                     {"training": {"data": "test"}})
    ranked = engine.search("nitrile gloves", k=5, user="pat")
    ratios = [h.features["price_ratio"] for h in ranked.hits if h.features is not None]
    assert len(ratios) == 5 and ratios == sorted(ratios) and ratios[0] < 0, ratios


def test_search_features_hold_the_shoppers_affinity_parts(config: EngineConfig, encoder: Encoder) -> None:
    """A personalized search gives the ranker the affinity's parts: the interest profile's score, the
    co-occurrence with the shopper's recent items and the history's share in the item's leaf category; 0
    without a shopper."""
    engine = Engine(config, encoder=encoder, log_impressions=True)
    history = ["goggles", "gloves-latex", "fil-pla-red"]
    ingest(engine, "amy", history)
    ingest(engine, "bo", ["fil-pla-red", "gloves-nitrile-m"])  # taken together by another shopper
    mine = engine.search("gloves", k=8, user="amy")
    plain = engine.search("gloves", k=8)
    assert engine.impressions is not None
    engine.impressions.flush()
    cats = {p.id: p.category_path for p in engine.snapshot().catalog}
    logged = dict(zip([h.id for h in mine.hits], engine.events.get_impression(mine.request_id).features))
    assert "gloves-nitrile-m" in logged and "gloves-latex" in logged
    for item, f in logged.items():
        assert f["category_share"] == pytest.approx(sum(cats[h] == cats[item] for h in history) / 3, abs=1e-6)
        assert f["profile_sim"] > 0
    assert logged["gloves-nitrile-m"]["cooc_recent"] > 0
    assert max(f["category_share"] for f in logged.values()) > 0
    for f in engine.events.get_impression(plain.request_id).features:
        assert f["profile_sim"] == f["cooc_recent"] == f["category_share"] == 0.0


def test_item_age_days() -> None:
    from engine.ranking.features import item_age_days

    now = 1_700_000_000.0
    nan = float("nan")
    got = item_age_days(np.array([now - 2.5 * 86400, nan, nan, now + 86400]),
                        np.array([now - 30 * 86400, now - 86400 + 1, nan, nan]), now)
    assert got[:2].tolist() == [2.0, 0.0]  # the catalog's date wins; 23:59:59 is 0 whole days
    assert np.isnan(got[2]) and got[3] == 0.0  # neither known; a date in the future


def test_item_age_comes_from_created_at_else_the_first_event(config: EngineConfig, encoder: Encoder,
                                                             tmp_path: Path) -> None:
    """``item_age`` is log1p(whole days) since the catalog's ``created_at``; for an item without one, since its
    first event (the earliest, whatever order events arrive in); 0 with neither. The same on both surfaces,
    logged and scored."""
    import datetime as dt
    import json

    from engine import pipeline
    from engine.ranking.features import SEARCH_FEATURES
    from tests.conftest import FIXTURE_CATALOG

    now = time.time()
    listed = dt.datetime.fromtimestamp(now - 10.5 * 86400, dt.timezone.utc).isoformat()  # 10 whole days ago
    rows = [json.loads(line) for line in FIXTURE_CATALOG.read_text(encoding="utf-8").splitlines() if line.strip()]
    for r in rows:
        if r["id"].startswith("fil-"):
            r["created_at"] = listed
    dated = tmp_path / "dated.jsonl"
    dated.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    pipeline.build(config, dated, encoder=encoder)
    engine = Engine(config, encoder=encoder, log_impressions=True)
    ingest(engine, "ida", ["goggles", "gloves-latex"])  # first events now
    engine.ingest([{"event_id": "old-view", "user_id": "zed", "type": "view", "item_id": "gloves-latex",
                    "timestamp": now - 3.2 * 86400}])  # stored after, yet earlier: gloves first seen 3 days ago

    def expected(item: str) -> float:
        if item.startswith("fil-"):
            return float(np.log1p(10))
        return float(np.log1p(3)) if item == "gloves-latex" else 0.0

    F = len(SEARCH_FEATURES)
    W = np.zeros((F, 1), np.float32)
    W[SEARCH_FEATURES.index("item_age"), 0] = 1.0  # the oldest first
    registry.publish(config.rankers_path, "search", MlpRanker(SEARCH_FEATURES, np.zeros(F, np.float32),
                                                              np.ones(F, np.float32), [(W, np.zeros(1, np.float32))]),
                     {"training": {"data": "test"}})
    registry.publish(config.rankers_path, "recommend", reverse_blend(), {"training": {"data": "test"}})
    recs = engine.recommend("ida", k=10, exclude=[])  # refreshes the live models, which search reads as they are
    ranked = engine.search("nitrile gloves pla filament", k=8)
    ages = [h.features["item_age"] for h in ranked.hits if h.features is not None]
    assert len(ages) == 8 and ages == sorted(ages, reverse=True)
    assert ages == pytest.approx([expected(h.id) for h in ranked.hits], abs=1e-6)
    assert {round(a, 4) for a in ages} >= {round(float(np.log1p(10)), 4), 0.0}
    assert engine.impressions is not None
    engine.impressions.flush()
    for shown, logged in ((recs.recommendations, engine.events.get_impression(recs.request_id).features),
                          (ranked.hits, engine.events.get_impression(ranked.request_id).features)):
        for hit, f in zip(shown, logged):
            assert hit.features is not None
            assert f["item_age"] == pytest.approx(expected(hit.id), abs=1e-6) == hit.features["item_age"]
    assert "gloves-latex" in [h.id for h in ranked.hits]
    assert len({expected(r.id) for r in recs.recommendations}) == 2  # dated items and undated ones


def test_experiments_decide_what_serves_split_and_interleaved(config: EngineConfig, encoder: Encoder) -> None:
    from engine.learn.experiments import TEAM_FEATURE
    from engine.ranking.features import SEARCH_FEATURES

    engine = Engine(config, encoder=encoder, log_impressions=True)
    version = registry.publish(config.rankers_path, "recommend", reverse_blend(), {"training": {"data": "test"}})
    engine.experiments.create("rec-ab", "recommend", [{"name": "blend", "policy": "blend", "share": 0.5},
                                                      {"name": "learned", "policy": f"ranker:{version}", "share": 0.5}])
    exp = engine.experiments.running("recommend")
    assert exp is not None
    lists = {}
    for user in ("u1", "u2", "u3", "u4", "u5", "u6"):
        ingest(engine, user, ["goggles", "fil-pla-red"])
        first = engine.recommend(user, k=5)
        again = engine.recommend(user, k=5)
        lists[user] = (exp.assign(user).name, first, again)
    assert engine.impressions is not None
    engine.impressions.flush()
    served = {name: [r.id for r in first.recommendations] for name, first, _ in lists.values()}
    assert set(served) == {"blend", "learned"} and served["blend"] != served["learned"]
    for user, (name, first, again) in lists.items():
        assert engine.events.get_impression(first.request_id).policy == f"exp:rec-ab/{name}"
        assert [r.id for r in first.recommendations] == [r.id for r in again.recommendations], "sticky"
        assert [r.id for r in first.recommendations] == served[name]

    plain = [h.id for h in engine.search("pla filament", k=6).hits]  # the fused order (no search ranker yet)
    F = len(SEARCH_FEATURES)
    W = np.zeros((F, 1), np.float32)
    W[SEARCH_FEATURES.index("fused"), 0] = -1.0
    sv = registry.publish(config.rankers_path, "search", MlpRanker(SEARCH_FEATURES, np.zeros(F, np.float32),
                          np.ones(F, np.float32), [(W, np.zeros(1, np.float32))]), {"training": {"data": "test"}})
    engine.experiments.create("search-il", "search", [{"name": "fused", "policy": "blend"},
                                                      {"name": "learned", "policy": f"ranker:{sv}"}], kind="interleave")
    mixed = engine.search("pla filament", k=6, user="newcomer")  # no history: not personalized
    engine.impressions.flush()
    imp = engine.events.get_impression(mixed.request_id)
    assert imp.policy == "exp:search-il/interleaved"
    teams = [f[TEAM_FEATURE] for f in imp.features]
    assert set(teams) == {0, 1} and abs(teams.count(0) - teams.count(1)) <= 1
    ids = [h.id for h in mixed.hits]
    assert len(set(ids)) == 6
    team_a = [i for i, t in zip(ids, teams) if t == 0]
    assert team_a[0] == plain[0] or ids[0] == plain[0], "one team's first pick is the fused order's best"
    assert [plain.index(i) for i in team_a if i in plain] == sorted(plain.index(i) for i in team_a if i in plain)


def test_search_features_of_the_shown_items_alone_equal_those_of_the_whole_list(engine: Engine) -> None:
    """Logging without a model computes the shown items' rows only; they are the full list's rows."""
    from engine.ranking.features import search_features
    from engine.search import search_inputs

    snap = engine.snapshot()
    rows = np.arange(min(30, len(snap)), dtype=np.int64)
    rng = np.random.default_rng(1)
    bm25, vec = rng.random(len(rows)), rng.random(len(rows))
    fused, personal = bm25 + vec, rng.random(len(rows))
    full = search_features(search_inputs(snap, "pla filament spool", rows, bm25, vec, fused, personal))
    shown = np.array([3, 4, 5, 6, 7])
    part = search_features(search_inputs(snap, "pla filament spool", rows, bm25, vec, fused, personal, subset=shown))
    assert np.array_equal(part, full[shown])


def test_admin_page_and_info_show_the_served_rankers(client: Any, app: Any, config: EngineConfig) -> None:
    import re

    from tests.conftest import ADMIN_KEY

    assert client.get("/v1/info").get_json()["rankers"] == {"recommend": None, "search": None}
    version = registry.publish(config.rankers_path, "recommend", reverse_blend(),
                               {"training": {"data": "scientific", "lists": 7558}, "metrics": {"test": {"R@10": 0.15}}})
    assert client.get("/v1/info").get_json()["rankers"]["recommend"]["version"] == version
    token = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/admin").get_data(as_text=True))
    assert token is not None
    client.post("/admin/login", data={"key": ADMIN_KEY, "csrf": token.group(1)})
    page = client.get("/admin").get_data(as_text=True)
    served = re.search(r'id="ranker-recommend">(.*?)</dd>', page, re.S)
    assert served is not None and version in served.group(1) and "7558 lists" in served.group(1)
    assert "the fused order serves" in page


def test_deferred_search_features_equal_the_ones_computed_on_the_request_path(engine: Engine) -> None:
    from engine.search import ranked_search

    snap = engine.snapshot()
    qvec = engine.embed_query("nitrile gloves")
    common = dict(k=4, offset=2, mask=None, pool=50, weight=0.9, fusion=engine.config.fusion,
                  item_rates=engine._item_rates)
    eager = ranked_search(snap, "nitrile gloves", qvec, features=True, **common)  # type: ignore[arg-type]
    deferred = ranked_search(snap, "nitrile gloves", qvec, defer_features=True, **common)  # type: ignore[arg-type]
    assert [h.id for h in eager.hits] == [h.id for h in deferred.hits]
    assert deferred.later is not None and all(h.features is None for h in deferred.hits)
    assert deferred.later() == [h.features for h in eager.hits]


def test_deferred_recommendation_features_equal_the_ones_a_scorer_sees(config: EngineConfig, encoder: Encoder) -> None:
    engine = Engine(config, encoder=encoder)
    ingest(engine, "dee", ["goggles", "fil-pla-red", "gloves-latex"])
    logged = engine.shoppers.recommend("dee", k=6, features=True)  # no scorer: features deferred
    assert logged.later is not None and all(r.features is None for r in logged.recommendations)
    scored = engine.shoppers.recommend("dee", k=6, features=True, scorer=lambda X: np.zeros(len(X)))  # ties: blend order
    assert scored.later is None
    assert [r.id for r in scored.recommendations] == [r.id for r in logged.recommendations]
    assert logged.later() == [r.features for r in scored.recommendations]


def test_a_click_on_a_logged_list_does_not_leak_into_its_deferred_features(config: EngineConfig, encoder: Encoder
                                                                           ) -> None:
    """The label must not be a feature: the features the log computes later are those of the moment the
    list was served, even after the shopper clicked and bought one of its items (the item's click and
    purchase counts, the pair last item -> clicked item), in process and through the writer's spec."""
    from engine.search import ranked_search

    engine = Engine(config, encoder=encoder)
    history = ["goggles", "fil-pla-red", "gloves-latex"]
    ingest(engine, "lee", history)
    rec = engine.shoppers.recommend("lee", k=6, features=True)  # the blend serves: features deferred
    assert rec.later is not None
    served_rec = engine.shoppers.recommend("lee", k=6, features=True, scorer=lambda X: np.zeros(len(X)))
    expected = [r.features for r in served_rec.recommendations]  # computed on the request path, before any click
    snap, query = engine.snapshot(), "nitrile gloves"
    qvec = engine.embed_query(query)
    common = dict(k=4, offset=0, mask=None, pool=50, weight=0.9, fusion=engine.config.fusion,
                  item_rates=engine._item_rates)
    search = ranked_search(snap, query, qvec, defer_features=True, **common)  # type: ignore[arg-type]
    search_expected = [h.features for h in ranked_search(snap, query, qvec, features=True, **common).hits]  # type: ignore[arg-type]
    assert search.later is not None

    clicked = next(r.id for r in rec.recommendations if r.id not in history)
    hit = search.hits[1].id
    now = time.time()
    engine.ingest([{"event_id": f"lee-{kind}", "user_id": "lee", "type": kind, "item_id": clicked,
                    "timestamp": now + i} for i, kind in enumerate(["click", "add_to_cart", "purchase"])]
                  + [{"event_id": f"sue-{kind}", "user_id": "sue", "type": kind, "item_id": hit, "timestamp": now + i}
                     for i, kind in enumerate(["click", "purchase"])])
    with engine.shoppers.live.current():  # the live models now hold the clicks
        pass
    # Read now, the clicked items' statistics and the pair last item -> clicked item have moved...
    i = [r.id for r in rec.recommendations].index(clicked)
    now_read = replace(rec.later, inputs=None)()  # type: ignore[type-var]
    assert now_read[i]["item_ctr"] > expected[i]["item_ctr"]
    assert now_read[i]["follows_last"] > expected[i]["follows_last"]
    j = [h.id for h in search.hits].index(hit)
    assert ranked_search(snap, query, qvec, features=True, **common).hits[j].features["item_ctr"] > \
        search_expected[j]["item_ctr"]  # type: ignore[arg-type, index]
    # ...but the logged features are those of the lists as served, here and from the writer's spec.
    assert rec.later() == expected
    assert engine.deferred(rec.later.spec())() == expected  # type: ignore[attr-defined]
    assert search.later() == search_expected
    assert engine.deferred(search.later.spec())() == search_expected  # type: ignore[attr-defined]


def test_the_engine_runs_numpy_blas_on_blas_threads(config: EngineConfig, encoder: Encoder) -> None:
    """The ranker's small products run on ``blas_threads`` BLAS threads (1 by default), whatever the
    process had before; 0 is refused naming the setting."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from engine.errors import ConfigError

    def blas() -> set[int]:
        return {int(i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"}

    with threadpool_limits(limits=2, user_api="blas"):  # restored on the way out
        assert blas() == {2}
        Engine(config, encoder=encoder)
        assert blas() == {1}
    with pytest.raises(ConfigError, match="blas_threads"):
        config.replace(blas_threads=0)


def test_a_catalog_within_max_rows_is_prepared_whole_in_the_background(engine: Engine,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Once a version's FieldTokens is made, a background thread prepares every row: afterwards a search
    with features finds all its candidates prepared, and the features are those prepared on demand."""
    from engine.ranking import fields
    from engine.ranking.features import search_features
    from engine.search import search_inputs

    snap = engine.snapshot()
    rows = np.arange(min(len(snap), 40), dtype=np.int64)[::-1]
    bm25, vec = np.linspace(1, 0, len(rows)), np.linspace(0, 1, len(rows))
    monkeypatch.setattr(fields, "_by_version", {})  # FieldTokens of its own, the module's restored after
    on_demand = search_features(search_inputs(snap, "pla filament spool", rows, bm25, vec, bm25 + vec, None))
    ft = fields.FieldTokens.of(snap)
    assert ft.prepared.wait(60), "the background thread prepared every row"
    assert len(ft._kept.rows) == len(snap)
    fields._by_version.clear()
    ft = fields.FieldTokens.of(snap)  # a new one, prepared in the background from the start
    assert ft.prepared.wait(60)
    kept = dict(ft._kept.rows)
    again = search_features(search_inputs(snap, "pla filament spool", rows, bm25, vec, bm25 + vec, None))
    assert ft._kept.rows == kept, "the search prepared nothing new"
    assert np.array_equal(again, on_demand)
