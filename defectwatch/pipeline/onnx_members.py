"""Ensemble members as ONNX Runtime sessions: float32 on the CPU where asked (``cpu_onnx``) or
where fast mode has neither bf16 nor the fused forward (`fused_unet`).

A U-Net member is exported once to ONNX (any image size; float32, the same weights) and run by
ONNX Runtime, with maps equal to torch's within ~3e-6; slower than the fused torch forward at
every size measured (512 px: 0.45 against 0.30 s; see the README). Exports are cached by the
member file's sha256 when a cache folder is given, so a later load skips the ~1 s export.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

OPSET = 17
INPUT, OUTPUT = "x", "logits"


def export_member(member: Any) -> bytes:
    """One torch U-Net (eval mode, on CPU) -> ONNX bytes; input (1, 1, H, W), H and W free
    (multiples of 8), output (1, C, H, W) logits."""
    import torch

    dummy = torch.zeros(1, 1, 64, 64)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
        torch.onnx.export(
            member,
            (dummy,),
            buf,  # type: ignore[arg-type]
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: {2: "h", 3: "w"}, OUTPUT: {2: "h", 3: "w"}},
            opset_version=OPSET,
            dynamo=False,
        )
    return buf.getvalue()


def member_session(
    member: Any,
    *,
    sha256: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    threads: int = 1,
) -> Any:
    """An ONNX Runtime CPU session running ``member`` with ``threads`` intra-op threads."""
    import onnxruntime as ort

    model: bytes | None = None
    cached = Path(cache_dir) / f"{sha256}-opset{OPSET}.onnx" if cache_dir and sha256 else None
    if cached is not None and cached.is_file():
        model = cached.read_bytes()
    if model is None:
        model = export_member(member)
        if cached is not None:
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                tmp = cached.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_bytes(model)
                os.replace(tmp, cached)
            except OSError as exc:  # a read-only cache only costs the export next time
                log.warning("could not cache the ONNX export in %s: %s", cached.parent, exc)
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def run_session(session: Any, window: np.ndarray) -> np.ndarray:
    """(H, W) float32 window -> (C, H, W) float32 logits.

    Each run hands its arena back at the end: without that each of the ten sessions keeps an
    arena as large as the largest tile it ran (4.6 GB held after a 2048 px scan, against 1.5 GB
    with; 13-24% slower at 1024-2048 px, the same at 512)."""
    x = np.ascontiguousarray(window, dtype=np.float32)[None, None]
    return session.run([OUTPUT], {INPUT: x}, _shrinking_run_options())[0][0]


@functools.cache
def _shrinking_run_options() -> Any:
    import onnxruntime as ort

    options = ort.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options
