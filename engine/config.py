"""Engine configuration: defaults < TOML file < ``VITRINE_*`` environment, validated on creation."""
from __future__ import annotations

import dataclasses
import os
from enum import Enum
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from engine.errors import ConfigError
from engine.text import parse_bool
from engine.types import EncoderKind, Fusion

ENV_PREFIX = "VITRINE_"
CONFIG_FILE_ENV = "VITRINE_CONFIG"
DEFAULT_CONFIG_FILE = "vitrine.toml"
STRATEGY_POLICIES = ("blend", "epsilon", "linucb", "thompson", "beta", "qlearning")


@dataclass(frozen=True)
class EngineConfig:
    """Every setting of the engine. Immutable; build one with :meth:`load`.

    ``index_dir`` holds ``<version>/`` folders, the ``current`` pointer and the embedding cache.
    """

    index_dir: Path = Path("indexes")
    data_dir: Path = Path("../shared/data")
    catalog: Path | None = None
    # Where the ONNX export of the model lives (default: <index_dir>/models).
    models_dir: Path | None = None
    # Where learned rankers are published (default: <index_dir>/rankers; see engine.learn.registry).
    ranker_dir: Path | None = None
    # Encoder: onnx (exported from the packaged weights, fp32, same vectors as torch), torch, or onnx-int8
    # (that export quantized to int8 weights: faster, vectors of its own family, so the index must be built
    # with it too; see README, "The int8 encoder").
    encoder: EncoderKind = EncoderKind.ONNX
    encode_batch_size: int = 64
    max_seq_length: int = 256
    # The build also embeds each item's title alone (``title_vectors.npy``, float16, memory-mapped): the
    # search ranker's ``title_vector`` features compare the query with it (README, "Title vectors").
    title_vectors: bool = True
    # `vitrine build` embeds over a Ray cluster when set: "auto" (a running local cluster, else a new local
    # instance) or the cluster's HOST:PORT / ray://HOST:PORT; `--ray` overrides it (README, "Builds on a Ray cluster").
    build_ray: str | None = None
    query_cache_size: int = 4096
    # Search.
    default_k: int = 10
    max_k: int = 100
    max_offset: int = 1000
    candidate_pool: int = 200
    hybrid_weight: float = 0.9
    fusion: Fusion = Fusion.ZSCORE
    # Personalized search: default strength when a shopper is given (0 = off, 1 = profile only).
    personalize: float = 0.03
    # Vector index choice: exact inner product up to this many items, IVF above.
    approx_threshold: int = 20000
    ivf_nprobe: int = 16
    target_recall: float = 0.95
    # Above approx_threshold the build picks the fastest index (IVF-Flat/SQ8/PQ, HNSW...) reaching
    # target_recall whose memory per item (codes, ids, graph; what serving keeps) fits this budget in bytes.
    index_bytes_per_item: float = 500.0
    # An incremental build reuses the previous version's IVF centroids (no k-means) until the items
    # embedded or removed since they were trained pass this share of the catalog; 0 always retrains.
    ivf_retrain_share: float = 0.2
    keep_versions: int = 3
    # Shopper events (SQLite, WAL): the store URL; relative sqlite paths are relative to the working dir.
    events_url: str = "sqlite:///instance/events.db"
    # Where an admin rebuild may read catalogs from (``catalog_dirs``; comma-separated in the environment).
    # Empty: the folder of the catalog the current version was built from, and ``data/``.
    catalog_dirs: tuple[Path, ...] = ()
    # HTTP. Keys of the scopes: read (shopper data), ingest (events), admin (everything). Unset: scope off.
    admin_key: str | None = None
    ingest_key: str | None = None
    read_key: str | None = None
    ads_key: str | None = None  # sponsored products: campaigns, reports, charging clicks (engine.ads)
    # The shop's secret for signed shopper tokens (see engine.tokens); unset: no tokens are accepted.
    shopper_secret: str | None = None
    # The storefront's "shopping as" menu of real shoppers: a demo feature (``make demo`` turns it on).
    demo_shopper_menu: bool = False
    # Events from storefront sessions and shopper tokens (not from the ingest key): token buckets per
    # session and per client IP, shared by every worker (``limits_path``; in the event store's database when
    # ``events_url`` is PostgreSQL, shared by every machine); over the limit: 429.
    events_per_second_session: float = 5.0
    events_burst_session: int = 40
    events_per_second_ip: float = 20.0
    events_burst_ip: int = 200
    limits_path: Path = Path("instance/limits.db")
    # The server logs an impression for every list it answers (engine.learn.impressions), kept this long.
    log_impressions: bool = True
    impression_retention_days: float = 30.0
    impression_flush_seconds: float = 0.5  # how often the spooled impressions are written to the store
    # `vitrine serve`: "process" stores the spooled impressions (and computes their deferred features) in a
    # writer process of its own, off the workers' GIL; "thread" in a thread of each worker.
    impressions_writer: str = "process"
    # An outcome event without a request_id is joined to the shopper's latest impression of that item logged
    # at most this long before it (engine.learn.attribution).
    attribution_window_minutes: float = 30.0
    # Behaviour analytics (engine.analytics): the epsilon each key may spend per UTC day on reports asked
    # with dp_epsilon (sequential composition; refused with 429 once spent).
    dp_daily_budget: float = 10.0
    # The server copies the event store for analytics in the background at start-up (the first copy of 10M
    # events takes minutes); a report asked meanwhile waits this long, then gets 503 warming_up.
    analytics_warm: bool = True
    analytics_warm_wait_seconds: float = 5.0
    # Exploration per surface (engine.learn.policy): "0" is deterministic (as before); "epsilon:0.1" or
    # "softmax:0.5" (Plackett-Luce temperature), optionally with ",positions=5,pool=50,cold_share=0.1"; or a
    # TOML table with those keys. Every shown item's propensity is then logged in its impression.
    explore_search: Any = "0"
    explore_recommend: Any = "0"
    explore_similar: Any = "0"
    # What chooses the strategy of a shopper's recommendations (engine.learn.online): "blend" (none, the
    # tuned blend), a bandit ("epsilon", "linucb", "thompson", "beta") learning online from the lists'
    # outcomes, or "qlearning" (the Q table trained by `vitrine train qlearning`).
    strategy_policy: str = "blend"
    # Settings of that policy: epsilon, alpha (LinUCB), v (linear Thompson), lambda, gamma (Q-learning).
    strategy_epsilon: float = 0.1
    strategy_alpha: float = 1.0
    # Sponsored products (engine.ads): the display positions of search's ad slots ("1,5"), the reserve price
    # (minor units), the relevance floor (the vector score of an ad's item against the query) and the window
    # in which a shopper's repeated click on the same ad is not charged again.
    ads_search_slots: str = "1,5"
    ads_similar_slots: str = "6"  # the item page's similar strip ("" = no ads there)
    ads_recommend_slots: str = "2"  # a shopper's recommendations ("" = no ads there)
    ads_reserve: int = 5
    ads_relevance_floor: float = 0.35
    # An ad takes a position only if at least as relevant as the organic result it sits above (off by default:
    # with organic results ranked by relevance it leaves almost no ad; see README, "Sponsored products").
    ads_match_organic: bool = False
    ads_click_window_minutes: float = 10.0
    # An ad's rank score is predicted CTR x bid x relevance ** power: more relevant ads win more often and pay
    # less (0 ranks on CTR x bid alone). 1 was chosen on simulation seeds 1 and 2 (README, "Sponsored products").
    ads_relevance_power: float = 1.0
    # The pacers plan to spend a constrained budget by this fraction of the day (0.9: about 21:36 UTC): the
    # quiet last hours are slack for a campaign that fell behind, instead of a shortfall at midnight.
    ads_pacing_finish: float = 0.9
    # A pacer counts spend up to this many clicks (at the campaign's bid) ahead of its plan as on plan: a
    # budget of a few dozen clicks moves by a whole click at a time, and throttling on one early click loses
    # traffic a campaign with little more demand than budget never wins back (README, "Sponsored products").
    ads_pacing_tolerance: float = 2.0
    # Shopper questions (engine.qa): a past answer is shown only if its calibrated probability of answering the
    # question is at least this; below it the API says "no good answer". Chosen on the tune half by
    # `vitrine eval qa` (README, "Shopper questions"); 0 shows the best answers whatever their score.
    qa_min_score: float = 0.43
    # Differentially private trending (engine.recommend.live): 0 is off; else the epsilon of each hourly release,
    # with each shopper's first ``trending_dp_items`` items counted (README, "Privacy").
    trending_dp_epsilon: float = 0.0
    trending_dp_items: int = 5
    # Reward of an outcome on a list, for the bandits and Q-learning.
    reward_click: float = 1.0
    reward_cart: float = 3.0
    reward_purchase: float = 5.0
    # Browser sessions (storefront shopper, admin page): cookies are signed with ``secret_key``, else with
    # a random key kept in ``secret_key_file`` (created on first use, shared by every worker).
    secret_key: str | None = None
    secret_key_file: str = "instance/secret_key"
    # The storefront pages may record their session shopper's own events (no ingest key in the browser).
    storefront_events: bool = True
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    threads: int = 8
    reload_check_seconds: float = 0.5
    torch_threads: int = 1
    # OpenMP threads of one FAISS search in the server: 1, since requests already run in parallel and
    # idle OpenMP threads spin on the cores (a 100k profile search measured 8.0 ms with 2, 3.6 ms with 1).
    faiss_threads: int = 1
    # Threads of numpy's BLAS in the server: 1, for the same reason. The ranker's products are small (100
    # candidates by a 160-wide layer) and two threads waiting on each other cost far more than they share:
    # the search MLP took 7.9 ms p50 with 2 threads on a loaded machine, 0.09 ms with 1.
    blas_threads: int = 1
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def need(cond: bool, key: str, msg: str) -> None:
            if not cond:
                raise ConfigError(f"{key}: {msg}")

        need(isinstance(self.encoder, EncoderKind), "encoder", f"must be one of {_values(EncoderKind)}")
        need(1 <= self.default_k <= self.max_k, "default_k", f"must be in 1..max_k ({self.max_k})")
        need(1 <= self.max_k <= 1000, "max_k", "must be in 1..1000")
        need(self.max_offset >= 0, "max_offset", "must be >= 0")
        need(self.candidate_pool >= self.max_k, "candidate_pool", "must be >= max_k")
        need(0.0 <= self.hybrid_weight <= 1.0, "hybrid_weight", "must be in 0..1")
        need(0.0 <= self.personalize <= 1.0, "personalize", "must be in 0..1")
        need(isinstance(self.fusion, Fusion), "fusion", f"must be one of {_values(Fusion)}")
        need(self.approx_threshold >= 1000, "approx_threshold", "must be >= 1000")
        need(self.ivf_nprobe >= 1, "ivf_nprobe", "must be >= 1")
        need(0.0 < self.target_recall <= 1.0, "target_recall", "must be in (0, 1]")
        need(8.0 <= self.index_bytes_per_item <= 1_000_000.0, "index_bytes_per_item",
             f"must be in 8..1000000 bytes, got {self.index_bytes_per_item}")
        need(0.0 <= self.ivf_retrain_share <= 1.0, "ivf_retrain_share", "must be in 0..1")
        need(self.keep_versions >= 2, "keep_versions", "must be >= 2 (rollback needs one earlier version)")
        need(1 <= self.port <= 65535, "port", "must be in 1..65535")
        need(self.workers >= 1 and self.threads >= 1, "workers", "workers and threads must be >= 1")
        need(self.encode_batch_size >= 1, "encode_batch_size", "must be >= 1")
        need(self.torch_threads >= 1, "torch_threads", "must be >= 1")
        need(self.faiss_threads >= 1, "faiss_threads", "must be >= 1")
        need(self.blas_threads >= 1, "blas_threads", "must be >= 1")
        need(self.secret_key is None or len(self.secret_key) >= 16, "secret_key", "must be at least 16 characters")
        need(self.admin_key is None or len(self.admin_key) >= 8, "admin_key", "must be at least 8 characters")
        for name in ("ingest_key", "read_key", "ads_key"):
            value = getattr(self, name)
            need(value is None or len(value) >= 8, name, "must be at least 8 characters")
        keys = [k for k in (self.admin_key, self.ingest_key, self.read_key, self.ads_key) if k]
        need(len(keys) == len(set(keys)), "ingest_key",
             "admin_key, ingest_key, read_key and ads_key must differ (separate scopes)")
        need(self.shopper_secret is None or len(self.shopper_secret) >= 16, "shopper_secret",
             "must be at least 16 characters")
        for name in ("events_per_second_session", "events_per_second_ip"):
            need(getattr(self, name) > 0, name, "must be > 0")
        need(self.impression_retention_days > 0, "impression_retention_days", "must be > 0")
        need(self.impression_flush_seconds > 0, "impression_flush_seconds", "must be > 0")
        need(self.impressions_writer in ("process", "thread"), "impressions_writer", "must be process or thread")
        need(self.attribution_window_minutes > 0, "attribution_window_minutes", "must be > 0")
        need(0 < self.dp_daily_budget <= 1000, "dp_daily_budget", f"must be in (0, 1000], got {self.dp_daily_budget}")
        need(0 <= self.analytics_warm_wait_seconds <= 60, "analytics_warm_wait_seconds",
             f"must be in [0, 60], got {self.analytics_warm_wait_seconds}")
        need(self.strategy_policy in STRATEGY_POLICIES, "strategy_policy",
             f"must be one of {', '.join(STRATEGY_POLICIES)}, got {self.strategy_policy!r}")
        need(0.0 <= self.strategy_epsilon <= 1.0, "strategy_epsilon", f"must be in 0..1, got {self.strategy_epsilon}")
        need(self.strategy_alpha >= 0.0, "strategy_alpha", f"must be >= 0, got {self.strategy_alpha}")
        for name in ("ads_search_slots", "ads_similar_slots", "ads_recommend_slots"):
            slots = self.slots(name)
            text = str(getattr(self, name)).strip()
            need((not text and name != "ads_search_slots") or (
                bool(slots) and list(slots) == sorted(set(slots)) and slots[0] >= 1 and slots[-1] <= 1000),
                name, f"must be increasing positions in 1..1000, e.g. '1,5', got {getattr(self, name)!r}")
        need(self.ads_reserve >= 0, "ads_reserve", f"must be >= 0 minor units, got {self.ads_reserve}")
        need(-1.0 <= self.ads_relevance_floor <= 1.0, "ads_relevance_floor", "must be in -1..1 (a cosine)")
        need(self.ads_click_window_minutes >= 0, "ads_click_window_minutes", "must be >= 0")
        need(0.0 <= self.ads_relevance_power <= 10.0, "ads_relevance_power", "must be in 0..10")
        need(self.trending_dp_epsilon == 0.0 or 0.01 <= self.trending_dp_epsilon <= 10.0, "trending_dp_epsilon",
             "must be 0 (off) or in 0.01..10")
        need(1 <= self.trending_dp_items <= 10_000, "trending_dp_items", "must be in 1..10000")
        need(0.5 <= self.ads_pacing_finish <= 1.0, "ads_pacing_finish", "must be a fraction of the day in 0.5..1")
        need(0.0 <= self.ads_pacing_tolerance <= 100.0, "ads_pacing_tolerance", "must be in 0..100 (clicks)")
        need(0.0 <= self.qa_min_score <= 1.0, "qa_min_score", f"must be a probability in 0..1, got {self.qa_min_score}")
        for name in ("reward_click", "reward_cart", "reward_purchase"):
            need(getattr(self, name) >= 0.0, name, f"must be >= 0, got {getattr(self, name)}")
        for name in ("events_burst_session", "events_burst_ip"):
            need(getattr(self, name) >= 1, name, "must be >= 1")

    @property
    def ad_slots(self) -> tuple[int, ...]:
        """``ads_search_slots`` as positions."""
        return self.slots("ads_search_slots")

    def slots(self, name: str) -> tuple[int, ...]:
        """An ``ads_*_slots`` setting as positions (empty when it cannot be read; validation names the key)."""
        try:
            return tuple(int(x) for x in str(getattr(self, name)).split(",") if x.strip())
        except ValueError:
            return ()

    @property
    def models_path(self) -> Path:
        return self.models_dir or self.index_dir / "models"

    @property
    def rankers_path(self) -> Path:
        return self.ranker_dir or self.index_dir / "rankers"

    @classmethod
    def load(
        cls,
        file: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> "EngineConfig":
        """Defaults, then the TOML file (``file``, ``$VITRINE_CONFIG`` or ``./vitrine.toml`` if present),
        then ``VITRINE_<KEY>`` environment variables, then ``overrides``; validated once at the end."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        path = Path(file) if file else Path(env.get(CONFIG_FILE_ENV, DEFAULT_CONFIG_FILE))
        if file or CONFIG_FILE_ENV in env or path.exists():
            if not path.exists():
                raise ConfigError(f"config file {path} does not exist")
            with path.open("rb") as fh:
                try:
                    data = tomllib.load(fh)
                except tomllib.TOMLDecodeError as e:
                    raise ConfigError(f"config file {path}: {e}") from e
            values.update(data.get("vitrine", data))
        known = {f.name: f for f in fields(cls)}
        for key, raw in env.items():
            if key.startswith(ENV_PREFIX) and key != CONFIG_FILE_ENV:
                name = key[len(ENV_PREFIX):].lower()
                if name in known:
                    values[name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
        return cls(**{k: _coerce(k, known[k].type, v) for k, v in values.items()})

    def replace(self, **changes: Any) -> "EngineConfig":
        return dataclasses.replace(self, **changes)


def _values(enum: type[Enum]) -> str:
    return ", ".join(str(e.value) for e in enum)


_ENUMS: dict[str, type[Enum]] = {"EncoderKind": EncoderKind, "Fusion": Fusion}


def _coerce(key: str, type_name: Any, value: Any) -> Any:
    t = str(type_name)
    try:
        if t in _ENUMS:
            enum = _ENUMS[t]
            try:
                return enum(value)
            except ValueError:
                raise ConfigError(f"{key}: must be one of {_values(enum)}, got {value!r}") from None
        if t == "tuple[Path, ...]":
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(Path(str(v).strip()) for v in items if str(v).strip())
        if t.startswith("Path"):
            return None if value in (None, "") else Path(value)
        if t == "int":
            return int(value)
        if t == "float":
            return float(value)
        if t == "str | None":
            return None if value in (None, "") else str(value)
        if t == "str":
            return str(value)
        if t == "bool" and not isinstance(value, bool):
            return parse_bool(str(value))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{key}: cannot read {value!r} as {t}") from e
    return value
