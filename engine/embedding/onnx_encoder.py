"""all-MiniLM-L6-v2 as an fp32 ONNX graph run by onnxruntime: same vectors as torch, faster on CPU.

``export_onnx`` traces the packaged weights once (legacy TorchScript exporter) into a folder holding
``model.onnx``, a copy of ``tokenizer.json`` and ``export.json`` (provenance and the measured
difference to torch). ``OnnxEncoder`` tokenises with ``tokenizers``, runs the transformer and does
mean pooling and L2 normalisation in numpy, exactly like sentence-transformers does.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from engine.embedding.base import DIM, MODEL_NAME
from engine.embedding.st import FAMILY, default_model_path, quiet_transformers

log = logging.getLogger(__name__)

EXPORT_FORMAT = 1
OPSET = 17
FUSED_MAX_ABS_DIFF = 1e-4  # the BERT-fused graph is kept only if it stays this close to torch
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_CHUNK = 4096  # texts tokenised (and length-sorted) together

_LONG = (
    "Borosilicate glass beaker, 600 ml, low form with spout, graduated in 50 ml steps, autoclavable, "
    "resistant to thermal shock from -40 to 500 degrees Celsius. "
) * 12

PROBE_TEXTS: tuple[str, ...] = (
    "pla filament",
    "nitrile gloves",
    "usb c cable",
    "led strip 5m",
    "ph meter",
    "microscope slides",
    "soldering iron kit",
    "oscilloscope",
    "red dress",
    "iphone case",
    "wireless mouse",
    "coffee grinder",
    "running shoes men size 10",
    "kids lego star wars",
    "a",
    "",
    "3D printer PLA filament 1.75mm, 1 kg spool, dimensional accuracy +/- 0.02 mm, black",
    "Disposable nitrile examination gloves, powder-free, size M, box of 100",
    "Digital multimeter with auto-ranging, true RMS, backlit LCD, CAT III 600V",
    "Pipette tips 200 uL, sterile, racked, 96 per rack, 10 racks",
    "Erlenmeyer flask 250ml borosilicate glass with graduations",
    "Magnetic stirrer hotplate, 5 L capacity, ceramic top, max 340 C",
    "Safety goggles anti-fog, indirect vent, ANSI Z87.1",
    "Arduino Uno R3 compatible board with USB cable",
    "Raspberry Pi 4 Model B 8GB RAM",
    "Stainless steel lab tweezers set, 6 pieces, anti-magnetic",
    "Thermocouple type K probe, -50 to 400 C, 1 m cable",
    "Centrifuge tubes 50 ml, polypropylene, conical bottom, pack of 25",
    "Whiteboard markers, assorted colours, 12 pack",
    "Women's cotton t-shirt, crew neck, short sleeve, navy blue, size L",
    "Stainless steel water bottle 750 ml, vacuum insulated, keeps drinks cold 24 h",
    "Noise cancelling over-ear headphones with 30-hour battery",
    "Organic green tea, 100 bags",
    "Cordless drill driver 18V with two batteries and charger",
    "Kids' waterproof rain jacket with hood, yellow",
    "Ergonomic office chair with lumbar support and adjustable armrests",
    "HDMI 2.1 cable 2 m 8K 60Hz 4K 120Hz",
    "Non-stick frying pan 28 cm, induction compatible",
    "Laboratory grade distilled water, 4 litre",
    "Ünïcödé façade — café crème brûlée, 東京 タワー, ß ﬁ 🚀",
    "SKU: AB-1234-XYZ; EAN 4006381333931; Art.-Nr. 00/17",
    "best cheap gaming laptop under 1000 dollars with rtx graphics",
    "replacement battery for cordless vacuum",
    "gift for a chemistry teacher",
    "glass beaker",
    "beakers glass 600ml low form",
    "!!! ??? ...",
    "1234567890",
    "Präzisionswaage 0,01 g mit Windschutz",
    _LONG,
)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load_tokenizer(path: Path, max_seq_length: int) -> Any:
    """``tokenizers`` tokenizer truncating like sentence-transformers; padding is done per batch by us."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    tok.enable_truncation(max_length=max_seq_length)
    tok.no_padding()
    return tok


