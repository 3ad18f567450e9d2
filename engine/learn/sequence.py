"""A next-item sequence model whose score is one of the recommendation ranker's features.

The model reads a shopper's recent items in order and scores every candidate as their next item. It is
SASRec's design (Kang and McAuley 2018: a causal transformer over the item sequence, the last position's
output dotted with the item embeddings) with the items embedded from their text: an item's embedding is
``W x + b`` of its MiniLM vector ``x`` plus, optionally, a learned per-item vector (``ids``). An item the
model never saw in training (a new product) still gets a score from its text.

- Architecture (:class:`SeqConfig`): ``dim`` 64, ``layers`` 2 pre-norm transformer layers with ``heads``
  2, a ReLU feed-forward of ``2 * dim``, learned positions over the last ``maxlen`` (20) items (the newest
  always at the last position), a final LayerNorm.
- Training (:func:`train_seq`, torch, imported there only): every prefix of every training sequence
  predicts its next item, full softmax cross-entropy over all the items, Adam, ``epochs`` fixed (chosen on
  Scientific validation: past about 25 epochs the model over-fits), dropout ``dropout``, seeded.
- Serving (:class:`SeqModel`): the exported weights run in numpy, a few hundred microseconds for one
  shopper and 100 candidates; the offline bootstrap scores its training lists with the same numpy code.

The model is saved inside the ranker's ``weights.npz`` (arrays prefixed ``seq.``), so a published ranker
and the sequence model its ``seq`` feature came from are one version (see :mod:`engine.learn.model`).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np

PREFIX = "seq."
LN_EPS = 1e-5


class SeqModelError(ValueError):
    """Sequence-model arrays that cannot be served (missing, mis-shaped or non-finite)."""


@dataclass(frozen=True)
class SeqConfig:
    dim: int = 64
    layers: int = 1  # 2 layers: validation R@10 0.093 alone, against 0.104 for 1 (README)
    heads: int = 2
    maxlen: int = 20
    dropout: float = 0.2
    epochs: int = 25
    lr: float = 2e-3
    batch_size: int = 256
    ids: bool = True  # a learned vector per training item on top of its text embedding
    seed: int = 0
    threads: int = 2


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = x - np.add.reduce(x, axis=-1, keepdims=True) * (1.0 / x.shape[-1])
    var = np.add.reduce(d * d, axis=-1, keepdims=True) * (1.0 / x.shape[-1])
    out: np.ndarray = d / np.sqrt(var + LN_EPS) * w + b
    return out


LAYER_KEYS = ("in_w", "in_b", "out_w", "out_b", "ln1_w", "ln1_b", "ln2_w", "ln2_b", "ff1_w", "ff1_b", "ff2_w", "ff2_b")


@dataclass
class SeqModel:
    """The exported sequence model (float32 arrays, torch's layouts: ``Linear`` weights are (out, in))."""

    heads: int
    proj_w: np.ndarray  # (dim, d_text)
    proj_b: np.ndarray  # (dim,)
    pos: np.ndarray  # (maxlen, dim)
    layers: list[dict[str, np.ndarray]]
    ln_w: np.ndarray
    ln_b: np.ndarray
    item_ids: tuple[str, ...] = ()  # the training items with a learned vector ("ids"), in id_emb's order
    id_emb: np.ndarray | None = None  # (len(item_ids), dim)
    info: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        self._row = {i: r for r, i in enumerate(self.item_ids)}
        self._fast: list[dict[str, np.ndarray]] | None = None  # state's transposed weights, made on first use
        self._masks: dict[int, np.ndarray] = {}

    @property
    def dim(self) -> int:
        return int(self.proj_w.shape[0])

    @property
    def maxlen(self) -> int:
        return int(self.pos.shape[0])

    # -- scoring ----------------------------------------------------------------------------------
    def embed(self, vectors: np.ndarray, ids: Sequence[str] | None = None) -> np.ndarray:
        """``(m, dim)`` embeddings of items given their text vectors ``(m, d_text)`` and ids (an id without
        a learned vector, or no ids, gets the text part alone)."""
        e = np.asarray(vectors, np.float32) @ self.proj_w.T + self.proj_b
        if self.id_emb is not None and ids is not None and len(ids):
            rows = np.fromiter((self._row.get(i, -1) for i in ids), np.int64, len(ids))
            known = rows >= 0
            if known.any():
                e[known] += self.id_emb[rows[known]]
        return np.asarray(e, np.float32)

    def scores(self, hist_vectors: np.ndarray, hist_ids: Sequence[str], cand_vectors: np.ndarray,
               cand_ids: Sequence[str]) -> np.ndarray:
        """``(m,)`` float64: how strongly the model expects each candidate next after this history (oldest
        first); zeros for an empty history."""
        h = self.embed(np.asarray(hist_vectors)[-self.maxlen:], list(hist_ids)[-self.maxlen:])
        if not len(h):
            return np.zeros(len(cand_vectors), np.float64)
        return np.asarray(self.embed(cand_vectors, cand_ids) @ self.state(h), np.float64)

    def state(self, h: np.ndarray) -> np.ndarray:
        """``(dim,)``: the last position's output after one non-empty history of ``t <= maxlen`` item
        embeddings (:meth:`embed`, oldest first). The one forward pass, for serving and offline rows alike:
        no padding (training pads on the left, and masks the padding out), and in the last layer the last
        position only."""
        t, D, H = len(h), self.dim, self.heads
        dh = D // H
        if self._fast is None:
            self._fast = [{"q_w": np.ascontiguousarray(p["in_w"][:D].T / math.sqrt(dh)),
                           "q_b": p["in_b"][:D] / math.sqrt(dh), "kv_w": np.ascontiguousarray(p["in_w"][D:].T),
                           "kv_b": p["in_b"][D:], "out_w": np.ascontiguousarray(p["out_w"].T),
                           "ff1_w": np.ascontiguousarray(p["ff1_w"].T), "ff2_w": np.ascontiguousarray(p["ff2_w"].T)}
                          for p in self.layers]
        neg = self._masks.get(t)
        if neg is None:
            neg = self._masks[t] = np.where(np.triu(np.ones((t, t), bool), 1), -np.inf, 0.0).astype(np.float32)
        x = h + self.pos[self.maxlen - t:]
        for i, (p, w) in enumerate(zip(self.layers, self._fast)):
            a = _layer_norm(x, p["ln1_w"], p["ln1_b"])
            if i == len(self.layers) - 1:  # only the last position's output is wanted
                x, neg = x[-1:], neg[-1:]
                q = (a[-1:] @ w["q_w"] + w["q_b"]).reshape(1, H, dh).transpose(1, 0, 2)
            else:
                q = (a @ w["q_w"] + w["q_b"]).reshape(t, H, dh).transpose(1, 0, 2)
            kv = (a @ w["kv_w"] + w["kv_b"]).reshape(t, 2, H, dh)
            k, v = kv[:, 0].transpose(1, 2, 0), kv[:, 1].transpose(1, 0, 2)
            sc = q @ k + neg
            sc = np.exp(sc - sc.max(axis=-1, keepdims=True))
            sc /= sc.sum(axis=-1, keepdims=True)
            o = (sc @ v).transpose(1, 0, 2).reshape(len(x), D)
            x = x + (o @ w["out_w"] + p["out_b"])
            f = _layer_norm(x, p["ln2_w"], p["ln2_b"])
            x = x + (np.maximum(f @ w["ff1_w"] + p["ff1_b"], 0.0) @ w["ff2_w"] + p["ff2_b"])
        return np.asarray(_layer_norm(x[-1], self.ln_w, self.ln_b), np.float32)

    # -- storage ----------------------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        out = {"proj_w": self.proj_w, "proj_b": self.proj_b, "pos": self.pos, "ln_w": self.ln_w, "ln_b": self.ln_b,
               "heads": np.array(self.heads, np.int64)}
        for i, p in enumerate(self.layers):
            out.update({f"l{i}.{k}": p[k] for k in LAYER_KEYS})
        if self.id_emb is not None:
            out["id_emb"] = self.id_emb
            out["item_ids"] = np.array(self.item_ids, dtype=str)
        return {PREFIX + k: v for k, v in out.items()}

    @classmethod
    def from_arrays(cls, data: Mapping[str, np.ndarray]) -> "SeqModel | None":
        """The model saved by :meth:`arrays` in ``data`` (other keys ignored), or None when there is none.
        Raises :class:`SeqModelError` naming what is wrong."""
        a = {k[len(PREFIX):]: v for k, v in data.items() if k.startswith(PREFIX)}
        if not a:
            return None
        try:
            f32 = {k: np.asarray(v, np.float32) for k, v in a.items() if k not in ("heads", "item_ids")}
            n = 0
            while f"l{n}.in_w" in f32:
                n += 1
            layers = [{k: f32[f"l{i}.{k}"] for k in LAYER_KEYS} for i in range(n)]
            model = cls(int(a["heads"]), f32["proj_w"], f32["proj_b"], f32["pos"], layers, f32["ln_w"], f32["ln_b"],
                        tuple(str(x) for x in a["item_ids"]) if "id_emb" in f32 else (), f32.get("id_emb"))
        except (KeyError, TypeError, ValueError) as e:
            raise SeqModelError(f"the sequence model lacks or mis-stores {e}") from e
        model.check()
        return model

    def check(self) -> None:
        D = self.dim
        if not self.layers:
            raise SeqModelError("the sequence model has no layers")
        if self.heads < 1 or D % self.heads:
            raise SeqModelError(f"{self.heads} heads do not divide the width {D}")
        shapes = {"in_w": (3 * D, D), "in_b": (3 * D,), "out_w": (D, D), "out_b": (D,), "ln1_w": (D,),
                  "ln1_b": (D,), "ln2_w": (D,), "ln2_b": (D,), "ff1_b": (self.layers[0]["ff1_w"].shape[0],)}
        for i, p in enumerate(self.layers):
            hidden = p["ff1_w"].shape[0]
            want = {**shapes, "ff1_w": (hidden, D), "ff1_b": (hidden,), "ff2_w": (D, hidden), "ff2_b": (D,)}
            for k, shape in want.items():
                if p[k].shape != shape:
                    raise SeqModelError(f"sequence layer {i} {k} has shape {p[k].shape}, not {shape}")
        if self.proj_b.shape != (D,) or self.pos.ndim != 2 or self.pos.shape[1] != D or self.ln_w.shape != (D,) \
                or self.ln_b.shape != (D,):
            raise SeqModelError("the sequence model's projection, positions or norm do not match its width")
        if self.id_emb is not None and self.id_emb.shape != (len(self.item_ids), D):
            raise SeqModelError("the sequence model's item vectors do not match its item ids")
        arrays = [self.proj_w, self.proj_b, self.pos, self.ln_w, self.ln_b] + [v for p in self.layers for v in p.values()]
        if self.id_emb is not None:
            arrays.append(self.id_emb)
        if not all(np.isfinite(x).all() for x in arrays):
            raise SeqModelError("the sequence model holds non-finite weights")

    def describe(self) -> dict[str, Any]:
        return {"dim": self.dim, "layers": len(self.layers), "heads": self.heads, "maxlen": self.maxlen,
                "item_vectors": len(self.item_ids), **dict(self.info or {})}


