"""Serving: the model artifact, batch prediction, export and the HTTP server.

    artifact.py   save_artifact / load_artifact: weights (safetensors), config, features,
                  fitted preprocessing, format version
    inputs.py     raw records or columns → model inputs (the training preprocessing)
    predict.py    backends (eager PyTorch, ONNX Runtime) and streaming batch prediction
    export.py     ONNX and torch.export files, parity with eager PyTorch
    server.py     FastAPI app and uvicorn runner (the ``serve`` extra)
    cli.py        ``mldcn predict``, ``mldcn export``, ``mldcn serve``
"""

from mldcn.serve.artifact import (
    ARTIFACT_VERSION,
    Artifact,
    ArtifactError,
    load_artifact,
    save_artifact,
)

__all__ = ["ARTIFACT_VERSION", "Artifact", "ArtifactError", "load_artifact", "save_artifact"]
