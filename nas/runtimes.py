"""The runtimes models ship with: ExecuTorch with the XNNPACK delegate, and ONNX Runtime.

ExecuTorch is the runtime PyTorch ships for Android and iOS; XNNPACK is its CPU delegate. A
model reaches it in three steps, all done here: `torch.export` captures the graph,
`to_edge_transform_and_lower(..., XnnpackPartitioner())` hands every subgraph XNNPACK
supports to XNNPACK (the rest stays on ExecuTorch's portable kernels: the *fallback* nodes,
counted per operator in `Delegation`), and `to_executorch` writes the program (a `.pte`),
which `executorch.runtime` loads and runs from Python, on this CPU, in the threads that
`_unsafe_reset_threadpool` sets.

int8 is PyTorch's PT2E flow: the exported graph is annotated by XNNPACK's quantiser
(symmetric, per-channel weights, static activations), observed on calibration inputs,
converted to quantise/dequantise pairs (`convert_pt2e`), and lowered the same way; XNNPACK
runs the pairs as int8 kernels. On ONNX Runtime, int8 is its static quantisation (QDQ,
per-channel weights) of the float32 ONNX file, calibrated the same way.

A candidate a runtime cannot take (an operator torch.export cannot capture, one ExecuTorch has
no kernel for, a node XNNPACK refuses to compile) raises `NotDeployable` with the reason,
which the search records as the candidate's rejection; it never ends a search.

ExecuTorch is the optional `executorch` extra (`pip install -e '.[executorch]'`); without it
every other device works and these functions say what to install.
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = [
    "Delegation",
    "Lowered",
    "NotDeployable",
    "check_executorch",
    "executorch_version",
    "load_executorch",
    "lower_executorch",
    "onnx_int8",
    "quantize_pt2e",
    "random_calibration",
    "unshare_weights",
    "Example",
]

INSTALL_HINT = "pip install 'lightweight-vit[executorch]' (or pip install -e '.[executorch]')"


class NotDeployable(ValueError):
    """The runtime cannot run this model; `reason` says why in one line."""

    def __init__(self, runtime: str, reason: str) -> None:
        super().__init__(f"{runtime} cannot run this model: {reason}")
        self.runtime = runtime
        self.reason = reason


def _import_executorch() -> None:
    """Import ExecuTorch and torchao once, without the deprecation line torchao's import logs
    through torch's pytree logger (`KernelPreference ... register_constant()`), which is
    theirs to fix and not our users' to read."""
    logger = logging.getLogger("torch.utils._pytree")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import executorch.exir  # noqa: F401
        import executorch.runtime  # noqa: F401
        import torchao.quantization.pt2e  # noqa: F401
    finally:
        logger.setLevel(level)


def check_executorch() -> None:
    """Raise ValueError with the install command when ExecuTorch is not installed."""
    try:
        _import_executorch()
    except ImportError:
        raise ValueError(
            f"device 'executorch' needs the executorch extra: {INSTALL_HINT}"
        ) from None


def executorch_version() -> str:
    from importlib.metadata import version

    return version("executorch")


@contextlib.contextmanager
def native_stderr() -> Iterator[io.StringIO]:
    """Capture what native code writes to file descriptor 2 (ExecuTorch's C++ log: thread
    pool resets, CPU probing, and the lines that say why a program does not load) instead of
    letting it reach the user's terminal; the text is in the yielded buffer afterwards."""
    text = io.StringIO()
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2: nothing to capture
        yield text
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield text
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text.write(tmp.read().decode(errors="replace"))


_LOG_LINE = re.compile(r"^\S* ?\[[^\]]+\] ?(.*)$")


def _why(log: str) -> str:
    """The telling lines of an ExecuTorch log, joined: missing operators, compile failures."""
    keep = []
    for line in log.splitlines():
        match = _LOG_LINE.match(line.strip())
        message = (match.group(1) if match else line).strip()
        if re.search(r"Missing operator|Failed to create|not found|failed", message):
            if message not in keep:
                keep.append(message)
    return "; ".join(keep[:3])


@dataclass(frozen=True)
class Delegation:
    """How much of a lowered graph the delegate runs: its nodes, the nodes left to the
    portable kernels (`fallback`, operator -> count; `getitem` bookkeeping not counted) and
    the number of delegated subgraphs."""

    delegated: int
    fallback: int
    subgraphs: int
    fallback_ops: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Lowered:
    """An ExecuTorch program (the bytes of a `.pte`) and how it was made."""

    buffer: bytes
    dtype: str
    delegation: Delegation
    calibration: str = ""


