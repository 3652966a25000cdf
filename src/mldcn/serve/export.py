"""Export a model for serving: ONNX (run with ONNX Runtime) and ``torch.export`` (``.pt2``).

Both formats hold :class:`ProbabilityModel`: the model plus the sigmoid, taking only
the input tensors its features need, with a dynamic batch dimension:

    categorical  int64   [B, Fc]     (if the model has categorical fields)
    numeric      float32 [B, Fn]     (if it has numeric fields)
    sequence     int64   [B, Fs, L]  (if it has multi-valued fields)
    → probability float32 [B, T]     (one column per task)

ONNX goes through ``torch.onnx.export(dynamo=True)`` (torch's exporter since 2.9;
it needs ``onnxscript``); TorchScript is deprecated in torch 2.13, so the second
format is ``torch.export``'s ExportedProgram, saved with ``torch.export.save``.
Dropout and BatchNorm are exported in eval mode (dropout is then the identity).
An exported ONNX file records the SHA-256 of the artifact weights it came from,
so a server can refuse a stale export.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mldcn.features import FeatureSpec
from mldcn.models.ranking import RankingModel

FORMATS = ("onnx", "pt2")
OUTPUT_NAME = "probability"
WEIGHTS_KEY = "mldcn.weights_sha256"
_EXAMPLE_BATCH = 4  # > 1, so the exporters keep the batch dimension symbolic
_EXTERNAL_DATA_BYTES = 1 << 30  # ONNX protobufs stop at 2 GiB: larger weights go to a side file


class ProbabilityModel(nn.Module):
    """``sigmoid(model(categorical, numeric, sequence))`` over the inputs that exist.

    A model without numeric fields is called with an empty ``[B, 0]`` numeric
    tensor and one without multi-valued fields with ``sequence=None``; an exported
    graph has no such inputs. ``input_names`` lists the inputs in call order.

    Shape:
        the tensors named in ``input_names`` → probabilities ``[B, T]``
    """

    def __init__(self, model: RankingModel) -> None:
        super().__init__()
        self.model = model
        self.input_names = input_names(model.embedding.features)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        given = dict(zip(self.input_names, inputs))
        batch = inputs[0].shape[0]
        first = inputs[0]
        categorical = given.get("categorical")
        if categorical is None:
            categorical = torch.zeros((batch, 0), dtype=torch.int64, device=first.device)
        numeric = given.get("numeric")
        if numeric is None:
            numeric = torch.zeros((batch, 0), dtype=torch.float32, device=first.device)
        return torch.sigmoid(self.model(categorical, numeric, given.get("sequence")))  # [B, T]


def input_names(features: FeatureSpec) -> tuple[str, ...]:
    """The exported graph's inputs: ``categorical``, ``numeric``, ``sequence``, each if it has fields."""
    names = []
    if features.categorical:
        names.append("categorical")
    if features.numeric:
        names.append("numeric")
    if features.sequence:
        names.append("sequence")
    return tuple(names)


