"""``--compile-output-layer``: a function run through ``torch.compile``, or eagerly where that fails.

    layer_forward = Compiled(layer.forward, "the output layer")
    scores = layer_forward(features)

Shapes are dynamic (``dynamic=True``): the batch and length dimensions are symbolic, so fairseq's
varying batch shapes reuse one compiled graph (equal sizes are not assumed to stay equal). torch
specialises sizes of 1, so a batch of one sequence, or of length one (incremental decoding), gets
a graph of its own: at most 4 per mode (training; evaluation with and without gradients). Where
compiling fails, or a function would need more than ``RECOMPILE_LIMIT`` graphs, one warning names
the flag and the reason, and the function runs eagerly from then on, with the same results.

torch.compile keeps its graphs per code object: every layer of one class shares them, and a
process that builds many layers of one class (a benchmark, a test) calls ``torch._dynamo.reset()``
between them.
"""

import logging
from typing import Callable, Optional

import torch
import torch.fx.experimental._config  # noqa: F401  (use_duck_shape, patched per call)

logger = logging.getLogger(__name__)

FLAG = "--compile-output-layer"
RECOMPILE_LIMIT = 16  # graphs per function: modes x sizes of 1 (batch, length), with room


class Compiled:
    """``fn`` through ``torch.compile(fn, dynamic=True)``, with at most ``RECOMPILE_LIMIT``
    graphs and a fallback to ``fn`` itself (eager) after one warning naming ``FLAG``."""

    def __init__(self, fn: Callable, what: str):
        self.fn = fn
        self.what = what
        self.failure: Optional[str] = None  # why it runs eagerly; None while compiled
        try:  # torch.compile itself raises where it cannot run (e.g. an older torch on a newer
            self.compiled = torch.compile(fn, dynamic=True)  # Python)
        except Exception as error:  # noqa: BLE001  (whatever it raises: warn, run eagerly)
            self.compiled = None
            self.fall_back(error)
        quiet_file_locks()

    def __call__(self, *args, **kwargs):
        if self.failure is None:
            try:
                with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT,
                                                fail_on_recompile_limit_hit=True), \
                        torch.fx.experimental._config.patch(use_duck_shape=False):
                    return self.compiled(*args, **kwargs)
            except compile_errors() as error:
                self.fall_back(error)
        return self.fn(*args, **kwargs)

    def fall_back(self, error: Exception):
        self.failure = describe(error)
        logger.warning("%s: compiling %s failed (%s); it runs eagerly from now on, with the "
                       "same results", FLAG, self.what, self.failure)

    def __getstate__(self):
        # a compiled function cannot be copied (copy.deepcopy, e.g. fairseq's --ema, or pickle):
        # a copy compiles afresh
        return {"fn": self.fn, "what": self.what, "failure": self.failure}

    def __setstate__(self, state):
        self.__init__(state["fn"], state["what"])
        self.failure = state["failure"]


def quiet_file_locks():
    """Importing fairseq leaves the root logger at DEBUG, where the compiler's cache locks
    (``filelock``) would log every acquire and release: they log warnings only, unless a level
    was set for them."""
    locks = logging.getLogger("filelock")
    if locks.level == logging.NOTSET:
        locks.setLevel(logging.WARNING)


def compile_errors():
    """What torch.compile raises where it cannot compile (the recompile limit's error is not a
    TorchDynamoException); torch._dynamo is imported only where something is compiled."""
    import torch._dynamo.exc as exc

    return exc.TorchDynamoException, exc.FailOnRecompileLimitHit


def describe(error: Exception) -> str:
    """The error's type and first line, and those of the error it wraps (a compiler backend's
    own error), at most 300 characters."""
    def first_line(e):
        lines = str(e).strip().splitlines()
        return f"{type(e).__name__}: {lines[0] if lines else ''}"

    inner = getattr(error, "inner_exception", None) or error.__cause__
    text = first_line(error) + (f" ({first_line(inner)})" if inner is not None else "")
    return text[:300]
