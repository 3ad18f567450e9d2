"""The ``vitrine`` command. Heavy modules are imported inside each subcommand so ``--help`` is instant.

Exit codes: 0 success; 1 the work failed (or ``catalog check`` found rejected rows);
2 bad input (arguments, catalog file, configuration); 3 not found / no index published;
4 another build is running.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from engine.config import EngineConfig  # noqa: E402
from engine.errors import (  # noqa: E402
    BuildInProgress, CatalogError, ConfigError, IndexNotBuilt, InvalidQuery, NotFound, VitrineError,
)

EXIT_FAILED, EXIT_BAD_INPUT, EXIT_NOT_FOUND, EXIT_BUSY = 1, 2, 3, 4


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = EngineConfig.load(args.config, index_dir=args.index_dir)
        return int(args.func(config, args) or 0)
    except (InvalidQuery, CatalogError, ConfigError) as e:
        _err(str(e))
        return EXIT_BAD_INPUT
    except (NotFound, IndexNotBuilt) as e:
        _err(str(e))
        return EXIT_NOT_FOUND
    except BuildInProgress as e:
        _err(str(e))
        return EXIT_BUSY
    except VitrineError as e:
        _err(str(e))
        return EXIT_FAILED
    except KeyboardInterrupt:
        _err("interrupted")
        return 130


def _err(msg: str) -> None:
    print(f"vitrine: error: {msg}", file=sys.stderr)


def _print_report(report: Any, as_json: bool, *, summary: bool = False) -> None:
    """A command's report: its JSON, or its lines (``summary_lines`` for the importers)."""
    if as_json:
        _print_json(report.to_dict())
        return
    for line in (report.summary_lines() if summary else report.lines()):
        print(line)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


# -- subcommands ------------------------------------------------------------------------------

def cmd_build(config: EngineConfig, args: argparse.Namespace) -> int:
    from engine import pipeline
    from engine.jobs import job_error, write_job

    catalog = Path(args.catalog) if args.catalog else config.catalog
    if catalog is None:
        raise InvalidQuery("--catalog", "give the catalog file (or set `catalog` in the configuration)")
    job_file = Path(args.job_file) if args.job_file else None
    state: dict[str, Any] = {}
    if job_file:
        state = json.loads(job_file.read_text()) if job_file.exists() else {}
        state.update(state="running", pid=os.getpid(), started_at=time.time())
        write_job(job_file, state)
    bar = _ProgressBar(enabled=not args.quiet)

    def progress(event: dict[str, Any]) -> None:
        bar(event)
        if job_file:
            state.update(event)
            write_job(job_file, state)

    try:
        result = pipeline.build(config, catalog, full=args.full, progress=progress, ray=args.ray)
    except Exception as e:
        if job_file:
            state.update(state="failed", error=job_error(e), finished_at=time.time())
            write_job(job_file, state)
        raise
    bar.close()
    if job_file:
        state.update(state="succeeded", version=result.version, finished_at=time.time(),
                     summary=result.summary_lines())
        write_job(job_file, state)
    for line in result.report.summary_lines():
        print(line)
    for line in result.summary_lines():
        print(line)
    return 0


def cmd_catalog_check(config: EngineConfig, args: argparse.Namespace) -> int:
    from engine.catalog import read_catalog

    _, report = read_catalog(Path(args.file))
    if args.json:
        _print_json(report.to_dict())
    else:
        for line in report.summary_lines(limit=args.limit):
            print(line)
    return 0 if report.ok() else EXIT_FAILED


def cmd_search(config: EngineConfig, args: argparse.Namespace) -> int:
    from engine.filters import Filters
    from engine.service import Engine

    filters = Filters(category=args.category, min_price=args.min_price, max_price=args.max_price,
                      in_stock=args.in_stock)
    result = Engine(config).search(args.query, k=args.k, offset=args.offset, filters=filters)
    if args.json:
        _print_json(result.to_dict())
        return 0
    print(f"{len(result.hits)} hits for {result.query!r} (version {result.version}, {result.took_ms:.1f} ms)")
    for i, h in enumerate(result.hits, start=result.offset + 1):
        print(f"{i:3d}. {h.score:.3f}  [bm25 {h.bm25:.2f} vec {h.vector:.3f}]  {h.id}  {h.title[:90]}")
    return 0


def cmd_similar(config: EngineConfig, args: argparse.Namespace) -> int:
    from engine.service import Engine

    engine = Engine(config)
    source = engine.item(args.item_id)
    hits = engine.similar(args.item_id, k=args.k, same_category=args.same_category).hits
    if args.json:
        _print_json({"item": source.to_dict(), "similar": [h.to_dict() for h in hits]})
        return 0
    print(f"similar to {source.id}: {source.title[:90]}")
    for i, h in enumerate(hits, start=1):
        print(f"{i:3d}. {h.score:.3f}  {h.id}  {h.title[:90]}")
    return 0


