"""Shopper questions and answers (issue 12): import, ranking, "no good answer", attribute answers, HTTP routes.

Real model (ONNX MiniLM), real SQLite event store, a tiny hand-made catalog built by the real pipeline.
"""
from __future__ import annotations

import csv
import gzip
import json
import zlib
from pathlib import Path
from typing import Any

import pytest

from engine import pipeline
from engine.config import EngineConfig
from engine.embedding.base import Encoder
from engine.service import Engine
from tests.conftest import ROOT, make_config

CATALOG = [
    {"id": "kettle-1", "title": "Electric Kettle 1.7 L, stainless steel", "brand": "Bosch", "price": 39.9,
     "category": "Home > Kitchen > Kettles", "attributes": {"weight": "1.2 kg", "cord_length": "75 cm",
                                                           "colour": "silver"}},
    {"id": "vacuum-1", "title": "Cordless Stick Vacuum Cleaner", "brand": "Dyson", "price": 299.0,
     "category": "Home > Cleaning > Vacuums", "attributes": {"battery_life": "40 minutes"}},
    {"id": "fridge-filter", "title": "Refrigerator Water Filter, replacement cartridge", "brand": "EveryDrop",
     "price": 34.5, "category": "Appliances > Parts > Water Filters"},
]
PAIRS = [
    ("kettle-1", "Does it turn off automatically when the water boils?",
     "Yes, it switches itself off as soon as the water is boiling, and when it is lifted off the base."),
    ("kettle-1", "Is the inside plastic or metal?", "The inside is all stainless steel, no plastic touches the water."),
    ("kettle-1", "Can I see how much water is in it?", "Yes, there is a window with a water level scale on the side."),
    ("kettle-1", "Is it loud?", "It is quieter than my old kettle, a soft rumble before it boils."),
    ("vacuum-1", "Does it work on thick carpet?", "It picks up well on our shag rug with the motorised head."),
    ("vacuum-1", "How long does it take to charge?", "About three and a half hours from empty to full."),
    ("fridge-filter", "Will this fit a Whirlpool side by side fridge?",
     "It fits Whirlpool, KitchenAid and Maytag models that take the EDR1RXD1 filter."),
    ("fridge-filter", "How often should the filter be replaced?", "Every six months, or when the light turns red."),
]


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def qa_index(tmp_path_factory: pytest.TempPathFactory, models_dir: Path, encoder: Encoder) -> Path:
    root = tmp_path_factory.mktemp("qa")
    catalog = root / "catalog.jsonl"
    catalog.write_text("".join(json.dumps(p) + "\n" for p in CATALOG), encoding="utf-8")
    pipeline.build(make_config(root / "indexes", models_dir), catalog, encoder=encoder)
    return root / "indexes"


@pytest.fixture
def qa_config(qa_index: Path, models_dir: Path, tmp_path: Path) -> EngineConfig:
    import shutil

    index_dir = tmp_path / "indexes"
    shutil.copytree(qa_index, index_dir, symlinks=True)
    return make_config(index_dir, models_dir)


@pytest.fixture
def qa_engine(qa_config: EngineConfig, encoder: Encoder, tmp_path: Path) -> Engine:
    engine = Engine(qa_config, encoder=encoder)
    rows = [{"item_id": i, "question": q, "answer": a, "date": "2024-05-0%d" % (n % 9 + 1)}
            for n, (i, q, a) in enumerate(PAIRS)]
    report = engine.qa.import_file(write_csv(tmp_path / "pairs.csv", rows))
    assert report.stored == len(PAIRS)
    return engine


def test_ranks_the_answer_that_answers_a_new_question(qa_engine: Engine, qa_config: EngineConfig,
                                                      encoder: Encoder) -> None:
    # The ranking is checked with the threshold at 0 (the same store): "how many hours to recharge" is
    # answered by "three and a half hours from empty to full" at a probability under qa_min_score.
    lax = Engine(qa_config.replace(qa_min_score=0.0), encoder=encoder)
    for item, question, expected, shown in [
        ("kettle-1", "does it shut off by itself when boiling", PAIRS[0][2], True),
        ("kettle-1", "is there a water level indicator", PAIRS[2][2], True),
        ("vacuum-1", "how many hours to recharge the battery", PAIRS[5][2], False),
    ]:
        out = lax.qa.answers(question, item, k=5)
        past = [a for a in out["answers"] if a["source"] == "past answer"]
        assert past and past[0]["answer"] == expected, (question, out)
        assert (past[0]["score"] >= qa_config.qa_min_score) is shown, past[0]
        assert all(a["item_id"] == item for a in past)
        assert [a["score"] for a in past] == sorted((a["score"] for a in past), reverse=True)
        assert past[0]["question"] in {q for _, q, _ in PAIRS} and past[0]["date"].startswith("2024-05-0")


