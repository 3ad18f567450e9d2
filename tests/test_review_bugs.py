"""Bugs from issue 8's code review, one regression test each."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from engine.config import EngineConfig
from engine.embedding.base import Encoder
from engine.errors import IndexNotBuilt
from engine.index import publish, versions
from engine.recommend.popular import TrendingModel
from engine.service import Engine
from tests.conftest import READ_KEY

READ = {"Authorization": f"Bearer {READ_KEY}"}


def test_a_version_from_another_encoder_is_not_served_and_the_old_one_keeps_answering(
        config: EngineConfig, encoder: Encoder) -> None:
    """``_check_encoder`` sat outside the reload fallback: publishing a version embedded by another encoder
    turned every request into a 503. Now the server keeps serving what it had and logs why."""
    engine = Engine(config, encoder=encoder)
    served = engine.snapshot().version
    index_dir = config.index_dir
    other = "v20990101-000000-000000-0badc0de"
    shutil.copytree(index_dir / served, index_dir / other)
    manifest = json.loads((index_dir / other / versions.MANIFEST).read_text())
    manifest["version"], manifest["embedding"]["family"] = other, "some-other-encoder"
    (index_dir / other / versions.MANIFEST).write_text(json.dumps(manifest))
    publish.switch_current(index_dir, other, versions.served_history(index_dir) + [other])
    for _ in range(3):
        result = engine.search("pla filament", k=3)
        assert result.version == served and result.hits
    fresh = Engine(config, encoder=encoder)  # a server starting now has nothing else to serve: 503, said why
    with pytest.raises(IndexNotBuilt, match="some-other-encoder"):
        fresh.snapshot()


@pytest.mark.parametrize("params, field", [
    ({"min_price": "-1"}, "min_price"),
    ({"max_price": "inf"}, "max_price"),
    ({"min_price": "9", "max_price": "1"}, "min_price"),
    ({"category": " > "}, "category"),
])
def test_recommendations_validate_their_filters(client: Any, params: dict[str, str], field: str) -> None:
    for resp in (client.get("/v1/users/u1/recommendations", query_string=params, headers=READ),
                 client.post("/v1/recommendations", json={"items": ["goggles"], **params})):
        assert resp.status_code == 400 and resp.get_json()["error"]["field"] == field, resp.get_json()


def test_similar_items_are_labelled_with_the_version_they_come_from(client: Any) -> None:
    body = client.get("/v1/items/fil-pla-red/similar?k=3").get_json()
    assert body["version"] == client.get("/v1/info").get_json()["version"] and len(body["similar"]) == 3


def test_trending_rebase_without_a_reference_time_is_a_no_op() -> None:
    """An ``assert`` in production code (stripped by ``python -O``) guarded the rebase; now it is a check."""
    model = TrendingModel(half_life_s=10.0)
    model._rebase(time.time())
    assert model.acc == {} and model.t_ref is None
