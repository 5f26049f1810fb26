"""Make fairseq 0.12 run under torch >= 2.6 and NumPy 2. Applied once, at plugin import.

- torch >= 2.6 loads checkpoints with ``weights_only=True``. fairseq checkpoints of legacy
  (argparse) models pickle an ``argparse.Namespace``, and the multi-GPU resume broadcast
  unpickles omegaconf containers. We allowlist exactly those classes, and only while fairseq
  loads a checkpoint (``checkpoint_utils.load_checkpoint_to_cpu``) or broadcasts one
  (``distributed.utils.broadcast_object``): a user's other ``torch.load`` calls see torch's own
  list, and entries the user added stay. The protection stays on for everything else
  (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is never needed). Where fairseq's checkpoint loading is
  still refused (a class outside the allowlist), the error says what to do. A torch without
  ``get_safe_globals`` (< 2.5) loads with ``weights_only=False`` by default and needs none.
- NumPy 2 removed ``np.compat.long``, ``np.int`` and ``np.float``, which fairseq's data code
  still uses; we restore them as the aliases they always were.
- fairseq's torchrun set-up divides by the number of GPUs; on CPU it uses device 0 instead.
- Precision flags fairseq cannot honour on this machine fail at once with what to use instead,
  not deep in fairseq's trainer (``--bf16`` means TPU in fairseq 0.12; ``--fp16`` needs CUDA).
"""

import argparse
import collections
import contextlib
import functools
import os
import pickle
import re
import types
import typing

import numpy as np
import torch


def _safe_globals():
    """The classes a fairseq checkpoint (or its distributed broadcast) legitimately pickles."""
    from omegaconf import DictConfig, ListConfig
    from omegaconf.base import ContainerMetadata, Metadata
    from omegaconf.nodes import AnyNode

    classes = [argparse.Namespace, DictConfig, ListConfig, ContainerMetadata, Metadata, AnyNode,
               typing.Any, collections.defaultdict,
               dict, list, int]  # types that omegaconf metadata names as key/object types
    try:
        from fairseq.distributed.utils import _TensorPlaceholder
        classes.append(_TensorPlaceholder)
    except ImportError:  # pragma: no cover - older fairseq without the helper
        pass
    return classes


@contextlib.contextmanager
def fairseq_checkpoint_classes():
    """Within the block, torch's weights_only loading also allows the classes of fairseq
    checkpoints; on leaving it, torch's allowlist is what it was before (entries added inside the
    block by others stay; those the block added go, unless they were there before). torch's own
    ``safe_globals`` context manager would remove on exit entries the user had added already."""
    serialization = torch.serialization
    if not hasattr(serialization, "get_safe_globals"):  # torch < 2.5: nothing to allow
        yield
        return
    before = serialization.get_safe_globals()
    added = [c for c in _safe_globals() if c not in before]
    serialization.add_safe_globals(added)
    try:
        yield
    finally:
        kept = [c for c in serialization.get_safe_globals() if c not in added]
        serialization.clear_safe_globals()
        serialization.add_safe_globals(kept)


def allow_fairseq_checkpoints():
    """fairseq's checkpoint loading and the distributed broadcast of a loaded checkpoint run
    inside ``fairseq_checkpoint_classes``."""
    from fairseq import checkpoint_utils
    from fairseq.distributed import utils as distributed_utils

    for module, name in ((checkpoint_utils, "load_checkpoint_to_cpu"),
                         (distributed_utils, "broadcast_object")):
        function = getattr(module, name)
        if not getattr(function, "allows_fairseq_classes", False):
            setattr(module, name, with_fairseq_checkpoint_classes(function))


def with_fairseq_checkpoint_classes(function):
    @functools.wraps(function)
    def allowed(*args, **kwargs):
        with fairseq_checkpoint_classes():
            return function(*args, **kwargs)

    allowed.allows_fairseq_classes = True
    return allowed


REFUSED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def refusal_message(path, refused: str) -> str:
    """What to do when torch's weights_only loading refuses the class ``refused`` in a
    checkpoint, in a process where the plugin (and so its allowlist) is loaded."""
    return (
        f"{path}: torch's safe checkpoint loading (weights_only=True) refused {refused}, which "
        "is not among the classes of fairseq checkpoints that fairseq-mixtape allows "
        "(argparse.Namespace, omegaconf containers). Every process that loads a fairseq "
        "checkpoint needs the plugin loaded first: pass "
        "--user-dir \"$(python -m fairseq_mixtape)\" to fairseq's tools, or "
        "`import fairseq_mixtape` before loading in Python. Where it is, the checkpoint holds "
        "something else: only if you trust its source, allow that class with "
        f"torch.serialization.add_safe_globals([{refused}]) before loading. "
        "See docs/troubleshooting.md; torch's own message is above.")