def test_catalog_wide_answers_name_their_item(qa_engine: Engine) -> None:
    out = qa_engine.qa.answers("how often do I need a new water filter cartridge", None, k=3)
    assert out["answers"][0]["item_id"] == "fridge-filter"
    assert out["answers"][0]["answer"] == PAIRS[7][2]


def test_no_good_answer_below_the_threshold(qa_config: EngineConfig, encoder: Encoder, qa_engine: Engine) -> None:
    out = qa_engine.qa.answers("what is the capital city of France", "vacuum-1")
    assert out["answers"] == [] and out["no_answer"] is True
    assert "No good answer" in out["message"] and out["min_score"] == qa_config.qa_min_score
    # The same question and item, with the threshold at 0: the best guesses come back, each scored below it.
    lax = Engine(qa_config.replace(qa_min_score=0.0), encoder=encoder)
    guesses = lax.qa.answers("what is the capital city of France", "vacuum-1")["answers"]
    assert guesses and all(a["score"] < qa_config.qa_min_score for a in guesses)
    assert qa_engine.qa.answers("anything?", "kettle-1", k=1)["candidates"] == 4


def test_attribute_answer_comes_first_with_its_source(qa_engine: Engine) -> None:
    out = qa_engine.qa.answers("What is the weight?", "kettle-1")
    first = out["answers"][0]
    assert first == {"item_id": "kettle-1", "answer": "1.2 kg", "question": None, "score": 1.0, "date": None,
                     "source": "catalog attribute 'weight'", "field": "weight"}
    assert qa_engine.qa.answers("how much does it weigh", "kettle-1")["answers"][0]["answer"] == "1.2 kg"
    assert qa_engine.qa.answers("how long is the cord?", "kettle-1")["answers"][0]["source"] == \
        "catalog attribute 'cord_length'"
    assert qa_engine.qa.answers("Which brand makes it?", "vacuum-1")["answers"][0] == {
        "item_id": "vacuum-1", "answer": "Dyson", "question": None, "score": 1.0, "date": None,
        "source": "catalog field 'brand'", "field": "brand"}
    # An item without past answers still answers from its catalog fields, and says so when it cannot.
    assert qa_engine.qa.answers("what is the price", "fridge-filter")["answers"][0]["answer"] == "34.50"


def test_import_both_formats_with_the_skip_report(qa_config: EngineConfig, encoder: Encoder, tmp_path: Path) -> None:
    engine = Engine(qa_config, encoder=encoder)
    amazon = tmp_path / "qa_Test.json.gz"
    lines = [
        {"questionType": "yes/no", "asin": "kettle-1", "answerTime": "Jun 27, 2014", "unixTime": 1403852400,
         "question": "Is the lid wide enough to clean inside?", "answerType": "Y", "answer": "Yes, a hand fits."},
        {"questionType": "open-ended", "asin": "B00UNKNOWN", "answerTime": "Jun 27, 2014", "unixTime": 1403852400,
         "question": "model number", "answerType": "", "answer": "X1"},
        {"questionType": "open-ended", "asin": "vacuum-1", "answerTime": "Apr 28, 2014",
         "question": "What filters does it use?", "answer": "The washable one behind the bin."},
        {"questionType": "open-ended", "asin": "vacuum-1", "question": "   ", "answer": "An answer to nothing"},
    ]
    with gzip.open(amazon, "wt", encoding="utf-8") as f:
        for d in lines:
            f.write(repr(d) + "\n")  # McAuley's format: Python dict literals, not JSON
        f.write("{'asin': 'kettle-1', 'question': __import__('os')}\n")  # never evaluated
    report = engine.qa.import_file(amazon).to_dict()
    assert (report["read"], report["stored"], report["skipped"]) == (5, 2, 3)
    assert report["skipped_by_reason"] == {
        "empty question": {"count": 1, "lines": [4]},
        "unknown item id (not in the served catalog)": {"count": 1, "lines": [2]},
        "unreadable line (not a CSV row, JSON object or Python dict literal)": {"count": 1, "lines": [5]}}
    corpus = engine.qa.store.corpus()
    dates = dict(zip(corpus.answers, corpus.answered_at))
    assert dates["The washable one behind the bin."] == 1398643200.0  # answerTime "Apr 28, 2014" (no unixTime)
    assert dates["Yes, a hand fits."] == 1403852400.0

    plain = tmp_path / "pairs.jsonl"
    plain.write_text("\n".join(json.dumps(r) for r in [
        {"item_id": "fridge-filter", "question": "Is it NSF certified?", "answer": "Yes, NSF 42 and 53.",
         "date": "2023-01-15"},
        {"item_id": "fridge-filter", "question": "Is it NSF certified?", "answer": "Yes, NSF 42 and 53."},
        {"item_id": "fridge-filter", "question": "Does it remove lead?", "answer": ""},
        {"question": "No item?", "answer": "none"},
    ]) + "\n", encoding="utf-8")
    report = engine.qa.import_file(plain).to_dict()
    assert (report["read"], report["stored"], report["skipped"]) == (4, 1, 3)
    assert set(report["skipped_by_reason"]) == {"empty answer", "missing item id (item_id or asin)",
                                                "repeated in the file (same item, question and answer)"}
    # Re-importing stores nothing twice.
    again = engine.qa.import_file(amazon).to_dict()
    assert (again["stored"], again["already_stored"]) == (0, 2)
    assert engine.qa.store.count() == 3

    csv_file = write_csv(tmp_path / "amazon.csv", [
        {"questionType": "yes/no", "asin": "kettle-1", "answerTime": "Jun 27, 2014", "unixTime": "",
         "question": "Is the lid wide enough to clean inside?", "answerType": "Y", "answer": "Yes, a hand fits."},
        {"questionType": "yes/no", "asin": "kettle-1", "answerTime": "Jun 27, 2014", "unixTime": "1403852400",
         "question": "Does it have a filter?", "answerType": "Y", "answer": "Yes, a removable limescale filter."}])
    report = engine.qa.import_file(csv_file).to_dict()
    assert (report["read"], report["stored"], report["already_stored"], report["skipped"]) == (2, 1, 1, 0)


