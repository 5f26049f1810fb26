"""Make fairseq 0.12 run under torch >= 2.6 and NumPy 2. Applied once, at plugin import.

- torch >= 2.6 loads checkpoints with ``weights_only=True``. fairseq checkpoints of legacy
  (argparse) models pickle an ``argparse.Namespace``, and the multi-GPU resume broadcast
  unpickles omegaconf containers. We allowlist exactly those classes; the protection stays on
  for everything else (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is never needed).
- NumPy 2 removed ``np.compat.long``, ``np.int`` and ``np.float``, which fairseq's data code
  still uses; we restore them as the aliases they always were.
"""

import argparse
import collections
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


def allow_fairseq_checkpoints():
    if hasattr(torch.serialization, "add_safe_globals"):
        torch.serialization.add_safe_globals(_safe_globals())


def restore_numpy_aliases():
    compat = np.__dict__.get("compat") or types.SimpleNamespace()  # gone entirely in NumPy >= 2.4
    if not hasattr(compat, "long"):
        compat.long = int
    np.compat = compat
    for name, alias in (("int", int), ("float", float)):
        if name not in np.__dict__:
            setattr(np, name, alias)


def apply():
    allow_fairseq_checkpoints()
    restore_numpy_aliases()