def score_matrix(model: SeqModel, hists: Sequence[np.ndarray], vectors: np.ndarray, ids: Sequence[str],
                 batch: int = 1024) -> np.ndarray:
    """``(users, n)`` float32: every item's score after each history (catalog rows of ``vectors`` / ``ids``),
    through :meth:`SeqModel.state` as serving does, in batches (offline rows, evals)."""
    items = model.embed(vectors, ids)
    out = np.zeros((len(hists), len(items)), np.float32)
    for lo in range(0, len(hists), batch):
        part = [np.asarray(h, np.int64)[-model.maxlen:] for h in hists[lo:lo + batch]]
        full = [i for i, h in enumerate(part) if len(h)]  # an empty history scores 0 everywhere
        if full:
            out[lo + np.array(full)] = np.stack([model.state(items[part[i]]) for i in full]) @ items.T
    return out


def train_seq(seqs: Sequence[np.ndarray], vectors: np.ndarray, ids: Sequence[str],
              config: SeqConfig | None = None) -> SeqModel:
    """Train on ``seqs`` (each a shopper's item rows into ``vectors`` / ``ids``, oldest first; those shorter
    than 2 teach nothing and are skipped) and export the model. Reproducible: seeded, with torch's
    deterministic algorithms (:func:`engine.learn.train.reproducible`)."""
    from engine.learn.train import reproducible

    cfg = config or SeqConfig()
    with reproducible(cfg.seed, cfg.threads):
        return _train_seq(seqs, vectors, ids, cfg)


