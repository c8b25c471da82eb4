"""ONNX Runtime inference for the encoder models of a bundle (``runtime: onnx``).

A package's model, as inference runs it (LoRA folded into the encoder's weights, ``for_inference``),
is exported once with ``torch.onnx.export`` into a cache directory outside the bundle
(``$FINDIAL_CACHE/onnx/<task>-<key>/model.onnx``, default ``~/.cache/findial``), written atomically
(``atomic_directory``: a directory that exists is complete; two processes exporting the same model keep
the first copy). ``key`` is a hash of what the exported graph depends on: the package's meta (but its
members and member gate) and weights, the backbone's config and weight files (sizes and their first and
last MiB), the torch version and this exporter's version, so a new package version, backbone or torch
re-exports.

``OnnxModule`` then stands in for the torch module in ``IntentPredictor`` / ``EntityPredictor``: it takes
the same padded batch (``input_ids``, ``attention_mask``) and returns the same named logits as torch
tensors, so tokenisation, batching, ensembling and decoding are the torch path's own code. Its outputs match
the torch path within float tolerance (``tests/test_onnx_runtime.py``).

What is exported: BERT-like encoders (``bert``, ``roberta``, ``xlm-roberta``: the e5 and MiniLM models).
Another backbone (the Gemma 3 ensemble members) stays on torch, with a warning; ``runtime: onnx`` on a
CUDA device needs onnxruntime's CUDAExecutionProvider (the ``onnxruntime-gpu`` wheel) and is refused
without it, naming ``runtime: torch`` as the way out.

int8 is not offered as a runtime: ``quantize_int8`` (dynamic int8 MatMuls) and ``quantize_weights_int8``
(weight-only int8) are here for ``benchmarks/int8_sensitivity.py``, which measured every layer and kind of
MatMul of the default e5 models on the natural validation split: no subset that speeds them up kept every
headline metric within 0.002 of float32 (docs/serving.md, "Speed").
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from pathlib import Path

import torch

from findial.tracking import atomic_directory

log = logging.getLogger("findial.training")

RUNTIMES = ("torch", "onnx")
EXPORT_VERSION = 1  # bump when the exported graph changes for the same inputs
OPSET = 17
BERT_LIKE = frozenset({"bert", "roberta", "xlm-roberta"})
# meta keys the exported graph does not depend on: a bundle with or without members, gated or not, shares its export
GRAPH_FREE_META = ("members", "member_gate")
OUTPUTS = {"intent": ("intent_logits", "emotion_logits"), "ner": ("tag_logits", "stand_logits")}


class OnnxRuntimeUnavailable(RuntimeError):
    """``runtime: onnx`` cannot run here (onnxruntime missing, no provider for the device); the message
    says what to install or to use ``runtime: torch``."""


def check_runtime(runtime: str, where: str = "runtime") -> str:
    if runtime not in RUNTIMES:
        raise ValueError(f"{where}: must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    return runtime


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise OnnxRuntimeUnavailable(
            "runtime: onnx needs onnxruntime and onnx (pip install onnxruntime onnx); or use runtime: torch"
        ) from None
    return onnxruntime


def exportable(backbone_dir: str | Path) -> bool:
    """Whether the backbone is an encoder this module exports (``BERT_LIKE``)."""
    try:
        model_type = json.loads((Path(backbone_dir) / "config.json").read_text(encoding="utf-8"))["model_type"]
    except (OSError, KeyError, ValueError):
        return False
    return model_type in BERT_LIKE


def _file_digest(h, path: Path, whole: bool) -> None:
    size = path.stat().st_size
    h.update(f"{path.name}:{size}:".encode())
    with open(path, "rb") as f:
        if whole or size <= 2 << 20:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        else:  # a backbone's weights: a content fingerprint without reading hundreds of MB
            h.update(f.read(1 << 20))
            f.seek(size - (1 << 20))
            h.update(f.read(1 << 20))


def export_key(package_dir: str | Path, backbone_dir: str | Path) -> str:
    """The cache key of a package's exported graph (see the module docstring)."""
    package_dir, backbone_dir = Path(package_dir), Path(backbone_dir)
    h = hashlib.sha256(
        json.dumps({"export": EXPORT_VERSION, "opset": OPSET, "torch": torch.__version__}, sort_keys=True).encode()
    )
    meta = json.loads((package_dir / "findial_model.json").read_text(encoding="utf-8"))
    for key in GRAPH_FREE_META:
        meta.pop(key, None)
    h.update(json.dumps(meta, sort_keys=True, ensure_ascii=False).encode())
    _file_digest(h, package_dir / "weights.safetensors", whole=True)
    for f in sorted(backbone_dir.iterdir()):
        if f.name == "config.json":
            _file_digest(h, f, whole=True)
        elif f.suffix in (".safetensors", ".bin") and f.is_file():
            _file_digest(h, f, whole=False)
    return h.hexdigest()[:20]


class _Exported(torch.nn.Module):
    """The package's module as a function of (input_ids, attention_mask) -> its logits, in ``names`` order."""

    def __init__(self, module, names: tuple[str, ...]):
        super().__init__()
        self.module, self.names = module, names

    def forward(self, input_ids, attention_mask):
        out = self.module({"input_ids": input_ids, "attention_mask": attention_mask})
        return tuple(out[n] for n in self.names)


