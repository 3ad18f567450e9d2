"""Fine-tuning MiniLM's top transformer layers for answer ranking (torch: training only, never serving).

Why the top layers only: a full fine-tune of MiniLM on this 2-core machine takes about 7 minutes an epoch
without load; with the lower layers frozen, their output for every text is computed once and only the
top ``layers`` (1.8M of 22.7M weights each) are trained. On the tune half of the Appliances QA set (trained
on one part, measured on the other, 3 epochs): the last layer alone reached the full fine-tune's held-out
MRR (0.731 against 0.732 for one full epoch), the last two 0.734 (against 0.731 for one).

Training: in-batch softmax (InfoNCE, temperature 0.05) of each question against its answer, the other
answers of the batch, and one other answer of the same product per question (a hard negative: the eval
ranks answers of the same product). AdamW with a short warm-up and a linear decay, fixed seeds.

The result is a plain artifact, ``top_layer.npz``: the layers' weights (as int8 differences from MiniLM's,
about 1.7 MB a layer) named
``layer.<i>.<BertLayer.state_dict() name>``, ``i`` the layer's index in ``encoder.layer`` (a file of one
layer's bare ``BertLayer`` names, the first format, means the last layer);
:func:`engine.embedding.onnx_encoder.export_onnx` puts them into an ONNX export (``top_layer=``), which
serves questions and stored answers alike.
"""
from __future__ import annotations

import copy
import logging
import random
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)
MAX_LEN = 256


def _states(model: Any, texts: Sequence[str], layers: int, batch: int = 64) -> list[Any]:
    """The frozen layers' output (input of the top ``layers``) of each text, float16, unpadded."""
    import torch

    bert: Any = model[0].auto_model
    tok = model.tokenizer
    out: list[Any] = [None] * len(texts)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    with torch.no_grad():
        for b in range(0, len(order), batch):
            rows = order[b:b + batch]
            enc = tok([texts[i] for i in rows], padding=True, truncation=True, max_length=MAX_LEN, return_tensors="pt")
            hidden = bert(**enc, output_hidden_states=True).hidden_states[-1 - layers]
            for j, i in enumerate(rows):
                n = int(enc["attention_mask"][j].sum())
                out[i] = hidden[j, :n].to(torch.float16).clone()
    return out


def _run(stack: Any, states: Sequence[Any]) -> Any:
    """Mean-pooled, normalised output of the layers of ``stack`` over padded ``states``."""
    import torch

    t = max(int(h.shape[0]) for h in states)
    x = torch.zeros(len(states), t, states[0].shape[1])
    mask = torch.zeros(len(states), t)
    for j, h in enumerate(states):
        x[j, :h.shape[0]] = h.float()
        mask[j, :h.shape[0]] = 1
    add = (1.0 - mask[:, None, None, :]) * torch.finfo(torch.float32).min
    y = x
    for layer in stack:
        y = layer(y, attention_mask=add)
        y = y[0] if isinstance(y, tuple) else y
    return torch.nn.functional.normalize((y * mask[:, :, None]).sum(1) / mask.sum(1, keepdim=True), dim=1)


def finetune_top_layer(questions: Sequence[str], answers: Sequence[str], groups: Sequence[str], train: Sequence[int],
                       *, epochs: int = 3, lr: float = 5e-5, temperature: float = 0.05, batch: int = 64,
                       layers: int = 1, seed: int = 0, model_path: str | None = None,
                       on_epoch: Callable[[int, Any], None] | None = None) -> dict[str, np.ndarray]:
    """Train the top ``layers`` on the pairs ``train`` (indices into ``questions``/``answers``; ``groups[i]``
    is pair i's product) and return their weights (float32 arrays named as the module docstring says).
    ``on_epoch(epoch, encode)`` is called after each epoch with a function that embeds texts so far."""
    import torch
    from sentence_transformers import SentenceTransformer

    from engine.embedding.st import default_model_path, quiet_transformers

    torch.manual_seed(seed)
    rng = random.Random(seed)
    with quiet_transformers():
        model = SentenceTransformer(str(model_path or default_model_path()), device="cpu").eval()
    started = time.perf_counter()
    hq, ha = _states(model, questions, layers), _states(model, answers, layers)
    log.info("qa fine-tune: frozen layers' output of %d texts in %.0f s", len(hq) + len(ha),
             time.perf_counter() - started)
    bert: Any = model[0].auto_model
    first = len(bert.encoder.layer) - layers
    layer: Any = torch.nn.ModuleList([copy.deepcopy(m) for m in bert.encoder.layer[first:]])
    train_set = set(train)
    by_group: dict[str, list[int]] = {}
    for i in train:
        by_group.setdefault(groups[i], []).append(i)
    opt = torch.optim.AdamW(layer.parameters(), lr=lr, weight_decay=0.01)
    total = epochs * ((len(train) + batch - 1) // batch)
    step = 0

    def encode(which: str, rows: Sequence[int]) -> np.ndarray:
        states = hq if which == "q" else ha
        layer.eval()
        out = np.zeros((len(rows), states[0].shape[1]), np.float32)
        order = sorted(range(len(rows)), key=lambda j: int(states[rows[j]].shape[0]))
        with torch.no_grad():
            for b in range(0, len(order), 128):
                part = order[b:b + 128]
                out[part] = _run(layer, [states[rows[j]] for j in part]).numpy()
        return out

    for epoch in range(epochs):
        layer.train()
        order = list(train)
        rng.shuffle(order)
        for b in range(0, len(order), batch):
            rows = order[b:b + batch]
            negatives = []
            for i in rows:
                others = [k for k in by_group[groups[i]] if k != i and k in train_set]
                if others:
                    negatives.append(rng.choice(others))
            q = _run(layer, [hq[i] for i in rows])
            a = _run(layer, [ha[i] for i in rows + negatives])
            loss = torch.nn.functional.cross_entropy(q @ a.T / temperature, torch.arange(len(rows)))
            for g in opt.param_groups:
                g["lr"] = lr * min(1.0, (step + 1) / 10) * (1 - step / total)
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            step += 1
        log.info("qa fine-tune: epoch %d done (%.0f s)", epoch + 1, time.perf_counter() - started)
        if on_epoch is not None:
            on_epoch(epoch, encode)
    return {f"layer.{first + int(k.split('.', 1)[0])}.{k.split('.', 1)[1]}": v.detach().numpy().astype(np.float32)
            for k, v in layer.state_dict().items()}



def save_top_layer(weights: dict[str, np.ndarray], path: Path, meta: dict[str, Any]) -> Path:
    """Write ``weights`` (``top_layer.npz``, no pickle; as differences from MiniLM's, see
    :func:`engine.embedding.onnx_encoder.save_layers`) with ``meta`` as JSON beside them."""
    import json

    from engine.embedding.onnx_encoder import save_layers

    save_layers(weights, path)
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return path


def load_top_layer(path: Path) -> dict[str, np.ndarray]:
    """The weights saved by :func:`save_top_layer`, as float32."""
    from engine.embedding.onnx_encoder import load_layers

    return load_layers(path)