def cmd_info(config: EngineConfig, args: argparse.Namespace) -> int:
    from engine.admin import Admin

    admin = Admin(config)
    manifest = admin.manifest()
    seen = admin.versions()
    version = seen.current
    info: dict[str, Any] = {"current": version, "versions": seen.on_disk, "served": seen.served, "manifest": manifest}
    if args.json:
        _print_json(info)
        return 0
    ix, c = manifest["index"], manifest["counts"]
    print(f"current version: {version} (built {manifest['created_at']}, {c['items']} items)")
    print(f"model: {manifest['model']} ({manifest['dims']} dims) via {manifest['embedding']['encoder']}")
    print(f"vector index: {ix['spec']} ({ix['kind']}), recall@10 {ix['recall_at_10']}")
    print(f"catalog: {manifest['catalog']['path']}")
    print("versions: " + ", ".join(v + (" (current)" if v == version else "") for v in info["versions"]))
    return 0


def cmd_rollback(config: EngineConfig, args: argparse.Namespace) -> int:
    from engine.pipeline import rollback

    old, new = rollback(config)
    print(f"rolled back: current is now {new} (was {old})")
    return 0


def cmd_shopper_token(config: EngineConfig, args: argparse.Namespace) -> int:
    """Print a signed shopper token (what a shop's backend makes when its shopper logs in)."""
    from engine.tokens import ShopperToken

    if not config.shopper_secret:
        raise ConfigError("shopper_secret: set it (VITRINE_SHOPPER_SECRET) to sign shopper tokens")
    try:
        print(ShopperToken.sign(config.shopper_secret, args.user_id, ttl_s=args.ttl))
    except ValueError as e:
        raise InvalidQuery("--ttl", str(e)) from None
    return 0


def cmd_serve(config: EngineConfig, args: argparse.Namespace) -> int:
    from engine.serving import serve

    config = config.replace(
        host=args.host or config.host, port=args.port or config.port,
        workers=args.workers or config.workers, threads=args.threads or config.threads,
    )
    serve(config, config_file=args.config)
    return 0


def cmd_impressions_writer(config: EngineConfig, args: argparse.Namespace) -> int:
    """`impressions writer`: store what spool-only serving processes spool (``vitrine serve`` starts it)."""
    import signal
    import threading

    from engine.learn.impressions import SpoolWriter, lower_priority, mark_writer_ready
    from engine.process import process_alive
    from engine.service import Engine

    lower_priority()  # background work: the workers' requests get the CPU first
    engine = Engine(config)
    try:
        engine.snapshot()  # load the served version now, beside the workers' start, not on the first list
    except IndexNotBuilt:
        pass  # nothing published yet: loaded with the first list that needs it
    ready = mark_writer_ready(engine.shoppers.events)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    parent = args.parent

    def alive() -> bool:  # the server that started it: when it is gone (even by kill -9), stop
        return parent is None or process_alive(parent)

    writer = SpoolWriter(lambda: engine.shoppers.events, engine.deferred,
                         retention_s=config.impression_retention_days * 86400.0,
                         every_s=config.impression_flush_seconds, before_pass=engine.refresh_live)
    try:
        writer.run(stop, alive)
    finally:
        ready.unlink(missing_ok=True)
    return 0


def cmd_events_import(config: EngineConfig, args: argparse.Namespace) -> int:
    from engine.events.importer import import_events
    from engine.service import Engine

    engine = Engine(config)
    try:
        known = engine.snapshot().catalog.__contains__
    except IndexNotBuilt:
        known = None  # no catalog published yet: item ids are not checked
    try:
        report = import_events(engine.events, Path(args.file), batch_size=args.batch_size, known_item=known)
    finally:
        engine.events.close()
    _print_report(report, args.json, summary=True)
    return 0 if not report.rejected else EXIT_FAILED


def cmd_eval_dp_trending(config: EngineConfig, args: argparse.Namespace) -> int:
    """`eval dp-trending`: top-10 overlap, NDCG@10 and L1 error of private trending at epsilon 1 and 0.1."""
    from engine.catalog import read_catalog
    from engine.evaluation import dp_trending

    catalog, _ = read_catalog(dp_trending.ROOT / "data" / "demo" / "catalog.jsonl")
    report = dp_trending.run(catalog, items=args.items, draws=args.draws)
    if args.json:
        _print_json(report.to_dict())
        return 0
    for line in report.lines():
        print(line)
    if args.record:
        dp_trending.record_results(report, f"vitrine eval dp-trending --items {args.items} --draws {args.draws} "
                                           "--record")
        print("recorded the table in bench/RESULTS.md")
    return 0


def cmd_analytics_dp_accuracy(config: EngineConfig, args: argparse.Namespace) -> int:
    """`analytics dp-accuracy`: mean relative error of DP analytics reports on the demo events (issue 12)."""
    from engine.analytics import accuracy

    rows = accuracy.run(draws=args.draws, seed=args.seed)
    if args.json:
        _print_json(rows)
        return 0
    print(f"{'report':<22} {'epsilon':>7} {'cells':>6} {'mean exact':>10} {'noise scale':>11} {'mean rel. error':>15} "
          f"{'weighted rel. error':>19}")
    for r in rows:
        print(f"{r['report']:<22} {r['epsilon']:>7g} {r['cells']:>6} {r['mean_exact']:>10} {r['noise_scale']:>11g} "
              f"{r['mean_relative_error']:>15.1%} {r['weighted_relative_error']:>19.1%}")
    return 0