def _pad(encodings: Sequence[Any]) -> dict[str, np.ndarray]:
    """Right-pad a batch of encodings to its longest member (pad id 0, mask 0)."""
    n, width = len(encodings), max(len(e.ids) for e in encodings)
    arrays = {k: np.zeros((n, width), dtype=np.int64) for k in _INPUTS}
    for i, e in enumerate(encodings):
        m = len(e.ids)
        arrays["input_ids"][i, :m] = e.ids
        arrays["attention_mask"][i, :m] = e.attention_mask
        arrays["token_type_ids"][i, :m] = e.type_ids
    return arrays


def _sorted_batches(encodings: Sequence[Any], batch_size: int) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Yield ``(indices, padded batch)`` over ``encodings`` sorted by token count (little padding)."""
    lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
    order = np.argsort(lengths, kind="stable")
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        yield idx, _pad([encodings[i] for i in idx])


def _pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean over unmasked tokens, then L2 normalisation (as sentence-transformers)."""
    m = mask.astype(np.float32)[:, :, None]
    summed = (hidden.astype(np.float32, copy=False) * m).sum(axis=1)
    mean = summed / np.maximum(m.sum(axis=1), 1e-9)
    unit: np.ndarray = mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)
    return unit


def _session(model: Path, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])


def _run(session: Any, batch: dict[str, np.ndarray]) -> np.ndarray:
    names = [i.name for i in session.get_inputs()]
    hidden = session.run(None, {k: batch[k] for k in names})[0]
    return _pool(hidden, batch["attention_mask"])


def _valid_export(out_dir: Path, sha: str, optimize: bool) -> bool:
    meta_path = out_dir / "export.json"
    if not (meta_path.is_file() and (out_dir / "model.onnx").is_file() and (out_dir / "tokenizer.json").is_file()):
        return False
    try:
        meta: dict[str, Any] = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return False
    return (meta.get("format") == EXPORT_FORMAT and meta.get("source_sha256") == sha
            and meta.get("optimize") == optimize)


def _base_layers(model_path: str | None = None) -> dict[str, np.ndarray]:
    """The packaged model's transformer-layer weights, by ``layer.<i>.<name>`` (read with safetensors)."""
    from safetensors.numpy import load_file

    src = Path(model_path) if model_path is not None else Path(default_model_path())
    prefix = "encoder."
    return {k[len(prefix):]: v for k, v in load_file(str(src / "model.safetensors")).items()
            if k.startswith(prefix + "layer.")}


def save_layers(weights: dict[str, np.ndarray], path: Path, model_path: str | None = None) -> Path:
    """Write fine-tuned layer weights (``layer.<i>.<name>``, or bare names: the last layer) as their difference from the packaged model's,
    compressed: int8 per output row (``<name>.q`` and ``<name>.scale``) for matrices, float32 for vectors.
    A delta stays within 1e-5 of the weight (finer than float16), in half the bytes of float16 weights."""
    base = _base_layers(model_path)
    n_layers = len({k.split(".")[1] for k in base})
    named = {f"layer.{i}.{name}": w for i, state in layer_weights(weights, n_layers).items() for name, w in state.items()}
    out: dict[str, np.ndarray] = {}
    for k, w in named.items():
        w = np.asarray(w, np.float32)
        if w.ndim == 2:
            delta = w - base[k]
            scale = np.abs(delta).max(axis=1, keepdims=True) / 127.0
            scale[scale == 0] = 1.0
            out[f"{k}.q"] = np.round(delta / scale).astype(np.int8)
            out[f"{k}.scale"] = scale.astype(np.float32)
        else:
            out[k] = w
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **out)  # type: ignore[arg-type]
    tmp.replace(path)
    return path


def load_layers(path: Path, model_path: str | None = None) -> dict[str, np.ndarray]:
    """The float32 weights of a file of :func:`save_layers` (or of plain float weights, the first formats)."""
    with np.load(path, allow_pickle=False) as z:
        saved = {k: z[k] for k in z.files}
    if not any(k.endswith(".q") for k in saved):
        return {k: v.astype(np.float32) for k, v in saved.items()}
    base = _base_layers(model_path)
    out: dict[str, np.ndarray] = {}
    for k, v in saved.items():
        if k.endswith(".q"):
            name = k[:-2]
            out[name] = base[name] + v.astype(np.float32) * saved[f"{name}.scale"]
        elif not k.endswith(".scale"):
            out[k] = v.astype(np.float32)
    return out