def _dummy_batch(vocab_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows, the second padded: the export traces the general (masked) path."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, max(6, min(vocab_size, 1000)), (2, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    return ids.to(device), mask.to(device)


def export_onnx(module, target: str | Path) -> tuple[Path, tuple[str, ...]]:
    """Export the (folded, eval-mode) task module to ``target``/model.onnx, atomically; returns the file and
    its output names."""
    target = Path(target)
    device = next(module.parameters()).device
    ids, mask = _dummy_batch(module.encoder.config.vocab_size, device)
    with torch.inference_mode():
        probe = module({"input_ids": ids, "attention_mask": mask})
    task = "intent" if "intent_logits" in probe else "ner"
    names = tuple(n for n in OUTPUTS[task] if n in probe)
    wrapper = _Exported(module, names).eval()
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}}
    for n in names:
        axes[n] = {0: "batch", 1: "tokens"} if task == "ner" else {0: "batch"}
    with atomic_directory(target, keep_existing=True) as tmp:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                (ids, mask),
                str(tmp / "model.onnx"),
                input_names=["input_ids", "attention_mask"],
                output_names=list(names),
                dynamic_axes=axes,
                opset_version=OPSET,
                dynamo=False,  # the TorchScript exporter: no onnxscript needed, dynamic batch and length
            )
        (tmp / "findial_onnx.json").write_text(
            json.dumps(
                {"task": task, "outputs": list(names), "opset": OPSET, "torch": torch.__version__,
                 "export_version": EXPORT_VERSION},
                indent=2,
            ),
            encoding="utf-8",
        )  # fmt: skip
    return target / "model.onnx", names


def matmul_nodes(path: str | Path) -> list[str]:
    """The names of the MatMul nodes of an exported graph (what int8 quantisation would touch)."""
    import onnx

    return [n.name for n in onnx.load(str(path), load_external_data=False).graph.node if n.op_type == "MatMul"]


def quantize_int8(src: str | Path, dst: str | Path, keep_float=(), only=None) -> Path:
    """Dynamic int8 quantisation of the weight MatMuls of ``src`` (weights per output channel, activations per
    tensor and batch), except the nodes whose name contains any of ``keep_float``; with ``only``, just the nodes
    whose name contains one of those."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    nodes = matmul_nodes(src)
    exclude = [n for n in nodes if any(k in n for k in keep_float)]
    if only is not None:
        exclude += [n for n in nodes if not any(k in n for k in only) and n not in exclude]
    quantize_dynamic(
        str(src),
        str(dst),
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul"],
        nodes_to_exclude=exclude,
        extra_options={"MatMulConstBOnly": True},
    )
    return Path(dst)


def quantize_weights_int8(src: str | Path, dst: str | Path, accuracy_level: int = 4, block_size: int = 32) -> Path:
    """Weight-only int8 (onnxruntime ``MatMulNBits``, 8 bits, blocks of ``block_size`` along the input
    dimension); ``accuracy_level`` 4 computes with int8 activations quantised per block, 1 in float. Needs
    the ``onnx_ir`` package."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    q = MatMulNBitsQuantizer(
        onnx.load(str(src)), bits=8, block_size=block_size, is_symmetric=True, accuracy_level=accuracy_level
    )
    q.process()
    q.model.save_model_to_file(str(dst), use_external_data_format=False)
    return Path(dst)


def session_options(threads: int | None = None):
    """onnxruntime session options: ``threads`` intra-op threads (default: torch's, so ``torch_threads``
    bounds both runtimes), one inter-op thread, no spinning (a shared or small CPU needs the cycles)."""
    ort = _ort()
    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, threads or torch.get_num_threads())
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


def providers(device: str | torch.device) -> list:
    """onnxruntime execution providers for a torch device name; refuses CUDA without the CUDA provider."""
    ort = _ort()
    device = torch.device(device)
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise OnnxRuntimeUnavailable(
                f"runtime: onnx on {device}: this onnxruntime has no CUDAExecutionProvider (available: "
                f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu, or use runtime: torch"
            )
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    raise OnnxRuntimeUnavailable(f"runtime: onnx: no onnxruntime provider for device {device}; use runtime: torch")


class OnnxModule:
    """A package's exported model behind the torch module's interface: ``module(batch) -> {name: logits}``."""

    def __init__(self, path: str | Path, names: tuple[str, ...], device: str | torch.device = "cpu"):
        ort = _ort()
        self.path, self.names, self.device = Path(path), tuple(names), torch.device(device)
        self.session = ort.InferenceSession(str(path), session_options(), providers=providers(device))

    def __call__(self, batch: dict) -> dict:
        feed = {k: batch[k].detach().cpu().numpy() for k in ("input_ids", "attention_mask")}
        return {n: torch.from_numpy(v) for n, v in zip(self.names, self.session.run(list(self.names), feed))}


def onnx_module(package_dir, module, backbone_dir, device="cpu", runtime="onnx", cache_dir=None):
    """The package's model under onnxruntime, exported on first use (see the module docstring); the torch
    ``module`` when its backbone is not one this module exports (with a warning)."""
    from .e5_converter import cache_root

    check_runtime(runtime)
    if not exportable(backbone_dir):
        log.warning("%s: runtime %s exports BERT-like encoders only: this model runs on torch", package_dir, runtime)
        return module
    providers(device)  # refuse an unsupported device before exporting anything
    meta = json.loads((Path(package_dir) / "findial_model.json").read_text(encoding="utf-8"))
    target = cache_root(cache_dir) / "onnx" / f"{meta.get('task', 'model')}-{export_key(package_dir, backbone_dir)}"
    info = target / "findial_onnx.json"
    if info.is_file() and (target / "model.onnx").is_file():
        names = tuple(json.loads(info.read_text(encoding="utf-8"))["outputs"])
    else:
        log.info("exporting %s to ONNX (%s): once per package version", package_dir, target)
        _, names = export_onnx(module, target)
    return OnnxModule(target / "model.onnx", names, device)