def cmd_qa_import(config: EngineConfig, args: argparse.Namespace) -> int:
    """`qa import FILE`: past questions and answers of catalog items (engine.qa.importer), with the skip report."""
    from engine.service import Engine

    engine = Engine(config)
    try:
        report = engine.qa.import_file(Path(args.file))
    finally:
        engine.events.close()
    _print_report(report, args.json)
    return 0


def cmd_eval_qa(config: EngineConfig, args: argparse.Namespace) -> int:
    """`eval qa`: BM25, vector and the tuned answer scorer side by side (engine.evaluation.qa_eval)."""
    from engine.evaluation import qa_eval

    report = qa_eval.run_qa_eval(config, dataset=args.dataset, data_dir=Path(args.data_dir) if args.data_dir else None,
                                 top_layer=Path(args.top_layer) if args.top_layer else None,
                                 fit_layer=Path(args.fit_layer) if args.fit_layer else None,
                                 finetune_epochs=args.finetune_epochs, finetune_layers=args.finetune_layers)
    _print_report(report, args.json)
    if args.record:
        extra = (f" --finetune-epochs {args.finetune_epochs} --finetune-layers {args.finetune_layers}"
                 if args.finetune_epochs else "")
        qa_eval.record_results(report, f"vitrine eval qa --dataset {args.dataset}{extra} --record")
    return 0


def cmd_eval_encoder_agreement(config: EngineConfig, args: argparse.Namespace) -> int:
    """`eval encoder-agreement`: the int8 encoder against fp32 (engine.evaluation.encoder_eval)."""
    from engine.evaluation import encoder_eval

    report = encoder_eval.run_encoder_agreement(config, Path(args.data_dir) if args.data_dir else None,
                                                rounds=args.rounds, search_eval=not args.no_ndcg, items=args.items)
    _print_report(report, args.json)
    if args.record:
        flags = [f"--rounds {args.rounds}"] if args.rounds != 3 else []
        flags += [f"--items {args.items}"] if args.items is not None else []
        flags += ["--no-ndcg"] if args.no_ndcg else []
        encoder_eval.record_results(report, " ".join(["vitrine eval encoder-agreement", *flags, "--record"]))
        print("recorded the section in bench/RESULTS.md")
    return 0


def cmd_eval(config: EngineConfig, args: argparse.Namespace) -> int:
    """`eval search|recommend|personalized-search|ope`: run the evaluation, print its lines or its JSON."""
    import importlib

    if args.what == "ope" and args.policy:
        return _ope_on_logs(config, args)
    module, func = _EVALS[args.what]
    run = getattr(importlib.import_module(module), func)
    extra = {k: getattr(args, k) for k in ("bootstrap", "clip") if getattr(args, k, None) is not None}
    report = run(config, dataset=args.dataset, data_dir=Path(args.data_dir) if args.data_dir else None, **extra)
    _print_report(report, args.json)
    return 0


def cmd_train_ranker(config: EngineConfig, args: argparse.Namespace) -> int:
    """`train ranker`: train the learned ranker (logs or a public bootstrap), publish it, print its manifest."""
    if args.data in ("logs", "history"):
        from engine.learn.train import train_from_logs

        boot = None
        if args.data == "history":
            if args.surface != "recommend":
                raise InvalidQuery("data", "history trains the recommend ranker only (next-item lists of the "
                                           "shoppers' histories)")
            from engine.evaluation.history import history_rows

            boot = history_rows(config)
        manifest = train_from_logs(config, args.surface, days=args.days, seed=args.seed, publish=not args.dry_run,
                                   force=args.force, bootstrap=boot)
    else:
        from engine.evaluation.ranker_eval import train_bootstrap

        manifest = train_bootstrap(config, args.surface, args.data, seed=args.seed, publish=not args.dry_run,
                                   data_dir=Path(args.data_dir) if args.data_dir else None)
    _print_json(manifest)
    return 0