def layer_weights(weights: dict[str, np.ndarray], n_layers: int) -> dict[int, dict[str, np.ndarray]]:
    """``{layer index: BertLayer state_dict}`` of a ``top_layer`` file (engine.qa.finetune); a file of bare
    ``BertLayer`` names, the first format, holds the last layer."""
    if not any(k.startswith("layer.") for k in weights):
        return {n_layers - 1: dict(weights)}
    out: dict[int, dict[str, np.ndarray]] = {}
    for k, v in weights.items():
        _, i, name = k.split(".", 2)
        out.setdefault(int(i), {})[name] = v
    return out


def export_onnx(out_dir: Path, model_path: str | None = None, *, optimize: bool = False,
                top_layer: Path | None = None) -> Path:
    """Export the packaged model to ``out_dir/model.onnx`` (once) and return ``out_dir``.

    ``top_layer``: an ``.npz`` of weights for the last transformer layer (``BertLayer.state_dict()`` names)
    that replace the packaged ones, e.g. the answer-ranking fine-tune of ``engine.qa.finetune``; the export
    is then keyed by both files' hashes.

    With ``optimize`` the graph also goes through onnxruntime's BERT fusion (still fp32); the fused
    graph is kept only if its vectors stay within ``FUSED_MAX_ABS_DIFF`` of torch. Off by default:
    measured no faster than the plain graph on this CPU (ORT_ENABLE_ALL already fuses). Idempotent: an
    existing export of the same weights (sha256) and ``optimize`` flag is reused. Atomic: built in a
    temporary sibling folder and renamed into place.
    """
    out_dir = Path(out_dir)
    src = Path(model_path) if model_path is not None else Path(default_model_path())
    weights = src / "model.safetensors"
    sha = _sha256(weights) + (f"+{_sha256(top_layer)}" if top_layer is not None else "")
    if _valid_export(out_dir, sha, optimize):
        log.debug("ONNX export in %s is current", out_dir)
        return out_dir

    t0 = time.perf_counter()
    import onnx
    import onnxruntime
    import torch
    import transformers
    from transformers import AutoModel

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        with quiet_transformers():
            model = AutoModel.from_pretrained(str(src), attn_implementation="eager", local_files_only=True).eval()
        if top_layer is not None:
            for i, state in layer_weights(load_layers(top_layer, str(src)), len(model.encoder.layer)).items():
                model.encoder.layer[i].load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})

        class _Transformer(torch.nn.Module):
            def __init__(self, inner: torch.nn.Module) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        token_type_ids: torch.Tensor) -> torch.Tensor:
                hidden: torch.Tensor = self.inner(input_ids=input_ids, attention_mask=attention_mask,
                                                  token_type_ids=token_type_ids).last_hidden_state
                return hidden

        wrapper = _Transformer(model).eval()
        tok = _load_tokenizer(src / "tokenizer.json", 256)
        # Padded example (second row shorter) so that nothing mask-related is traced as a constant.
        example = _pad(tok.encode_batch(["example query", "a longer example product title for tracing"]))
        args = tuple(torch.from_numpy(example[k]) for k in _INPUTS)
        plain = tmp / "plain.onnx"
        axes = {k: {0: "batch", 1: "sequence"} for k in (*_INPUTS, "last_hidden_state")}
        with warnings.catch_warnings(record=True) as caught, torch.no_grad():
            warnings.simplefilter("always")
            torch.onnx.export(wrapper, args, str(plain), input_names=list(_INPUTS),
                              output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=OPSET,
                              do_constant_folding=True, dynamo=False)
        for w in caught:
            log.debug("exporter warning (%s): %s", w.category.__name__, str(w.message)[:200])

        # Reference vectors from torch on the probe set (length-sorted padded batches of 8).
        probe = list(_sorted_batches(tok.encode_batch(list(PROBE_TEXTS)), 8))
        with torch.no_grad():
            ref = np.vstack([_pool(wrapper(*(torch.from_numpy(b[k]) for k in _INPUTS)).numpy(), b["attention_mask"])
                             for _, b in probe])

        def max_diff(graph: Path) -> float:
            session = _session(graph, 2)
            return float(np.abs(np.vstack([_run(session, b) for _, b in probe]) - ref).max())

        diff_plain = max_diff(plain)
        final, diff, fused = plain, diff_plain, False
        if optimize:
            try:
                fused_path = _fuse(plain, tmp / "fused.onnx", model.config)
                diff_fused = max_diff(fused_path)
                if diff_fused <= FUSED_MAX_ABS_DIFF:
                    final, diff, fused = fused_path, diff_fused, True
                else:
                    log.warning("BERT-fused graph differs from torch by %.2e; keeping the plain export", diff_fused)
            except Exception:  # noqa: BLE001 - fusion is an optional speed-up
                log.warning("BERT fusion failed; keeping the plain export", exc_info=True)
        os.replace(final, tmp / "model.onnx")
        for p in (plain, tmp / "fused.onnx"):
            p.unlink(missing_ok=True)
        shutil.copyfile(src / "tokenizer.json", tmp / "tokenizer.json")
        meta = {
            "format": EXPORT_FORMAT,
            "model": MODEL_NAME,
            "source_path": str(src),
            "source_file": weights.name,
            "source_sha256": sha,
            "top_layer": str(top_layer) if top_layer is not None else None,
            "optimize": optimize,
            "fused": fused,
            "opset": OPSET,
            "max_abs_diff_vs_torch": diff,
            "max_abs_diff_vs_torch_plain": diff_plain,
            "probe_texts": len(PROBE_TEXTS),
            "torch_version": torch.__version__,
            "transformers_version": transformers.__version__,
            "onnx_version": onnx.__version__,
            "onnxruntime_version": onnxruntime.__version__,
            "export_seconds": round(time.perf_counter() - t0, 2),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / "export.json").write_text(json.dumps(meta, indent=2) + "\n")
        replace_dir(tmp, out_dir, lambda: _valid_export(out_dir, sha, optimize))
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported %s to %s in %.1fs (fused=%s, max abs diff vs torch %.2e)",
             MODEL_NAME, out_dir, meta["export_seconds"], fused, diff)
    return out_dir