def explain_refused_checkpoints():
    """fairseq's ``checkpoint_utils.load_checkpoint_to_cpu`` (fairseq-train's resume,
    fairseq-generate, fairseq-eval-lm, from_pretrained, ...) re-raises torch's weights_only
    refusal of a pickled class as an UnpicklingError that names the fix, the original chained (other
    errors, such as a damaged file, pass unchanged)."""
    from fairseq import checkpoint_utils

    load = checkpoint_utils.load_checkpoint_to_cpu
    if getattr(load, "explains_refusal", False):
        return

    @functools.wraps(load)
    def explained_load(path, *args, **kwargs):
        try:
            return load(path, *args, **kwargs)
        except pickle.UnpicklingError as error:
            refused = REFUSED_GLOBAL.search(str(error))
            if refused is None:
                raise
            raise pickle.UnpicklingError(refusal_message(path, refused.group(1))) from error

    explained_load.explains_refusal = True
    checkpoint_utils.load_checkpoint_to_cpu = explained_load


def restore_numpy_aliases():
    compat = np.__dict__.get("compat") or types.SimpleNamespace()  # gone entirely in NumPy >= 2.4
    if not hasattr(compat, "long"):
        compat.long = int
    np.compat = compat
    for name, alias in (("int", int), ("float", float)):
        if name not in np.__dict__:
            setattr(np, name, alias)


def allow_cpu_torchrun():
    """fairseq's torchrun / torch.distributed.launch set-up computes the device as
    ``rank % torch.cuda.device_count()``: a ZeroDivisionError on CPU-only machines, where
    data-parallel training (gloo) is otherwise fine. Without GPUs, every process uses device 0."""
    from fairseq.distributed import utils as distributed_utils

    infer_on_gpu = distributed_utils._infer_torch_distributed_launch_init
    if getattr(infer_on_gpu, "cpu_safe", False):
        return

    def infer(cfg):
        if torch.cuda.device_count() > 0:
            return infer_on_gpu(cfg)
        cfg.distributed_init_method = "env://"
        cfg.distributed_world_size = int(os.environ["WORLD_SIZE"])
        cfg.distributed_rank = int(os.environ["RANK"])
        cfg.device_id = 0
        cfg.distributed_no_spawn = True  # the processes are torchrun's

    infer.cpu_safe = True
    distributed_utils._infer_torch_distributed_launch_init = infer


def check_precision_flags(common) -> None:
    """A ValueError naming the flag where fairseq would crash on it: ``--bf16`` (fairseq 0.12
    implements it for TPUs only: it sets ``--tpu`` and calls torch_xla) and ``--fp16`` without a
    CUDA device (fairseq's FP16Optimizer keeps its float32 master copy on ``cuda``)."""
    import importlib.util

    if common.bf16 and importlib.util.find_spec("torch_xla") is None:
        raise ValueError(
            "--bf16: fairseq 0.12 trains in bfloat16 only on TPUs (--bf16 implies --tpu and needs "
            "torch_xla, not installed here). On a GPU use --fp16 or --amp; on CPU, "
            "--memory-efficient-fp16 (float16 weights) or float32. The output layers keep their "
            "normalisation in float32 under any of them.")
    on_cpu = common.cpu or not torch.cuda.is_available()
    if common.fp16 and not common.memory_efficient_fp16 and on_cpu:
        raise ValueError(
            "--fp16: fairseq's FP16 optimizer needs a CUDA device (none is used here: "
            f"{'--cpu is set' if common.cpu else 'torch sees no GPU'}). On CPU use "
            "--memory-efficient-fp16, or train in float32.")


def check_precision_before_training():
    """Run check_precision_flags when fairseq-train builds its Trainer."""
    from fairseq import trainer

    init = trainer.Trainer.__init__
    if getattr(init, "precision_checked", False):
        return

    def checked_init(self, cfg, *args, **kwargs):
        check_precision_flags(cfg.common)
        init(self, cfg, *args, **kwargs)

    checked_init.precision_checked = True
    trainer.Trainer.__init__ = checked_init


def apply():
    allow_fairseq_checkpoints()
    explain_refused_checkpoints()
    restore_numpy_aliases()
    allow_cpu_torchrun()
    check_precision_before_training()