def cmd_train_qlearning(config: EngineConfig, args: argparse.Namespace) -> int:
    """`train qlearning`: the Q table of the strategy policy, from logged sessions or the simulator; written to
    ``<ranker_dir>/qlearning/current.json``, which servers with ``strategy_policy = qlearning`` reload."""
    import time as _time

    from engine.learn.online import logged_episodes, save_qtable
    from engine.learn.qlearning import QLearner, QSettings, Rewards
    from engine.recommend.strategies import STRATEGIES

    rewards = Rewards(config.reward_click, config.reward_cart, config.reward_purchase)
    settings = QSettings(gamma=args.gamma, alpha=args.alpha, epsilon=config.strategy_epsilon, rewards=rewards)
    settings.validate("qlearning")
    if args.data == "logs":
        from engine.events import open_event_store

        store = open_event_store(config.events_url)
        try:
            episodes, vocab = logged_episodes(store, since=_time.time() - args.days * 86400.0,
                                              window_s=config.attribution_window_minutes * 60.0, rewards=rewards)
        finally:
            store.close()
        if not episodes:
            raise InvalidQuery("--data", "no logged list of a strategy policy in that span: serve with "
                                         "strategy_policy set (a bandit explores the strategies) first")
        learner = QLearner(STRATEGIES, settings)
        updates = learner.fit(episodes, epochs=args.epochs)
        info = {"data": "logs", "days": args.days, "episodes": len(episodes), "updates": updates}
    else:
        from engine.evaluation.policy_sim import PolicySimSettings, build_lists, run_policy
        import tempfile

        sim = PolicySimSettings(rounds=args.rounds, sessions=args.sessions, seeds=(args.seed,), q=settings)
        with tempfile.TemporaryDirectory() as tmp:
            lists = build_lists(config, sim, work=Path(tmp), data_dir=Path(args.data_dir or config.data_dir))
        run, policy = run_policy("qlearning", lists, sim, args.seed)
        learner = policy.q  # type: ignore[attr-defined]
        vocab = lists.vocabulary
        info = {"data": "simulate", "rounds": args.rounds, "sessions": args.sessions, "seed": args.seed,
                "reward_per_list": sum(run.reward) / max(sum(run.lists), 1)}
    info |= {"states": learner.n_states, "gamma": settings.gamma, "alpha": settings.alpha}
    path = config.rankers_path / "qlearning" / "current.json"
    if not args.dry_run:
        save_qtable(path, learner, vocab, info)
        info["written"] = str(path)
    _print_json(info)
    return 0


def cmd_ranker(config: EngineConfig, args: argparse.Namespace) -> int:
    """`ranker versions|rollback --surface S`: the published rankers, or back to the previous one."""
    from engine.learn import registry

    if args.action == "rollback":
        print(f"{args.surface} ranker: current is now {registry.rollback(config.rankers_path, args.surface)}")
    else:
        _print_json(registry.list_versions(config.rankers_path, args.surface))
    return 0


def cmd_simulate(config: EngineConfig, args: argparse.Namespace) -> int:
    """`simulate`: simulated shoppers against real servers, blend vs learned ranker (engine/evaluation/simulate.py);
    with --policies, the strategy policies on simulated sessions (engine/evaluation/policy_sim.py)."""
    from engine.evaluation.simulate import (ROOT, ClickModel, SimSettings, record_results, run_simulation,
                                            write_outputs)

    try:
        seeds = tuple(int(x) for x in args.seeds.split(",") if x.strip())
    except ValueError:
        raise InvalidQuery("--seeds", f"comma-separated integers, got {args.seeds!r}") from None
    clicks = ClickModel(bias=args.bias, rel_click=args.rel_click, noise_click=args.noise_click, buy=args.buy)
    if args.what == "ads":
        return _simulate_ads(config, args, seeds)
    if args.policies:
        return _simulate_policies(config, args, seeds, clicks)
    args.rounds = 5 if args.rounds is None else args.rounds
    settings = SimSettings(rounds=args.rounds, shoppers=args.shoppers, seeds=seeds, k=args.k, holdout=args.holdout,
                           lists_per_round=args.lists, returning=args.returning, clicks=clicks,
                           force_publish=args.force, bootstrap=args.bootstrap)
    report = run_simulation(config, settings, out_dir=Path(args.out), config_file=args.config,
                            data_dir=Path(args.data_dir) if args.data_dir else None, keep_stores=args.keep_stores)
    png, js = write_outputs(report, Path(args.out))
    for line in report.lines():
        print(line)
    print(f"wrote {png} and {js}")
    if args.record:
        command = (f"vitrine simulate --rounds {args.rounds} --shoppers {args.shoppers} --seeds {args.seeds} "
                   f"--k {args.k} --lists {args.lists} --holdout {args.holdout} --bias {args.bias:g} "
                   f"{'--returning ' if args.returning else ''}--bootstrap {args.bootstrap} "
                   f"--rel-click {args.rel_click:g} --noise-click {args.noise_click:g} --buy {args.buy:g} --record")
        if args.returning:  # its own section; the plot stays in --out
            record_results(report, png, command, image=None, section="simulate-returning")
        elif args.bootstrap == "history":  # its own section and plot, beside the logs-only run
            record_results(report, png, command, image=ROOT / "bench" / "simulate_history.png",
                           section="simulate-history")
        else:
            record_results(report, png, command)
        print("recorded the run in bench/RESULTS.md" + ("" if args.returning else " (plot: bench/simulate"
                                                       + ("_history" if args.bootstrap == "history" else "") + ".png)"))
    return 0