def example_inputs(features: FeatureSpec, batch: int = _EXAMPLE_BATCH, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random valid inputs: ids within each field's vocabulary, some sequence padding."""
    generator = torch.Generator().manual_seed(seed)
    inputs: dict[str, torch.Tensor] = {}
    if features.categorical:
        sizes = torch.tensor([f.vocab_size for f in features.categorical])
        inputs["categorical"] = (torch.rand(batch, len(sizes), generator=generator) * sizes).long()  # [B, Fc]
    if features.numeric:
        inputs["numeric"] = torch.randn(batch, len(features.numeric), generator=generator)  # [B, Fn]
    if features.sequence:
        sizes = torch.tensor([f.vocab_size for f in features.sequence])[:, None]  # [Fs, 1]
        length = features.sequence_length
        ids = (torch.rand(batch, len(features.sequence), length, generator=generator) * sizes).long()  # [B, Fs, L]
        ids[..., length // 2 + 1 :] = 0  # padding at the end, as the encoder writes it
        inputs["sequence"] = ids
    return inputs


def _require(module: str):
    """Import an optional package of the ``export`` extra, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise OSError(f"ONNX export and inference need the `export` extra (pip install 'mldcn[export]'): {error}") from None


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporters' progress prints, deprecation notes and optional-package warnings."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _dynamic_shapes(wrapper: ProbabilityModel) -> tuple:
    batch = torch.export.Dim("batch")
    return (tuple({0: batch} for _ in wrapper.input_names),)


def onnx_model_proto(model: RankingModel, weights_sha256: str | None = None):
    """The ONNX ``ModelProto`` of ``model`` (as :class:`ProbabilityModel`), dynamic batch."""
    _require("onnxscript")
    wrapper = ProbabilityModel(model).eval()
    example = example_inputs(model.embedding.features)
    args = tuple(example[name] for name in wrapper.input_names)
    with _quiet_exporter(), torch.inference_mode(False):
        program = torch.onnx.export(
            wrapper,
            args,
            dynamo=True,
            dynamic_shapes=_dynamic_shapes(wrapper),
            input_names=list(wrapper.input_names),
            output_names=[OUTPUT_NAME],
            verbose=False,
        )
    proto = program.model_proto
    if weights_sha256 is not None:
        entry = proto.metadata_props.add()
        entry.key, entry.value = WEIGHTS_KEY, weights_sha256
    return proto


def export_onnx(model: RankingModel, path: str | Path, weights_sha256: str | None = None) -> Path:
    """Write ``model`` as an ONNX file at ``path`` (weights > 1 GiB go to ``path.data``)."""
    onnx = _require("onnx")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    proto = onnx_model_proto(model, weights_sha256)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    external = size > _EXTERNAL_DATA_BYTES
    onnx.save_model(
        proto, str(path), save_as_external_data=external, all_tensors_to_one_file=True, location=f"{path.name}.data"
    )
    return path


def export_program(model: RankingModel, path: str | Path) -> Path:
    """Write ``model`` as a ``torch.export`` program (``.pt2``) at ``path``.

    Load it with ``torch.export.load(path).module()`` and call it with the tensors
    of :func:`input_names`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = ProbabilityModel(model).eval()
    example = example_inputs(model.embedding.features)
    args = tuple(example[name] for name in wrapper.input_names)
    with _quiet_exporter(), torch.inference_mode(False):
        program = torch.export.export(wrapper, args, dynamic_shapes=_dynamic_shapes(wrapper))
        torch.export.save(program, str(path))
    return path


def export_model(model: RankingModel, format: str, path: str | Path, weights_sha256: str | None = None) -> Path:
    """Export ``model`` in ``format`` (``onnx`` or ``pt2``) to ``path``."""
    if format == "onnx":
        return export_onnx(model, path, weights_sha256)
    if format == "pt2":
        return export_program(model, path)
    raise ValueError(f"unknown export format {format!r}; choose one of {list(FORMATS)}")


def onnx_session(model: str | Path | bytes, threads: int | None = None):
    """An ONNX Runtime CPU session for a file (or serialised model); ``threads`` intra-op threads."""
    ort = _require("onnxruntime")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])


def load_exported(format: str, path: str | Path, threads: int | None = None):
    """A callable ``(*tensors) → probabilities [B, T]`` numpy array for an exported file."""
    if format == "onnx":
        session = onnx_session(path, threads)
        names = [i.name for i in session.get_inputs()]

        def run_onnx(*inputs: torch.Tensor) -> np.ndarray:
            return session.run([OUTPUT_NAME], {n: x.numpy() for n, x in zip(names, inputs)})[0]

        return run_onnx
    if format == "pt2":
        with _quiet_exporter():
            module = torch.export.load(str(path)).module()

        def run_program(*inputs: torch.Tensor) -> np.ndarray:
            with torch.inference_mode():
                return module(*inputs).numpy()

        return run_program
    raise ValueError(f"unknown export format {format!r}; choose one of {list(FORMATS)}")


def parity(model: RankingModel, format: str, path: str | Path, batch: int = 257, seed: int = 1) -> float:
    """Max absolute difference of probabilities, exported file vs eager PyTorch, on random inputs.

    ``batch`` differs from the export's example batch, so this also checks that
    the batch dimension is dynamic.
    """
    wrapper = ProbabilityModel(model).eval()
    example = example_inputs(model.embedding.features, batch=batch, seed=seed)
    args = tuple(example[name] for name in wrapper.input_names)
    with torch.inference_mode():
        expected = wrapper(*args).numpy()
    got = load_exported(format, path)(*args)
    if got.shape != expected.shape:
        raise ValueError(f"{path}: output shape {got.shape}, expected {expected.shape}")
    return float(np.abs(got.astype(np.float64) - expected).max())
