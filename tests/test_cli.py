"""The `vitrine` command as a user runs it: output and exit codes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from engine.config import EngineConfig
from tests.conftest import FIXTURE_CATALOG, ROOT


def vitrine(*args: str, index_dir: Path, models_dir: Path,
            extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, VITRINE_MODELS_DIR=str(models_dir), **(extra_env or {}))
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", "--index-dir", str(index_dir), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )


def test_search_similar_info(config: EngineConfig) -> None:
    run = lambda *a: vitrine(*a, index_dir=config.index_dir, models_dir=config.models_path)  # noqa: E731
    out = run("search", "pla filament", "--k", "2")
    assert out.returncode == 0, out.stderr
    assert "fil-pla" in out.stdout or "pla-dup" in out.stdout
    hits = json.loads(run("search", "gloves", "--json", "--in-stock", "false").stdout)["hits"]
    assert [h["id"] for h in hits] == ["gloves-nitrile-l", "fil-petg-green"]  # issue 8: not vacuous when empty
    assert all(h["in_stock"] is False for h in hits)
    assert "fil-pla-black" in run("similar", "fil-pla-red").stdout
    info = run("info")
    assert info.returncode == 0 and "recall@10" in info.stdout


def test_bad_input_exit_codes(config: EngineConfig, tmp_path: Path) -> None:
    run = lambda *a: vitrine(*a, index_dir=config.index_dir, models_dir=config.models_path)  # noqa: E731
    out = run("search", "pla", "--k", "0")
    assert out.returncode == 2 and "k: must be in" in out.stderr
    out = run("similar", "no-such-item")
    assert out.returncode == 3 and "no-such-item" in out.stderr
    out = run("build", "--catalog", str(tmp_path / "missing.csv"))
    assert out.returncode == 2 and "missing.csv" in out.stderr
    (tmp_path / "c.xml").write_text("<x/>")
    assert run("build", "--catalog", str(tmp_path / "c.xml")).returncode == 2
    assert run("build").returncode == 2
    assert run("search").returncode == 2  # argparse: query missing
    assert run("nonsense").returncode == 2


def test_no_index_and_nothing_to_roll_back(tmp_path: Path, models_dir: Path) -> None:
    empty = tmp_path / "empty"
    out = vitrine("search", "pla", index_dir=empty, models_dir=models_dir)
    assert out.returncode == 3 and "vitrine build" in out.stderr
    assert vitrine("info", index_dir=empty, models_dir=models_dir).returncode == 3
    assert vitrine("rollback", index_dir=empty, models_dir=models_dir).returncode == 3


def test_catalog_check_reports_and_fails_on_rejects(tmp_path: Path, models_dir: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("id,title,price\nA,Good one,3\n,No id,4\nB,,5\nA,Dup of A,6\n", encoding="utf-8")
    out = vitrine("catalog", "check", str(bad), index_dir=tmp_path, models_dir=models_dir)
    assert out.returncode == 1
    assert "line 3" in out.stdout and "line 4" in out.stdout and "missing id" in out.stdout
    report = json.loads(vitrine("catalog", "check", str(bad), "--json", index_dir=tmp_path, models_dir=models_dir).stdout)
    assert report["accepted"] == 1 and len(report["rejected"]) == 2 and report["duplicates"][0]["id"] == "A"
    good = vitrine("catalog", "check", str(FIXTURE_CATALOG), index_dir=tmp_path, models_dir=models_dir)
    assert good.returncode == 0, good.stdout


def test_build_prints_summary_and_rollback(config: EngineConfig) -> None:
    run = lambda *a: vitrine(*a, index_dir=config.index_dir, models_dir=config.models_path)  # noqa: E731
    out = run("build", "--catalog", str(FIXTURE_CATALOG), "--full")
    assert out.returncode == 0, out.stderr
    assert "31 accepted" in out.stdout and "31 embedded" in out.stdout and "published" in out.stdout
    assert "items/s" in out.stderr  # the progress bar
    back = run("rollback")
    assert back.returncode == 0 and "rolled back" in back.stdout


def test_shopper_token_command_signs_a_token_the_server_accepts(config: EngineConfig) -> None:
    from engine.tokens import ShopperToken
    from tests.conftest import SHOPPER_SECRET

    env = {"VITRINE_SHOPPER_SECRET": SHOPPER_SECRET}
    out = vitrine("shopper-token", "shop-user-7", "--ttl", "120", index_dir=config.index_dir,
                  models_dir=config.models_path, extra_env=env)
    assert out.returncode == 0, out.stderr
    token = ShopperToken.verify(SHOPPER_SECRET, out.stdout.strip())
    assert token.user_id == "shop-user-7" and 100 < token.expires_at - time.time() <= 120
    bad = vitrine("shopper-token", "x", "--ttl", "0", index_dir=config.index_dir, models_dir=config.models_path,
                  extra_env=env)
    assert bad.returncode == 2 and "ttl" in bad.stderr
    off = vitrine("shopper-token", "x", index_dir=config.index_dir, models_dir=config.models_path)
    assert off.returncode == 2 and "shopper_secret" in off.stderr