def bert_optimized(src: Path, num_heads: int, hidden_size: int, options: Any = None) -> Any:
    """onnxruntime's offline BERT fusion of the graph ``src`` (Attention, SkipLayerNorm, BiasGelu...; those
    ``options``, an ``onnxruntime.transformers`` ``FusionOptions``, enable), fp32; an ``OnnxModel``."""
    from onnxruntime.transformers.optimizer import optimize_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return optimize_model(str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
                              opt_level=0, use_gpu=False, optimization_options=options)


def _fuse(src: Path, dst: Path, config: Any) -> Path:
    """The whole BERT fusion of ``src``, saved to ``dst``."""
    opt = bert_optimized(src, config.num_attention_heads, config.hidden_size)
    log.debug("fused operators: %s", opt.get_fused_operator_statistics())
    opt.save_model_to_file(str(dst))
    return dst


def replace_dir(tmp: Path, out_dir: Path, valid: Callable[[], bool]) -> None:
    """Move the finished ``tmp`` folder to ``out_dir``, replacing a stale one; when the move fails, a
    concurrent builder may have won the race, which is fine if ``valid()`` says its result is current."""
    if out_dir.exists():
        stale = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        with contextlib.suppress(FileNotFoundError):
            os.replace(out_dir, stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.replace(tmp, out_dir)
    except OSError:
        if not valid():  # lost a race against a concurrent builder?
            raise


class OnnxEncoder:
    """all-MiniLM-L6-v2 on onnxruntime (CPU, fp32); vectors interchangeable with the torch encoder."""

    name = f"{MODEL_NAME}/onnx-fp32"
    family = FAMILY
    dim = DIM

    def __init__(self, model_dir: Path, threads: int = 1, max_seq_length: int = 256) -> None:
        model_dir = Path(model_dir)
        self.model_dir = model_dir
        self.max_seq_length = max_seq_length
        self.threads = threads
        meta_path = model_dir / "export.json"
        self.export_meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        self._tok = _load_tokenizer(model_dir / "tokenizer.json", max_seq_length)
        self._session = _session(model_dir / "model.onnx", threads)
        log.info("loaded %s from %s (threads=%d, fused=%s)", self.name, model_dir, threads,
                 self.export_meta.get("fused"))

    def encode(self, texts: Sequence[str], *, batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        """Encode ``texts`` into an ``(n, 384)`` float32 array of unit vectors, in input order.

        Texts are sorted by token count (per chunk of 4096) so that batches carry little padding.
        """
        n = len(texts)
        out = np.empty((n, self.dim), dtype=np.float32)
        bar = None
        if show_progress and n:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, desc="encode", unit="text")
        for start in range(0, n, _CHUNK):
            chunk = [str(t) for t in texts[start:start + _CHUNK]]
            for idx, batch in _sorted_batches(self._tok.encode_batch(chunk), batch_size):
                out[start + idx] = _run(self._session, batch)
                if bar is not None:
                    bar.update(len(idx))
        if bar is not None:
            bar.close()
        return out