Example = torch.Tensor | tuple[torch.Tensor, ...]  # a model's input, or its inputs


def _as_tuple(example: Example) -> tuple[torch.Tensor, ...]:
    return example if isinstance(example, tuple) else (example,)


def random_calibration(example: Example, n: int = 8, seed: int = 0) -> list[Example]:
    """`n` seeded standard-normal inputs shaped like `example` (a tensor, or a tuple of them
    for a model of several inputs): enough to calibrate a model whose int8 latency is wanted
    (latency does not depend on the values), never its accuracy: that calibrates on training
    images."""
    generator = torch.Generator().manual_seed(seed)

    def draw(x: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.shape, generator=generator)

    if isinstance(example, tuple):
        return [tuple(draw(x) for x in example) for _ in range(n)]
    return [draw(example) for _ in range(n)]


def unshare_weights(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Give every use of a weight after the first its own copy, in place. A block run twice
    (the two passes of a dynamically resized model) reads its weights twice, and XNNPACK's
    int8 compiler refuses a quantised weight shared by two convolutions
    (`xnn_status_invalid_parameter`); copies make the same computation it accepts, at the
    cost of a larger program."""
    for node in list(gm.graph.nodes):
        if node.op != "get_attr" or len(node.users) < 2:
            continue
        value = gm
        for part in node.target.split("."):
            value = getattr(value, part)
        if not isinstance(value, torch.Tensor):
            continue
        for k, user in enumerate(list(node.users)[1:], 1):
            name = f"{node.target.replace('.', '_')}_use{k}"
            copy = value.detach().clone()
            if isinstance(value, nn.Parameter):
                gm.register_parameter(name, nn.Parameter(copy, requires_grad=False))
            else:
                gm.register_buffer(name, copy)
            with gm.graph.inserting_before(user):
                new = gm.graph.get_attr(name)
            new.meta = dict(node.meta)
            user.replace_input_with(node, new)
    gm.graph.lint()
    gm.recompile()
    return gm


def _export(
    model: nn.Module, example: Example, runtime: str, dynamic_shapes: Any = None
) -> torch.export.ExportedProgram:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.export(model, _as_tuple(example), dynamic_shapes=dynamic_shapes)
    except Exception as e:  # an operator or control flow torch.export cannot capture
        raise NotDeployable(runtime, f"torch.export failed: {_first_line(e)}") from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def quantize_pt2e(
    model: nn.Module,
    example: Example,
    calibration: Iterable[Example],
    dynamic_batch: bool = False,
) -> torch.fx.GraphModule:
    """`model` quantised to int8 for XNNPACK by the PT2E flow: exported, its shared weights
    unshared (`unshare_weights`), annotated by `XNNPACKQuantizer` (symmetric, per-channel),
    observed on every input of `calibration` (each shaped like `example`) and converted. The
    result runs in torch with quantise/dequantise pairs, i.e. it computes what the int8
    program computes; `lower_executorch` lowers it. `dynamic_batch`: exported for any batch
    size (the example's batch must then be at least 2), to measure int8 accuracy in batches."""
    _import_executorch()
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer()
    quantizer.set_global(get_symmetric_quantization_config(is_per_channel=True))
    batch = torch.export.Dim("batch", min=1, max=4096)
    shapes = tuple({0: batch} for _ in _as_tuple(example)) if dynamic_batch else None
    graph = unshare_weights(_export(model.eval(), example, "ExecuTorch", shapes).module())
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        prepared = prepare_pt2e(graph, quantizer)
        for x in calibration:
            prepared(*_as_tuple(x))
        converted = convert_pt2e(prepared)
    allow_exported_model_train_eval(converted)  # evaluation code calls eval(): harmless here
    return converted


def lower_executorch(
    model: nn.Module,
    example: Example,
    dtype: str = "float32",
    calibration: Iterable[Example] | None = None,
    calibration_label: str = "",
) -> Lowered:
    """`model` (eval mode, deployment form) lowered to an ExecuTorch program with the
    XNNPACK delegate for inputs shaped like `example` (a tensor, or a tuple of them); int8
    quantises first (`quantize_pt2e`, on `calibration`, by default `random_calibration`).
    Checks that the runtime has a kernel for every operator left outside the delegate and that
    the program loads. NotDeployable when any step fails."""
    _import_executorch()
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    if dtype not in ("float32", "int8"):
        raise ValueError(f"ExecuTorch measures float32 or int8 models, not {dtype}")
    if dtype == "int8":
        if calibration is None:
            calibration = random_calibration(example)
            calibration_label = calibration_label or "8 random normal inputs (latency only)"
        try:
            model = quantize_pt2e(model, example, calibration)
        except NotDeployable:
            raise
        except Exception as e:
            raise NotDeployable("ExecuTorch", f"int8 quantisation failed: {_first_line(e)}") from e
    program = _export(model, example, "ExecuTorch")
    try:
        with warnings.catch_warnings(), native_stderr():
            warnings.simplefilter("ignore")
            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
            delegation = _delegation(edge.exported_program().graph_module)
            executorch_program = edge.to_executorch()
    except Exception as e:
        raise NotDeployable("ExecuTorch", f"lowering failed: {_first_line(e)}") from e
    missing = _missing_kernels(executorch_program.exported_program().graph_module)
    if missing:
        raise NotDeployable(
            "ExecuTorch", "no kernel in this runtime for " + ", ".join(sorted(missing))
        )
    lowered = Lowered(executorch_program.buffer, dtype, delegation, calibration_label)
    load_executorch(lowered.buffer)  # a program XNNPACK cannot compile fails here
    return lowered


def _delegation(gm: torch.fx.GraphModule) -> Delegation:
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(gm)
    fallback: collections.Counter[str] = collections.Counter()
    for name, row in info.delegation_by_operator.items():
        if name != "getitem" and row.non_delegated:
            fallback[name.removeprefix("aten_")] = row.non_delegated
    return Delegation(
        delegated=info.num_delegated_nodes,
        fallback=sum(fallback.values()),
        subgraphs=info.num_delegated_subgraphs,
        fallback_ops=dict(fallback.most_common()),
    )


def _missing_kernels(gm: torch.fx.GraphModule) -> set[str]:
    """Operators of the program the installed runtime registers no kernel for (it would
    refuse to load the program with error 0x14, saying so only in its log)."""
    from executorch.runtime import Runtime

    registered = Runtime.get().operator_registry.operator_names
    needed = set()
    for node in gm.graph.nodes:
        schema = getattr(node.target, "_schema", None)
        if node.op == "call_function" and schema is not None:
            name = schema.name + (f".{schema.overload_name}" if schema.overload_name else "")
            if not name.startswith("executorch_prim::"):
                needed.add(name)
    return {name for name in needed if name not in registered}


def load_executorch(buffer: bytes, threads: int | None = None) -> Callable[..., Any]:
    """The program's `forward` loaded by ExecuTorch's runtime, as a callable on a tuple of
    input tensors; with `threads`, XNNPACK's thread pool is set to that many threads first
    (one pool per process). NotDeployable with the runtime's own reason when it refuses."""
    _import_executorch()
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    with native_stderr() as log:
        if threads is not None and portable_lib._threadpool_get_thread_count() != threads:
            portable_lib._unsafe_reset_threadpool(threads)
        try:
            program = Runtime.get().load_program(buffer)
            method = program.load_method("forward")
        except RuntimeError as e:
            failure: RuntimeError | None = e
        else:
            failure = None
    if failure is not None:
        raise NotDeployable(
            "ExecuTorch", f"the program does not load: {_why(log.getvalue()) or failure}"
        ) from failure
    return _Loaded(buffer, program, method)


class _Loaded:
    """A loaded method, holding what it reads in place: the runtime maps the program from
    the buffer without copying it, so both must live as long as the method."""

    def __init__(self, buffer: bytes, program: Any, method: Any) -> None:
        self.buffer, self.program, self.method = buffer, program, method

    def __call__(self, inputs: tuple[torch.Tensor, ...]) -> Any:
        return self.method.execute(inputs)


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """ONNX Runtime's quantiser logs advice on the root logger at WARNING for every weight."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def onnx_int8(fp32_path: str, int8_path: str, calibration: Iterable[Example]) -> None:
    """ONNX Runtime's static int8 quantisation of an ONNX file (QDQ format, per-channel
    symmetric int8 weights, int8 activations calibrated by min-max on `calibration`, each a
    tensor or a tuple of the file's inputs)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    names = [i.name for i in onnx.load(fp32_path, load_external_data=False).graph.input]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(
                [
                    {n: t.numpy() for n, t in zip(names, _as_tuple(x), strict=True)}
                    for x in calibration
                ]
            )

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), _quiet_logging():
        warnings.simplefilter("ignore")
        prepared = os.path.join(tmp, "prepared.onnx")
        try:
            quant_pre_process(fp32_path, prepared, skip_symbolic_shape=True)
        except Exception:  # pre-processing only helps; quantise the file as it is
            prepared = fp32_path
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                prepared,
                int8_path,
                Reader(),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
            )
