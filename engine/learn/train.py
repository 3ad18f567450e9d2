"""Training the ranker: the design's MLP in torch, and LightGBM LambdaMART as the side-by-side baseline.

Rows come in lists (``groups``: the row count of each list, in order), one list per impression or query.
Labels are in [0, 1] for the MLP (binary cross-entropy with soft labels: a click 0.5, an add to cart 0.8,
a purchase 1; see :mod:`engine.learn.dataset`) and graded for LambdaMART (``label_gain`` over integer
grades).

MLP: features standardized with the training mean and std; ``hidden`` ReLU layers; one output whose
sigmoid is the probability (``BCEWithLogitsLoss``: the sigmoid and BCE in one stable step); Adam;
mini-batches shuffled by a seeded generator; after each epoch nDCG@10 on the validation lists, and training
stops after ``patience`` epochs without a gain, keeping the best epoch's weights. Seeds: torch, numpy and
the shuffle generator, and torch's deterministic algorithms during training (:func:`reproducible`), so a
run is reproducible on one machine with any thread count. Optional per-row ``weights`` (inverse propensity
weights) multiply each row's loss.

torch is imported here only: serving runs the exported weights in numpy (:mod:`engine.learn.model`).
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np

from engine.learn.model import MlpRanker, merge_mlps


@dataclass
class TrainConfig:
    hidden: tuple[int, ...] = (64, 32)
    lr: float = 1e-3
    weight_decay: float = 1e-5
    batch_size: int = 512
    max_epochs: int = 40
    patience: int = 4
    seed: int = 0
    threads: int = 2
    # Train this many MLPs (seeds seed, seed + 1, ...) and serve their mean logit, as one MLP of
    # block-diagonal layers (:func:`engine.learn.model.merge_mlps`): the seeds' spread averages out.
    ensemble: int = 1
    # Keep each feature's training range in the model, which then clips served values into it
    # (MlpRanker.lo / hi). The log trainer does; the public-data evals do not (their rows are one source).
    bounds: bool = False


MIN_STEPS = 10  # optimizer steps per epoch, at least, down to batches of MIN_BATCH rows
MIN_BATCH = 32


@dataclass
class TrainResult:
    model: MlpRanker
    epochs: int
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def offsets(groups: Sequence[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(np.asarray(groups, np.int64))])


def list_rows(groups: Sequence[int], picks: Sequence[int]) -> np.ndarray:
    """The row indices of lists ``picks`` (in that order) among lists of ``groups`` rows each."""
    off = offsets(groups)
    return (np.concatenate([np.arange(off[i], off[i + 1]) for i in picks]) if len(picks)
            else np.zeros(0, np.int64))


def mean_ndcg(scores: np.ndarray, labels: np.ndarray, groups: Sequence[int], k: int = 10) -> float:
    """Mean nDCG@k over the lists (gain = label, ties by row order); lists without a positive are skipped."""
    off = offsets(groups)
    out = []
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    for lo, hi in zip(off[:-1], off[1:]):
        y = np.asarray(labels[lo:hi], np.float64)
        if not (y > 0).any():
            continue
        s = np.asarray(scores[lo:hi], np.float64)
        order = np.lexsort((np.arange(len(s)), -s))[:k]
        ideal = np.sort(y)[::-1][:k]
        out.append(float((y[order] * disc[: len(order)]).sum() / (ideal * disc[: len(ideal)]).sum()))
    return float(np.mean(out)) if out else 0.0


def train_mlp(X: np.ndarray, y: np.ndarray, groups: Sequence[int], Xv: np.ndarray, yv: np.ndarray,
              groups_v: Sequence[int], features: Sequence[str], cfg: TrainConfig | None = None,
              weights: np.ndarray | None = None) -> TrainResult:
    """Train the MLP ranker on ``(X, y)``, early-stopped on nDCG@10 of ``(Xv, yv)``'s lists; with
    ``cfg.ensemble`` n > 1, n of them (seeds ``cfg.seed`` ...), merged into one model of their mean logit."""
    cfg = cfg or TrainConfig()
    if cfg.ensemble > 1:
        t0 = time.time()
        members = [train_mlp(X, y, groups, Xv, yv, groups_v, features, replace(cfg, seed=cfg.seed + i, ensemble=1),
                             weights) for i in range(cfg.ensemble)]
        history = [{"member": i, **h} for i, m in enumerate(members) for h in m.history]
        return TrainResult(merge_mlps([m.model for m in members]), max(m.epochs for m in members),
                           max(m.best_epoch for m in members), history, round(time.time() - t0, 1))
    with reproducible(cfg.seed, cfg.threads):
        return _train_mlp(X, y, groups, Xv, yv, groups_v, features, cfg, weights)


@contextmanager
def reproducible(seed: int, threads: int) -> Iterator[None]:
    """Seed torch, set its thread count, and turn on its deterministic algorithms for the block (put back
    after it). With two threads some backward passes (the sequence model's) sum in a different order from
    run to run; the deterministic ones do not, at no measured cost."""
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def _train_mlp(X: np.ndarray, y: np.ndarray, groups: Sequence[int], Xv: np.ndarray, yv: np.ndarray,
               groups_v: Sequence[int], features: Sequence[str], cfg: TrainConfig,
               weights: np.ndarray | None) -> TrainResult:
    import torch

    t0 = time.time()
    rng = np.random.default_rng(cfg.seed)
    X = np.asarray(X, np.float32)
    mean = X.mean(axis=0)
    std = X.std(axis=0)
    varies = std > 1e-8
    scale = np.where(varies, std, 1.0).astype(np.float32)
    # A column constant in the training rows carries nothing: the net is built and trained without it, and
    # its weights are exported as 0, so that it is initialised exactly as a net that never had it (adding a
    # feature a data set leaves at one value does not move that data set's figures) and so that a value it
    # takes at serving cannot move the score.
    used = np.flatnonzero(varies) if varies.any() else np.arange(X.shape[1])
    Xs = torch.from_numpy(((X - mean) / scale)[:, used])
    ys = torch.from_numpy(np.asarray(y, np.float32))
    ws = None if weights is None else torch.from_numpy(np.asarray(weights, np.float32))
    dims = [len(used), *cfg.hidden]
    layers: list[Any] = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    layers.append(torch.nn.Linear(dims[-1], 1))
    net = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = torch.nn.BCEWithLogitsLoss(reduction="none")

    x_lo, x_hi = (X.min(axis=0), X.max(axis=0)) if cfg.bounds and len(X) else (None, None)

    def export() -> MlpRanker:
        linear = [m for m in net if isinstance(m, torch.nn.Linear)]
        layers = [(m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy()) for m in linear]
        first = np.zeros((X.shape[1], layers[0][0].shape[1]), np.float32)
        first[used] = layers[0][0]
        return MlpRanker(tuple(features), mean.astype(np.float32), scale, [(first, layers[0][1]), *layers[1:]],
                         None, x_lo, x_hi)

    # A small set (a shop's first logged lists) still gets MIN_STEPS optimizer steps per epoch: at the full batch
    # size, 200 rows made one step an epoch, and early stopping ended training before the model had learnt.
    batch = min(cfg.batch_size, max(MIN_BATCH, -(-len(X) // MIN_STEPS)))
    best, best_epoch, best_model, history = -1.0, 0, export(), []
    epoch = 0
    for epoch in range(1, cfg.max_epochs + 1):
        net.train()
        perm = torch.from_numpy(rng.permutation(len(X)))
        total = 0.0
        for lo in range(0, len(X), batch):
            idx = perm[lo:lo + batch]
            opt.zero_grad()
            loss = loss_fn(net(Xs[idx])[:, 0], ys[idx])
            loss = (loss * ws[idx]).sum() / ws[idx].sum() if ws is not None else loss.mean()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        model = export()
        val = mean_ndcg(model.score(Xv), yv, groups_v)
        history.append({"epoch": epoch, "train_bce": round(total / len(X), 5), "val_ndcg@10": round(val, 5)})
        if val > best + 1e-6:
            best, best_epoch, best_model = val, epoch, model
        elif epoch - best_epoch >= cfg.patience:
            break
    return TrainResult(best_model, epoch, best_epoch, history, round(time.time() - t0, 1))


def grades(y: np.ndarray, levels: int = 4) -> np.ndarray:
    """Integer relevance grades for LambdaMART from labels in [0, 1] (or already graded labels)."""
    y = np.asarray(y, np.float64)
    out: np.ndarray = np.rint(y * (levels - 1) if y.max(initial=0) <= 1.0 else y).astype(np.int32)
    return out


def train_lambdamart(X: np.ndarray, y: np.ndarray, groups: Sequence[int], Xv: np.ndarray, yv: np.ndarray,
                     groups_v: Sequence[int], *, seed: int = 0, threads: int = 2) -> Any:
    """LightGBM ``lambdarank`` (LambdaMART) on the same rows, early-stopped on validation nDCG@10."""
    import lightgbm as lgb

    params = {"objective": "lambdarank", "metric": "ndcg", "ndcg_eval_at": [10], "learning_rate": 0.05,
              "num_leaves": 31, "min_data_in_leaf": 50, "feature_fraction": 0.9, "bagging_fraction": 0.8,
              "bagging_freq": 1, "seed": seed, "deterministic": True, "num_threads": threads, "verbose": -1}
    train = lgb.Dataset(np.asarray(X, np.float32), grades(y), group=list(groups))
    val = lgb.Dataset(np.asarray(Xv, np.float32), grades(yv), group=list(groups_v), reference=train)
    return lgb.train(params, train, num_boost_round=500, valid_sets=[val],
                     callbacks=[lgb.early_stopping(30, verbose=False)])


# -- from the logs, published ----------------------------------------------------------------------

MIN_LISTS = 20  # lists with an outcome needed before a model is worth training


def train_from_logs(config: Any, surface: str, *, days: float = 30.0, seed: int = 0, publish: bool = True,
                    force: bool = False, now: float | None = None, bootstrap: Any = None) -> dict[str, Any]:
    """Train the ``surface`` ranker on the last ``days`` of logged lists and their outcomes
    (:mod:`engine.learn.dataset`), compare it with LambdaMART and the served order on the newest lists,
    and publish it (:mod:`engine.learn.registry`) unless ``publish`` is False, or it orders those lists
    worse than they were served (then ``not_published`` says so; ``force`` publishes anyway).

    ``bootstrap`` (recommend only): bootstrap lists of the shop's own histories
    (``engine.evaluation.history.history_rows``: ``train``, ``val`` and the sequence model ``seq``).
    Their training lists join the logged ones, their validation lists join the newest logged lists for
    early stopping and for the publish check (where their served order is the blend's), any number of
    logged lists will do, and the model carries their sequence model. Logged lists served before any sequence
    model (their ``seq`` and ``seq_z`` 0 on every row) stay out of such a join (``dropped_without_seq``), and
    a feature every bootstrap row holds at one value is held there in the logged rows too while they are
    fewer than the bootstrap's lists (:func:`_held_features`; ``held_at_history_value``).
    Returns the manifest."""
    from engine.errors import InvalidQuery
    from engine.events import open_event_store
    from engine.learn import registry
    from engine.learn.dataset import logged_rows
    from engine.ranking.features import RECOMMEND_FEATURES, SEARCH_FEATURES

    registry.check_surface(surface)
    features = RECOMMEND_FEATURES if surface == "recommend" else SEARCH_FEATURES
    now = time.time() if now is None else now
    store = open_event_store(config.events_url)
    try:
        rows = logged_rows(store, surface, features, since=now - days * 86400.0, until=None,
                           window_s=config.attribution_window_minutes * 60.0)
    finally:
        store.close()
    if bootstrap is not None and surface != "recommend":
        raise InvalidQuery("surface", "a bootstrap from the shoppers' histories trains the recommend ranker only")
    if bootstrap is None and len(rows.groups) < MIN_LISTS:
        raise InvalidQuery("surface", f"only {len(rows.groups)} logged {surface} lists with a click, add to cart or "
                                      f"purchase in the last {days:g} days; at least {MIN_LISTS} are needed")
    tr, va = rows.split()
    logged: dict[str, Any] = {"train_lists": len(tr.groups), "val_lists": len(va.groups)}
    if bootstrap is not None:
        if getattr(bootstrap, "seq", None) is not None:
            # Lists served before any sequence model logged seq = seq_z = 0 on every row, a value no bootstrap
            # row has: the MLP would learn it as "a logged list" (10 shown rows, a click in most) and boost
            # every candidate whose served seq_z is near 0. Measured in `vitrine simulate --bootstrap history`:
            # expected CTR -3.8% to -6.4% against the blend with them, +3.8% and +4.4% without any logged list.
            tr, va = tr.served_with(features, SEQ_FEATURES), va.served_with(features, SEQ_FEATURES)
            dropped = logged["train_lists"] + logged["val_lists"] - len(tr.groups) - len(va.groups)
            logged = {"train_lists": len(tr.groups), "val_lists": len(va.groups), "dropped_without_seq": dropped}
        boot_tr = bootstrap.train.with_positive()
        n_logged = len(tr.groups) + len(va.groups)
        held = _held_features(bootstrap, features, n_logged, len(boot_tr.groups)) if n_logged else {}
        if held:
            tr, va = tr.with_values(features, held), va.with_values(features, held)
            logged["held_at_history_value"] = {k: round(v, 6) for k, v in held.items()}
        tr, va = _joined(boot_tr, tr), _joined(bootstrap.val.with_positive(), va)
    res = train_mlp(tr.X, tr.y, tr.groups, va.X, va.y, va.groups, features, TrainConfig(seed=seed, bounds=True))
    metrics = {"val_ndcg@10": {
        "mlp": round(mean_ndcg(res.model.score(va.X), va.y, va.groups), 4),
        "served_order": round(mean_ndcg(-np.arange(len(va.y), dtype=np.float64), va.y, va.groups), 4)}}
    if len(tr.groups) >= MIN_LISTS:
        booster = train_lambdamart(tr.X, tr.y, tr.groups, va.X, va.y, va.groups, seed=seed)
        metrics["val_ndcg@10"]["lambdamart"] = round(mean_ndcg(np.asarray(booster.predict(va.X)), va.y, va.groups), 4)
    manifest: dict[str, Any] = {
        "training": {"data": "logs" if bootstrap is None else "logs+history", **rows.info,
                     "train_lists": len(tr.groups), "val_lists": len(va.groups), "epochs": res.epochs,
                     "best_epoch": res.best_epoch, "seed": seed, "seconds": res.seconds},
        "metrics": metrics,
    }
    if bootstrap is not None:
        manifest["training"]["logged"] = logged
        manifest["training"]["history"] = {"train_lists": len(tr.groups) - logged["train_lists"],
                                           "val_lists": len(va.groups) - logged["val_lists"]}
        res.model.seq = bootstrap.seq
        if res.model.seq is not None:
            manifest["training"]["sequence_model"] = "fit on the shoppers' histories with the bootstrap lists"
    else:
        res.model.seq = _served_seq(config, surface, features)
        if res.model.seq is not None:
            manifest["training"]["sequence_model"] = "kept from the served version (its seq features were logged)"
    better = metrics["val_ndcg@10"]["mlp"] >= metrics["val_ndcg@10"]["served_order"]
    if publish and (better or force):
        manifest["version"] = registry.publish(config.rankers_path, surface, res.model, manifest)
    elif publish:
        manifest["not_published"] = ("the model orders the newest lists worse than they were served "
                                     f"(nDCG@10 {metrics['val_ndcg@10']['mlp']} < {metrics['val_ndcg@10']['served_order']}); "
                                     "use --force to publish it anyway")
    return manifest


SEQ_FEATURES = ("seq", "seq_z")
# Logged-only features: the display position varies in logged rows alone by design (it is 0 at serving).
LOGGED_ONLY = ("position",)


def _held_features(bootstrap: Any, features: Sequence[str], logged_lists: int, boot_lists: int) -> dict[str, float]:
    """The features every bootstrap row holds at one value (``item_ctr`` where the stored histories have no
    clicks or views), with that value, while the logs hold fewer lists than the bootstrap's ``boot_lists``
    training lists (those with a positive).
    Only the logged rows could teach such a feature, and a few hundred lists teach noise: the features are
    standardized by the bootstrap's near-zero spread, so the logged values become extreme inputs that the
    MLP weights heavily. Measured in `vitrine simulate --bootstrap history` (README). Held, the logged rows
    carry the bootstrap's value, the model's clip bounds hold it there at serving, and the feature enters
    once the logs outnumber the bootstrap."""
    parts = [np.asarray(x.X) for x in (bootstrap.train, bootstrap.val) if len(x.X)]
    if not parts or logged_lists >= boot_lists:
        return {}
    lo = np.min([x.min(axis=0) for x in parts], axis=0).astype(np.float64)
    hi = np.max([x.max(axis=0) for x in parts], axis=0).astype(np.float64)
    return {f: float(lo[i]) for i, f in enumerate(features) if f not in LOGGED_ONLY and hi[i] - lo[i] <= 1e-9}


def _joined(b: Any, logged: Any) -> Any:
    """Bootstrap lists (the caller keeps those holding a positive) followed by logged ones, as one set of rows."""
    from engine.learn.dataset import LoggedRows

    return LoggedRows(np.concatenate([np.asarray(b.X, np.float32), logged.X]),
                      np.concatenate([np.asarray(b.y, np.float32), logged.y]),
                      list(b.groups) + list(logged.groups), [0.0] * len(b.groups) + list(logged.ts))


def _served_seq(config: Any, surface: str, features: Sequence[str]) -> Any:
    """The sequence model of the served ``surface`` ranker, or None. A model retrained on the logs keeps it:
    the logged ``seq`` features came from it (or are 0 where none served), so it must keep making them."""
    from engine.learn import registry
    from engine.learn.model import ModelError
    from engine.errors import NotFound

    version = registry.current_version(config.rankers_path, surface)
    if version is None:
        return None
    try:
        return registry.load_version(config.rankers_path, surface, version, features)[0].seq
    except (ModelError, NotFound, OSError, ValueError):
        return None