def _ope_on_logs(config: EngineConfig, args: argparse.Namespace) -> int:
    """`eval ope --policy P --surface S --since 7d`: a candidate's CTR on the logged traffic (engine.learn.ope_logs)."""
    import time as _time

    from engine.events import open_event_store
    from engine.learn import ope_logs
    from engine.ranking.features import RECOMMEND_FEATURES, SEARCH_FEATURES

    span = ope_logs.parse_since(args.since)
    store = open_event_store(config.events_url)
    try:
        report = ope_logs.evaluate_logged(
            store, args.surface, args.policy, since=_time.time() - span,
            window_s=config.attribution_window_minutes * 60.0, rankers_root=config.rankers_path,
            features={"recommend": RECOMMEND_FEATURES, "search": SEARCH_FEATURES}.get(args.surface),
            clip=args.clip, n_bootstrap=max(args.bootstrap, 30))
        if args.record:
            ope_logs.record(store, report)
    finally:
        store.close()
    _print_report(report, args.json)
    if args.record and not args.json:
        print("recorded: the admin page shows it beside an experiment variant with this policy")
    return 0


def _simulate_ads(config: EngineConfig, args: argparse.Namespace, seeds: tuple[int, ...]) -> int:
    from engine.evaluation import ads_sim

    settings = ads_sim.AdSimSettings(requests=args.requests, campaigns=args.campaigns, seed=seeds[0], items=args.items,
                                     floor=config.ads_relevance_floor)
    out = Path(args.out if args.out != "bench/out/simulate" else "bench/out/simulate-ads")
    report = ads_sim.run_ads_simulation(config, settings, out_dir=out,
                                        data_dir=Path(args.data_dir) if args.data_dir else None)
    png, js = ads_sim.write_outputs(report, out)
    for line in report.lines():
        print(line)
    print(f"wrote {png} and {js}")
    if args.record:
        ads_sim.record_results(report, png, f"vitrine simulate ads --requests {args.requests} --campaigns "
                                            f"{args.campaigns} --items {args.items} --seeds {seeds[0]} --record")
        print("recorded the run in bench/RESULTS.md (plot: bench/simulate_ads.png)")
    return 0


def _simulate_policies(config: EngineConfig, args: argparse.Namespace, seeds: tuple[int, ...], clicks: Any) -> int:
    from engine.evaluation import policy_sim
    from engine.learn.bandits import Rewards

    rounds = 10 if args.rounds is None else args.rounds
    settings = policy_sim.PolicySimSettings(
        rounds=rounds, sessions=args.sessions, steps=args.steps, users=args.users, seeds=seeds, k=args.k,
        holdout=args.holdout, clicks=clicks, cold_share=args.cold_share, epsilon=config.strategy_epsilon,
        alpha=config.strategy_alpha, rewards=Rewards(config.reward_click, config.reward_cart, config.reward_purchase))
    out = Path(args.out if args.out != "bench/out/simulate" else "bench/out/simulate-policies")
    report = policy_sim.run_policy_simulation(config, settings, out_dir=out,
                                              data_dir=Path(args.data_dir) if args.data_dir else None)
    png, js = policy_sim.write_outputs(report, out)
    for line in report.lines():
        print(line)
    print(f"wrote {png} and {js}")
    if args.record:
        command = (f"vitrine simulate --policies --rounds {rounds} --sessions {args.sessions} --steps {args.steps} "
                   f"--users {args.users} --seeds {args.seeds} --k {args.k} --cold-share {args.cold_share:g} --record")
        policy_sim.record_results(report, png, command)
        print("recorded the run in bench/RESULTS.md (plot: bench/simulate_policies.png)")
    return 0


_EVALS = {
    "search": ("engine.evaluation.search_eval", "run_search_eval"),
    "recommend": ("engine.evaluation.recommend_eval", "run_recommend_eval"),
    "personalized-search": ("engine.evaluation.personalized_eval", "run_personalized_eval"),
    "ope": ("engine.evaluation.ope_eval", "run_ope_eval"),
}


# -- plumbing -----------------------------------------------------------------------------------