def test_the_shared_amazon_file_parses(qa_config: EngineConfig, encoder: Encoder) -> None:
    """Every line of McAuley's file is read; none of its ASINs is in this catalog, and the report says so."""
    path = ROOT.parent / "shared" / "data" / "amazon_qa" / "qa_Appliances.json.gz"
    report = Engine(qa_config, encoder=encoder).qa.import_file(path).to_dict()
    assert (report["read"], report["stored"], report["skipped"]) == (9011, 0, 9011)
    assert list(report["skipped_by_reason"]) == ["unknown item id (not in the served catalog)"]


def test_cli_import(qa_config: EngineConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                    monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.cli import main

    monkeypatch.setenv("VITRINE_MODELS_DIR", str(qa_config.models_path))
    monkeypatch.setenv("VITRINE_EVENTS_URL", qa_config.events_url)
    rows = [{"item_id": "kettle-1", "question": "Is it loud?", "answer": "A little."},
            {"item_id": "nope", "question": "Is it loud?", "answer": "A little."}]
    path = write_csv(tmp_path / "cli.csv", rows)
    assert main(["--index-dir", str(qa_config.index_dir), "qa", "import", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["read"], out["stored"], out["skipped"]) == (2, 1, 1)


def test_eval_protocol_split_and_dedupe() -> None:
    from engine.evaluation.qa_eval import load_qa_set

    data = load_qa_set(ROOT.parent / "shared" / "data", "appliances")
    assert (len(data.questions), len(data.groups)) == (8272, 959)
    assert len(set(zip(data.asins, data.questions))) == len(data.questions)
    tune, report = data.split(0), data.split(1)
    assert not set(tune) & set(report) and len(tune) + len(report) == len(data.questions)
    assert all(zlib.crc32(data.questions[i].encode()) % 2 == 0 for i in tune)


@pytest.fixture
def qa_client(qa_engine: Engine, qa_config: EngineConfig) -> Any:
    from web import create_app

    return create_app({"TESTING": True, "ENGINE_CONFIG": qa_config, "ENGINE": qa_engine}).test_client()


def test_http_routes(qa_client: Any) -> None:
    r = qa_client.get("/v1/items/kettle-1/answers", query_string={"q": "does it turn off when boiling"})
    assert r.status_code == 200
    body = r.get_json()
    assert body["answers"][0]["answer"] == PAIRS[0][2] and body["no_answer"] is False
    r = qa_client.get("/v1/answers", query_string={"q": "how often to replace the filter", "k": 2})
    assert r.status_code == 200 and len(r.get_json()["answers"]) <= 2
    assert r.get_json()["answers"][0]["item_id"] == "fridge-filter"
    r = qa_client.get("/v1/items/vacuum-1/answers", query_string={"q": "what is the capital city of France"})
    assert r.status_code == 200 and r.get_json()["no_answer"] is True and r.get_json()["message"]


@pytest.mark.parametrize("url, query, field", [
    ("/v1/items/kettle-1/answers", {}, "q"),
    ("/v1/items/kettle-1/answers", {"q": "   "}, "q"),
    ("/v1/answers", {"q": "x" * 501}, "q"),
    ("/v1/answers", {"q": "is it loud", "k": "0"}, "k"),
    ("/v1/answers", {"q": "is it loud", "k": "21"}, "k"),
    ("/v1/answers", {"q": "is it loud", "k": "many"}, "k"),
    ("/v1/answers", {"q": "is it loud", "k": "2.5"}, "k"),
])
def test_bad_input_is_a_400_naming_the_field(qa_client: Any, url: str, query: dict[str, str], field: str) -> None:
    r = qa_client.get(url, query_string=query)
    assert r.status_code == 400, r.get_data(as_text=True)
    assert r.get_json()["error"]["field"] == field


def test_unknown_item_is_a_404(qa_client: Any) -> None:
    r = qa_client.get("/v1/items/no-such-item/answers", query_string={"q": "is it loud"})
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "not_found"


def test_any_question_or_k_is_answered_or_refused_with_a_400(qa_engine: Engine, qa_config: EngineConfig) -> None:
    """Hypothesis over the query string: never a 500, and a 400 always names q or k."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from web import create_app

    client = create_app({"TESTING": True, "ENGINE_CONFIG": qa_config, "ENGINE": qa_engine}).test_client()

    @settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(q=st.one_of(st.none(), st.text(max_size=600)), k=st.one_of(st.none(), st.integers(-5, 30), st.text(max_size=5)),
           item=st.sampled_from([None, "kettle-1", "vacuum-1"]))
    def check(q: str | None, k: Any, item: str | None) -> None:
        args = {name: v for name, v in (("q", q), ("k", k)) if v is not None}
        r = client.get(f"/v1/items/{item}/answers" if item else "/v1/answers", query_string=args)
        assert r.status_code in (200, 400), (args, r.get_data(as_text=True))
        body = r.get_json()
        if r.status_code == 400:
            assert body["error"]["field"] in ("q", "k")
        else:
            assert body["no_answer"] is (not body["answers"])
            assert all(0.0 <= a["score"] <= 1.0 for a in body["answers"])

    check()


def test_a_new_qa_encoder_re_embeds_the_stored_pairs(qa_engine: Engine, qa_config: EngineConfig,
                                                      encoder: Encoder, tmp_path: Path) -> None:
    """Pairs stored with one encoder are re-embedded, once, when the QA model brings another top layer."""
    import shutil

    import numpy as np
    from transformers import AutoModel

    from engine.embedding.st import default_model_path
    from engine.qa.finetune import save_top_layer
    from engine.qa.rank import PACKAGED

    packaged = qa_engine.qa.encoder()  # MiniLM with the packaged fine-tuned top layer
    assert packaged.name != encoder.name and qa_engine.qa.store.encoder() == packaged.name  # recorded at the import
    layer = AutoModel.from_pretrained(str(default_model_path()), local_files_only=True).encoder.layer[-1]
    weights = {k: v.detach().numpy().copy() for k, v in layer.state_dict().items()}
    weights["output.dense.weight"] *= 0.5  # a different top layer: different vectors
    models = tmp_path / "models"
    shutil.copytree(PACKAGED, models / "qa")
    save_top_layer(weights, models / "qa" / "top_layer.npz", {"test": True})
    meta = json.loads((models / "qa" / "qa_model.json").read_text())
    (models / "qa" / "qa_model.json").write_text(json.dumps(meta | {"top_layer": "top_layer.npz"}))

    engine = Engine(qa_config.replace(models_dir=models), encoder=encoder)  # the same event store
    qa_enc = engine.qa.encoder()
    assert qa_enc.name not in (encoder.name, packaged.name) and qa_enc.family != encoder.family
    got = engine.qa.answers("Does the kettle switch off by itself once it boils?", "kettle-1", k=3)
    assert engine.qa.store.encoder() == qa_enc.name
    corpus = engine.qa.store.corpus()
    fresh = qa_enc.encode(corpus.questions)
    assert np.abs(corpus.q_vecs - fresh).max() < 1e-5  # stored vectors are the QA encoder's now
    assert np.abs(corpus.q_vecs - encoder.encode(corpus.questions)).max() > 1e-2  # not the index's
    assert got["answers"] and got["answers"][0]["question"] is not None


def test_top_layer_files_name_their_layers_and_the_first_format_means_the_last_layer() -> None:
    import numpy as np

    from engine.embedding.onnx_encoder import layer_weights
    from engine.qa.finetune import load_top_layer
    from engine.qa.rank import PACKAGED

    one = np.ones(2, np.float32)
    assert layer_weights({"output.dense.bias": one}, 6) == {5: {"output.dense.bias": one}}
    packaged = layer_weights(load_top_layer(PACKAGED / "top_layer.npz"), 6)
    assert sorted(packaged) == [4, 5]  # the shipped encoder fine-tunes MiniLM's last two layers
    assert packaged[4].keys() == packaged[5].keys() and "attention.self.query.weight" in packaged[5]