def _train_seq(seqs: Sequence[np.ndarray], vectors: np.ndarray, ids: Sequence[str], cfg: SeqConfig) -> SeqModel:
    import torch

    t0 = time.time()
    rng = np.random.default_rng(cfg.seed)
    n = len(vectors)
    D, L = cfg.dim, cfg.maxlen
    V = torch.from_numpy(np.array(vectors, np.float32))  # a copy: the snapshot's vectors are read-only

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(V.shape[1], D)
            self.idemb = torch.nn.Parameter(torch.randn(n, D) * 0.02) if cfg.ids else None
            self.pos = torch.nn.Embedding(L, D)
            layer = torch.nn.TransformerEncoderLayer(D, cfg.heads, 2 * D, dropout=cfg.dropout, batch_first=True,
                                                     norm_first=True)
            self.enc = torch.nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
            self.ln = torch.nn.LayerNorm(D)
            self.drop = torch.nn.Dropout(cfg.dropout)

        def items(self) -> Any:
            e = self.proj(V)
            return e + self.idemb if self.idemb is not None else e

        def forward(self, seq: Any) -> tuple[Any, Any]:
            e = self.items()
            x = torch.cat([e, torch.zeros(1, D)], 0)[seq] + self.pos.weight[None]
            pad = seq == n
            causal = torch.triu(torch.ones(L, L, dtype=torch.bool), 1)
            mask = (causal[None] | pad[:, None, :]) & ~torch.eye(L, dtype=torch.bool)[None]
            h = self.enc(self.drop(x), mask=mask.repeat_interleave(cfg.heads, 0))
            return self.ln(h), e

    def padded(rows: list[np.ndarray]) -> Any:
        out = np.full((len(rows), L), n, np.int64)
        for i, s in enumerate(rows):
            s = s[-L:]
            if len(s):
                out[i, L - len(s):] = s
        return torch.from_numpy(out)

    usable = [np.asarray(s, np.int64) for s in seqs if len(s) >= 2]
    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    inp, tgt = padded([s[:-1] for s in usable]), padded([s[1:] for s in usable])
    losses = []
    for _ in range(cfg.epochs if usable else 0):
        net.train()
        perm = torch.from_numpy(rng.permutation(len(usable)))
        total = 0.0
        for lo in range(0, len(usable), cfg.batch_size):
            idx = perm[lo:lo + cfg.batch_size]
            h, e = net(inp[idx])
            t = tgt[idx]
            ok = t != n
            loss = torch.nn.functional.cross_entropy(h[ok] @ e.T, t[ok])
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            total += float(loss.detach()) * len(idx)
        losses.append(round(total / len(usable), 4))
    sd = {k: v.detach().numpy().astype(np.float32).copy() for k, v in net.state_dict().items()}
    layers = [{"in_w": sd[f"enc.layers.{i}.self_attn.in_proj_weight"], "in_b": sd[f"enc.layers.{i}.self_attn.in_proj_bias"],
               "out_w": sd[f"enc.layers.{i}.self_attn.out_proj.weight"], "out_b": sd[f"enc.layers.{i}.self_attn.out_proj.bias"],
               "ln1_w": sd[f"enc.layers.{i}.norm1.weight"], "ln1_b": sd[f"enc.layers.{i}.norm1.bias"],
               "ln2_w": sd[f"enc.layers.{i}.norm2.weight"], "ln2_b": sd[f"enc.layers.{i}.norm2.bias"],
               "ff1_w": sd[f"enc.layers.{i}.linear1.weight"], "ff1_b": sd[f"enc.layers.{i}.linear1.bias"],
               "ff2_w": sd[f"enc.layers.{i}.linear2.weight"], "ff2_b": sd[f"enc.layers.{i}.linear2.bias"]}
              for i in range(cfg.layers)]
    model = SeqModel(cfg.heads, sd["proj.weight"], sd["proj.bias"], sd["pos.weight"], layers, sd["ln.weight"],
                     sd["ln.bias"], tuple(str(i) for i in ids) if cfg.ids else (), sd.get("idemb"))
    model.check()
    # The export is checked against torch itself on up to 256 training prefixes: numpy must agree.
    net.eval()
    sample = usable[:256]
    diff = 0.0
    if sample:
        with torch.no_grad():
            h, e = net(padded([s[:-1] for s in sample]))
            want = (h[:, -1] @ e.T).numpy()
        got = score_matrix(model, [s[:-1] for s in sample], vectors, ids)
        diff = float(np.abs(got - want).max())
        if not diff <= 1e-3 * max(1.0, float(np.abs(want).max())):
            raise SeqModelError(f"the numpy export disagrees with torch by {diff:.2e}")
    model.info = {"config": asdict(cfg), "sequences": len(usable), "items": n,
                  "train_loss": losses[-1] if losses else None, "export_max_diff": diff,
                  "seconds": round(time.time() - t0, 1)}
    return model