class _ProgressBar:
    """One line on stderr per stage: count, percent, items/s and ETA (redrawn in place on a TTY)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.stage = ""

    def __call__(self, event: dict[str, Any]) -> None:
        if not self.enabled:
            return
        stage, done, total = event.get("stage", ""), int(event.get("done", 0)), int(event.get("total", 0))
        now = time.time()
        final = total and done >= total
        if stage == self.stage and not final and now - self.last < (0.1 if self.tty else 2.0):
            return
        if stage != self.stage and self.stage and self.tty:
            sys.stderr.write("\n")
        self.stage, self.last = stage, now
        line = f"{stage:8s}"
        if total:
            width = 30
            fill = int(width * done / total)
            line += f" [{'#' * fill}{'.' * (width - fill)}] {done}/{total} {100 * done / total:5.1f}%"
        if event.get("items_per_s"):
            line += f"  {event['items_per_s']:.0f} items/s  ETA {event.get('eta_s', 0):.0f}s"
        if event.get("from_cache"):
            line += f"  ({event['from_cache']} from cache)"
        sys.stderr.write(("\r" + line) if self.tty else (line + "\n"))
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.tty and self.stage:
            sys.stderr.write("\n")


def _bool(value: str) -> bool:
    from engine.text import parse_bool

    try:
        return parse_bool(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vitrine", description="Vitrine search and recommendation engine.")
    p.add_argument("--config", help="TOML configuration file (default: $VITRINE_CONFIG or ./vitrine.toml)")
    p.add_argument("--index-dir", help="where index versions live (default: indexes)")
    sub = p.add_subparsers(metavar="COMMAND")

    def add(name: str, func: Callable[..., int], help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(func=func)
        return sp

    b = add("build", cmd_build, "build a new index version from a catalog file and publish it")
    b.add_argument("--catalog", help="catalog file: .csv, .csv.gz, .jsonl, .jsonl.gz or .parquet")
    b.add_argument("--full", action="store_true", help="re-embed every item instead of reusing cached vectors")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.add_argument("--ray", metavar="auto|ADDRESS",
                   help="embed over a Ray cluster: auto (a running local cluster, else a new local one), HOST:PORT "
                        "or ray://HOST:PORT; off for a local build (default: the build_ray setting)")
    b.add_argument("--job-file", help=argparse.SUPPRESS)

    cat = sub.add_parser("catalog", help="catalog tools").add_subparsers(metavar="ACTION")
    c = cat.add_parser("check", help="read a catalog file and print the cleaning report")
    c.set_defaults(func=cmd_catalog_check)
    c.add_argument("file")
    c.add_argument("--limit", type=int, default=20, help="problems listed per kind")
    c.add_argument("--json", action="store_true")

    s = add("search", cmd_search, "hybrid search of the published index")
    s.add_argument("query")
    s.add_argument("--k", type=int, default=None)
    s.add_argument("--offset", type=int, default=0)
    s.add_argument("--category")
    s.add_argument("--min-price", type=float)
    s.add_argument("--max-price", type=float)
    s.add_argument("--in-stock", type=_bool)
    s.add_argument("--json", action="store_true")

    sim = add("similar", cmd_similar, "items similar to an item")
    sim.add_argument("item_id")
    sim.add_argument("--k", type=int, default=None)
    sim.add_argument("--same-category", action="store_true")
    sim.add_argument("--json", action="store_true")

    sv = add("serve", cmd_serve, "serve the HTTP API with a production WSGI server (gunicorn)")
    sv.add_argument("--host")
    sv.add_argument("--port", type=int)
    sv.add_argument("--workers", type=int, help="worker processes (default 1)")
    sv.add_argument("--threads", type=int, help="threads per worker (default 8)")

    tok = add("shopper-token", cmd_shopper_token, "print a signed token that lets a browser act for one shopper")
    tok.add_argument("user_id")
    tok.add_argument("--ttl", type=int, default=3600, help="seconds until it expires (default 3600, at most 30 days)")

    add("rollback", cmd_rollback, "serve the version served before the current one (walks back the history)")
    i = add("info", cmd_info, "show the published version and its manifest")
    i.add_argument("--json", action="store_true")

    ims = sub.add_parser("impressions", help="the impression log").add_subparsers(metavar="ACTION")
    iw = ims.add_parser("writer", help="store the impressions that spool-only servers spool (vitrine serve starts "
                                       "it: impressions_writer = process)")
    iw.set_defaults(func=cmd_impressions_writer)
    iw.add_argument("--parent", type=int, help="stop when this process is gone")

    evs = sub.add_parser("events", help="shopper events").add_subparsers(metavar="ACTION")
    imp = evs.add_parser("import", help="bulk-load events from CSV or JSON Lines (idempotent)")
    imp.set_defaults(func=cmd_events_import)
    imp.add_argument("file")
    imp.add_argument("--batch-size", type=int, default=1000)
    imp.add_argument("--json", action="store_true")

    an = sub.add_parser("analytics", help="behaviour analytics (issue 12)").add_subparsers(metavar="ACTION")
    da = an.add_parser("dp-accuracy", help="mean relative error of DP reports at epsilon 1 and 0.1 on the demo events")
    da.set_defaults(func=cmd_analytics_dp_accuracy)
    da.add_argument("--draws", type=int, default=100, help="DP releases per report and epsilon (default 100)")
    da.add_argument("--seed", type=int, default=None, help="seed the noise (default: os.urandom)")
    da.add_argument("--json", action="store_true")

    qa = sub.add_parser("qa", help="shopper questions and answers").add_subparsers(metavar="ACTION")
    qi = qa.add_parser("import", help="load past questions and answers of catalog items (Amazon QA format or "
                                      "item_id,question,answer CSV/JSON Lines; idempotent)")
    qi.set_defaults(func=cmd_qa_import)
    qi.add_argument("file")
    qi.add_argument("--json", action="store_true")

    tr = sub.add_parser("train", help="train models").add_subparsers(metavar="WHAT")
    t = tr.add_parser("ranker", help="train the learned ranker and publish it (see README, 'The learning loop')")
    t.set_defaults(func=cmd_train_ranker)
    t.add_argument("--surface", required=True, choices=["recommend", "search"])
    t.add_argument("--data", default="logs", choices=["logs", "history", "scientific", "crowdflower"],
                   help="logged lists and outcomes (default); history (recommend): those and next-item lists of "
                        "the shoppers' own histories, made by the serving path; or a public bootstrap: "
                        "scientific (recommend), crowdflower (search)")
    t.add_argument("--days", type=float, default=30.0, help="logs: how many days back (default 30)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--dry-run", action="store_true", help="train and report, do not publish")
    t.add_argument("--force", action="store_true",
                   help="logs: publish even when the model orders the newest lists worse than they were served")
    t.add_argument("--data-dir", help="public data (default: data_dir setting, ../shared/data)")
    sm = add("simulate", cmd_simulate, "simulated Scientific shoppers: CTR per round of the blend and the learned "
                                       "ranker retrained on their clicks (see README, 'The learning loop')")
    sm.add_argument("what", nargs="?", default="loop", choices=["loop", "ads"],
                    help="loop: the learning loop (default); ads: sponsored products on a simulated day")
    sm.add_argument("--requests", type=int, default=60000, help="ads: requests in the day (default 60000)")
    sm.add_argument("--campaigns", type=int, default=12, help="ads: campaigns (default 12)")
    sm.add_argument("--items", type=int, default=3, help="ads: advertised items per campaign (default 3)")
    sm.add_argument("--rounds", type=int, default=None,
                    help="serve -> clicks -> retrain rounds (default 5; with --policies, rounds of sessions: 10)")
    sm.add_argument("--policies", action="store_true",
                    help="the strategy policies (blend, epsilon-greedy, Thompson, LinUCB, Q-learning) on simulated "
                         "sessions: cumulative reward and regret, cold start, OPE (see README, 'Exploration')")
    sm.add_argument("--sessions", type=int, default=500, help="--policies: sessions per round (default 500)")
    sm.add_argument("--steps", type=int, default=5, help="--policies: lists per session (default 5)")
    sm.add_argument("--users", type=int, default=3000, help="--policies: distinct shoppers (default 3000)")
    sm.add_argument("--cold-share", type=float, default=0.1,
                    help="--policies: share of the blend+cold policy's slots given to untouched items (default 0.1)")
    sm.add_argument("--shoppers", type=int, default=1000, help="shoppers per seed (default 1000)")
    sm.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    sm.add_argument("--k", type=int, default=10, help="items per list (default 10)")
    sm.add_argument("--lists", type=int, default=1, help="lists per shopper per round (default 1)")
    sm.add_argument("--force", action="store_true",
                    help="publish every retrained model, even one that orders the newest lists worse than served")
    sm.add_argument("--bootstrap", default="none", choices=["none", "history"],
                    help="history: the learned arm also trains on next-item lists bootstrapped from the stored "
                         "histories, and serves their sequence model (default none: its logged lists alone)")
    sm.add_argument("--returning", action="store_true",
                    help="the same shoppers every round (default: a new cohort each round)")
    sm.add_argument("--holdout", type=int, default=3, help="last items of each shopper held out as true next items")
    sm.add_argument("--bias", type=float, default=1.0, help="examination (1/position)**bias (default 1.0)")
    sm.add_argument("--rel-click", type=float, default=0.9, help="P(click | examined, true next item)")
    sm.add_argument("--noise-click", type=float, default=0.02, help="P(click | examined, other item)")
    sm.add_argument("--buy", type=float, default=0.5, help="P(purchase | clicked a true next item)")
    sm.add_argument("--out", default="bench/out/simulate", help="where simulate.png and simulate.json go")
    sm.add_argument("--record", action="store_true", help="write the table into bench/RESULTS.md, the plot to bench/")
    sm.add_argument("--keep-stores", action="store_true", help="keep each arm's event store under OUT/runs")
    sm.add_argument("--data-dir", help="public data (default: data_dir setting, ../shared/data)")
    tq = tr.add_parser("qlearning", help="train the Q table of strategy_policy = qlearning (see README, 'Exploration')")
    tq.set_defaults(func=cmd_train_qlearning)
    tq.add_argument("--data", default="logs", choices=["logs", "simulate"],
                    help="logged sessions of a strategy policy (default), or the simulator's sessions")
    tq.add_argument("--days", type=float, default=30.0, help="logs: how many days back (default 30)")
    tq.add_argument("--epochs", type=int, default=5, help="logs: passes over the sessions (default 5)")
    tq.add_argument("--gamma", type=float, default=0.9, help="discount (default 0.9)")
    tq.add_argument("--alpha", type=float, default=0.1, help="learning rate (default 0.1)")
    tq.add_argument("--rounds", type=int, default=10, help="simulate: rounds of sessions (default 10)")
    tq.add_argument("--sessions", type=int, default=500, help="simulate: sessions per round (default 500)")
    tq.add_argument("--seed", type=int, default=0)
    tq.add_argument("--dry-run", action="store_true", help="train and report, do not write the table")
    tq.add_argument("--data-dir", help="public data (default: data_dir setting, ../shared/data)")
    rk = sub.add_parser("ranker", help="published rankers").add_subparsers(metavar="ACTION")
    for action, help_text in (("versions", "list the published rankers of a surface"),
                              ("rollback", "serve the previous ranker of a surface again")):
        ra = rk.add_parser(action, help=help_text)
        ra.set_defaults(func=cmd_ranker, action=action)
        ra.add_argument("--surface", required=True, choices=["recommend", "search"])
    ev = sub.add_parser("eval", help="measure quality on real data sets").add_subparsers(metavar="WHAT")
    for what, datasets, help_text in (
        ("search", ["crowdflower"], "search nDCG@10 of BM25, vector and hybrid"),
        ("recommend", ["scientific", "movielens100k"],
         "next-item Recall/NDCG@10/50 of popularity, content, co-occurrence, blend"),
        ("personalized-search", ["scientific"], "MRR/NDCG@10 of search with personalization off and on"),
        ("ope", ["obd"], "off-policy evaluation (IPS, SNIPS, DM, DR, ...) against on-policy CTR, Open Bandit Dataset"),
    ):
        e = ev.add_parser(what, help=help_text)
        e.set_defaults(func=cmd_eval, what=what)
        e.add_argument("--dataset", default=datasets[0], choices=datasets)
        e.add_argument("--data-dir", help="evaluation data (default: data_dir setting, ../shared/data)")
        e.add_argument("--json", action="store_true")
        if what == "ope":
            e.add_argument("--bootstrap", type=int, default=30, metavar="N", help="bootstrap resamples (default 30)")
            e.add_argument("--clip", type=float, metavar="W",
                           help="cap the importance weights of IPS, SNIPS, DR and SNDR at W (default: no clipping)")
            e.add_argument("--policy", metavar="P",
                           help="estimate a candidate on this server's own logged traffic instead: blend, ranker, "
                                "ranker:<version>, <experiment>/<variant>, strategy/<strategy> or "
                                "strategy:<epsilon|linucb|thompson|beta|qlearning> (see README, 'Evaluating a policy "
                                "before serving it')")
            e.add_argument("--surface", default="recommend", choices=["recommend", "search", "similar"],
                           help="--policy: the surface whose lists are replayed (default recommend)")
            e.add_argument("--since", default="7d", help="--policy: how far back, e.g. 7d, 12h (default 7d)")
            e.add_argument("--record", action="store_true",
                           help="--policy: keep the estimate for the admin experiments panel")
    eq = ev.add_parser("qa", help="answer ranking MRR/R@1 of BM25, vector and the tuned scorer (Amazon QA); "
                                  "trains the scorer on the tune half into <models_dir>/qa")
    eq.set_defaults(func=cmd_eval_qa)
    eq.add_argument("--dataset", default="appliances", choices=["appliances"])
    eq.add_argument("--data-dir", help="evaluation data (default: data_dir setting, ../shared/data)")
    eq.add_argument("--json", action="store_true")
    eq.add_argument("--record", action="store_true", help="write the table to bench/RESULTS.md")
    eq.add_argument("--finetune-epochs", type=int, default=0, metavar="N",
                    help="first fine-tune MiniLM's top layers on the tune half for N epochs (slow: 5 to 25 min an "
                         "epoch a layer on 2 cores, with load); default: use the packaged fine-tuned layers")
    eq.add_argument("--finetune-layers", type=int, default=2, metavar="L",
                    help="how many of MiniLM's top layers --finetune-epochs trains (default 2)")
    eq.add_argument("--top-layer", metavar="NPZ", help="fine-tuned top layers from an earlier run")
    eq.add_argument("--fit-layer", metavar="NPZ", help="the layers trained on the first tune part only, that the "
                                                       "regression is fitted with (default: fit_layer.npz beside "
                                                       "--top-layer, if any)")
    ea = ev.add_parser("encoder-agreement", help="the int8 encoder against fp32: cosine, top-10 overlap, CrowdFlower "
                                                 "nDCG@10, build throughput and query encoding time")
    ea.set_defaults(func=cmd_eval_encoder_agreement)
    ea.add_argument("--data-dir", help="evaluation data (default: data_dir setting, ../shared/data)")
    ea.add_argument("--rounds", type=int, default=3, help="interleaved fp32/int8 build rounds (default 3; queries: >= 5)")
    ea.add_argument("--items", type=int, help="Scientific item texts to encode (default all)")
    ea.add_argument("--no-ndcg", action="store_true", help="skip the two CrowdFlower search evals")
    ea.add_argument("--json", action="store_true")
    ea.add_argument("--record", action="store_true", help="write the section to bench/RESULTS.md")
    dp = ev.add_parser("dp-trending", help="accuracy of differentially private trending on the demo events")
    dp.set_defaults(func=cmd_eval_dp_trending)
    dp.add_argument("--items", type=int, default=5, help="items counted per shopper (default 5)")
    dp.add_argument("--draws", type=int, default=50, help="releases per epsilon (default 50)")
    dp.add_argument("--json", action="store_true")
    dp.add_argument("--record", action="store_true", help="write the table to bench/RESULTS.md")
    return p


if __name__ == "__main__":
    sys.exit(main())
