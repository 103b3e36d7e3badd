"""onnxruntime and OpenVINO, both from one ONNX file exported from torch's module (the standard ONNX RNN / GRU /
LSTM op, which torch's TorchScript-based exporter emits), inference only.

Each runs the case's input as a numpy array made once (``x`` [T, B, H_in], static shapes), on ``threads``
threads: onnxruntime's CPU execution provider with every graph optimisation, one intra-op pool, no inter-op
parallelism; OpenVINO's CPU plugin with float32 precision forced (its default on a CPU with BF16 would be
bfloat16), the latency hint (one stream) and one infer request reused for every call, inputs and outputs shared
with numpy rather than copied.
"""

from __future__ import annotations

import io
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from benchmarks.peers.contender import OUTPUTS, Contender


def export_onnx(module: nn.Module, x: Tensor) -> tuple[bytes, list[str]]:
    """torch's ``module`` at ``x``'s shape as ONNX bytes, and its output names (output, h_n[, c_n])."""
    names = list(OUTPUTS[:3 if isinstance(module, nn.LSTM) else 2])
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the legacy exporter's deprecation and tracer warnings
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), buffer, dynamo=False, input_names=["input"], output_names=names)
    return buffer.getvalue(), names


def _tensors(arrays: list[np.ndarray], names: list[str]) -> dict[str, Tensor]:
    return {name: torch.from_numpy(np.array(a, copy=True)) for name, a in zip(names, arrays)}


def onnxruntime_contender(onnx: bytes, names: list[str], x: Tensor, threads: int) -> Contender:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = onnxruntime.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])
    feed = {"input": x.numpy()}

    def infer():
        return session.run(None, feed)

    return Contender("onnxruntime", f"onnxruntime {onnxruntime.__version__} CPU EP", infer,
                     lambda weights: _tensors(infer(), names))


def openvino_contender(onnx: bytes, names: list[str], x: Tensor, threads: int) -> Contender:
    import openvino

    core = openvino.Core()
    with tempfile.TemporaryDirectory() as folder:  # read_model takes the ONNX file by path
        path = Path(folder) / "model.onnx"
        path.write_bytes(onnx)
        model = core.read_model(str(path))
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads,
                                                 "PERFORMANCE_HINT": "LATENCY"})
    precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # f32 unless the hint was ignored
    request = compiled.create_infer_request()
    feed = {0: x.numpy()}

    def infer():
        return request.infer(feed, share_inputs=True, share_outputs=True)

    def results(weights):
        infer()
        return _tensors([request.get_output_tensor(i).data for i in range(len(names))], names)

    return Contender("openvino", f"openvino {openvino.__version__.split('-')[0]} CPU {precision}", infer, results)
