"""Any output layer of this package on a Hugging Face ``transformers`` causal LM, in place of its
``lm_head``. Needs ``transformers``; the package's ``__init__`` does not import this module.

    from transformers import AutoModelForCausalLM
    from fairseq_mixtape.huggingface import load_with_output_layer, with_output_layer

    model = AutoModelForCausalLM.from_pretrained("gpt2")
    model = with_output_layer(model, "mixtape", token_counts=counts)  # in place; counts: (V,)
    out = model(input_ids, labels=input_ids)        # out.loss: the layer's exact NLL, chunked
    model.generate(input_ids, num_beams=4)          # greedy, beam search, sampling: unchanged
    model.save_pretrained(path)
    model = load_with_output_layer(path)            # the same model, exactly

What the model computes (``OutputLayerModel.output_layer_forward``):

- The layer reads the last hidden state g (width d = the old ``lm_head``'s input width,
  ``config.hidden_size``) and maps it to log p(x | g) for every token id x.
- ``.logits`` holds those log-probabilities, float32, so their log_softmax is themselves (up to
  rounding): ``generate``'s greedy choice, beam scores, sampling and temperature then act on the
  layer's distribution, and ``output_scores`` gives log-probabilities.
- Given ``labels``, ``.loss`` is the layer's exact NLL of the next tokens, shifted as Hugging
  Face shifts (position t predicts ``labels[:, t+1]``, -100 ignored), the mean over the predicted
  tokens (or the sum over ``num_items_in_batch``, as the Trainer asks). It is computed by
  ``losses.chunked_token_losses``, a chunk of whole sequences at a time under activation
  checkpointing, so MoS's K x V component scores exist for one chunk at a time and its whole
  (B, T, V) mixture never does. Then, in training mode, ``.logits`` is None (the loss alone
  trains; ask without ``labels`` for the log-probabilities); in eval mode it holds the
  log-probabilities, without gradient, also computed a chunk at a time.
- The output embedding is the model's input embedding where the model ties them
  (``config.tie_word_embeddings``), otherwise the old ``lm_head``'s weight, which the layer
  takes over as its own. So ``output_layer="softmax"`` gives exactly the model's old distribution.

Mixtape's own-gate tokens on a vocabulary that is not sorted by frequency (BPE) are chosen by
``token_counts`` or ``frequent_token_ids`` and realised exactly by a fixed permutation of the
vocabulary (``OutputLayerHead``).

Saving and loading: ``save_pretrained`` writes the layer's settings in config.json under the key
``fairseq_mixtape`` and marks the file's ``model_type`` as ``fairseq_mixtape``;
``load_with_output_layer`` reads it back (also the settings that earlier versions saved under
former names: ``output_layers.upgraded_settings``). Compiling the layer
(``compile_output_layer=True``) is a choice of each process, given to ``with_output_layer`` or
``load_with_output_layer``, and not saved. ``transformers``' own ``AutoConfig`` and
``AutoModelForCausalLM`` refuse such a checkpoint: with this module imported, with a message that
names ``load_with_output_layer``; without it, as a model type they do not know. Either way they
never load the body and silently drop the output layer. (A model class named directly, e.g.
``GPT2LMHeadModel.from_pretrained``, does not read ``model_type``: it warns about the type and
the unused ``lm_head.layer.*`` weights, and runs the stock head.)
"""

import dataclasses
import inspect
import json
import os
import sys
from functools import lru_cache
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from transformers import AutoConfig, PretrainedConfig
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.utils import ModelOutput

from .losses import chunked_token_losses, default_chunk_tokens, rows_per_chunk
from .output_layers import (OutputLayer, OutputLayerConfig, build_output_layer, check_option,
                            upgraded_settings)
from .output_layers.mixtape import Mixtape, resolve_frequent_tokens, sigmoid_tree_paths

CONFIG_KEY = "fairseq_mixtape"   # config.json: the layer's settings
MODEL_TYPE = "fairseq_mixtape"   # config.json's model_type once saved: stock loaders refuse it
LOADER = "fairseq_mixtape.huggingface.load_with_output_layer"
IGNORE_INDEX = -100              # Hugging Face's label for "no loss here"
HUB_ARGUMENTS = ("cache_dir", "force_download", "local_files_only", "token", "revision",
                 "subfolder")


# ---------------------------------------------------------------------------------------------
# The head: the layer, the vocabulary order it works in, and the loss


class OutputLayerHead(nn.Module):
    """The model's ``lm_head``: hidden states (..., d) -> log p(x | g) (..., V) for every token x.

    ``layer`` is the output layer; ``token_order``, where present, is a fixed permutation o of
    the V token ids (a persistent buffer, saved with the model) in which the layer works.
    Mixtape gives its own gates to the layer's first S positions 0 .. S-1 (``Mixtape.frequent_ids``
    with a = 0), so the token ids o_0 .. o_{S-1} get their own gates. With r = o^-1
    (r_{o_i} = i), w_x the output embedding row and b_x the bias of token id x (both stored in
    token-id order: row x is token x's), and L' the layer run on the reordered rows
    w'_i = w_{o_i}, b'_i = b_{o_i}:

        s(g)_x = L'(g)_{r_x}        log p(x | g) = log_softmax(s(g))_x = log_softmax(L'(g))_{r_x}

    so token x owns gates iff r_x < S, with gate embedding v = ``layer.gate_embed[r_x]`` and gate
    biases ``layer.gate_bias[r_x]``, and the layer is exactly Mixtape over a vocabulary whose first
    S ids are o_0 .. o_{S-1}. The reordered rows are gathered once per call (``ordered_tensors``),
    so gradients reach the stored (tied or own) rows. Without ``token_order``, o is the identity.
    """

    def __init__(self, layer: OutputLayer, token_order: Optional[torch.Tensor] = None,
                 chunk_tokens: Optional[int] = None):
        super().__init__()
        self.layer = layer
        if token_order is not None:
            self.register_buffer("token_order", token_order)
        else:
            self.token_order = None
        self.chunk_tokens = chunk_tokens

    @property
    def frequent_token_ids(self) -> list:
        """The token ids with their own gates, in gate order: o_0 .. o_{S-1} (Mixtape; else [])."""
        frequent = getattr(self.layer, "frequent", 0)
        if self.token_order is None:
            return list(range(frequent))
        return self.token_order[:frequent].tolist()

    def token_rank(self) -> torch.Tensor:
        """r = o^-1: r[x] is token id x's position in the layer's order."""
        order = self.token_order
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel(), device=order.device)
        return rank

    def ordered_tensors(self) -> Dict[str, torch.Tensor]:
        """The layer's per-token tensors in its order: w'_i = w_{o_i}, and b'_i = b_{o_i}."""
        tensors = {"weight": self.layer.weight.index_select(0, self.token_order)}
        if self.layer.bias is not None:
            tensors["bias"] = self.layer.bias.index_select(0, self.token_order)
        return tensors

    def ordered_layer(self):
        """What ``chunked_token_losses`` runs: the layer itself, or with o, the layer on the
        reordered rows, gathered once here (outside the checkpointed chunks, so that their
        recomputation in backward sees the same tensor)."""
        if self.token_order is None:
            return self.layer
        return ReorderedLayer(self.layer, self.ordered_tensors())

    def scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """s(g) (..., V) in token-id order, whose log_softmax is log p (Mixtape's: logits)."""
        if self.token_order is None:
            return self.layer(hidden)
        return self.ordered_layer().forward(hidden).index_select(-1, self.token_rank())

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """log p(x | g) (..., V), float32: log_softmax of the scores, or the scores themselves
        for the layers that return log-probabilities (MoS)."""
        scores = self.scores(hidden).float()
        return scores if self.layer.scores_are_log_probs else F.log_softmax(scores, dim=-1)

    def log_probs_without_grad(self, hidden: torch.Tensor) -> torch.Tensor:
        """``forward`` of hidden (B, T, d) without gradient, a chunk of whole sequences at a time
        (the chunks of ``chunked_token_losses``): MoS's K x V scores exist for one chunk only."""
        chunk_tokens = self.chunk_tokens
        if chunk_tokens is None:
            chunk_tokens = default_chunk_tokens(self.layer.scores_per_position)
        rows = rows_per_chunk(hidden.shape[0], hidden.shape[1], chunk_tokens)
        with torch.no_grad():
            return torch.cat([self(chunk) for chunk in hidden.split(rows)])

    def next_token_loss(self, hidden: torch.Tensor, labels: Optional[torch.Tensor] = None,
                        shift_labels: Optional[torch.Tensor] = None,
                        num_items_in_batch=None) -> torch.Tensor:
        """Hugging Face's causal LM loss with the layer's exact NLL: position t of hidden
        (B, T, d) predicts y_t = ``labels[:, t+1]`` (or ``shift_labels[:, t]`` where given); the
        last position and labels -100 predict nothing. Returns

            sum_t -log p(y_t | g_t) / N,   N = ``num_items_in_batch`` or the number of y_t != -100

        computed by ``chunked_token_losses`` (exact, chunked, checkpointed; NaN for N = 0, as
        Hugging Face's mean over no tokens)."""
        if shift_labels is None:
            hidden, targets = hidden[:, :-1], labels[:, 1:]
        else:
            targets = shift_labels
        ignored = targets.eq(IGNORE_INDEX)
        targets = targets.masked_fill(ignored, 0)         # a valid id; its loss is zeroed below
        if self.token_order is not None:
            targets = self.token_rank()[targets]
        # padding_idx -1 matches no id: the -100 positions are masked here, not by the id they hold
        nll = chunked_token_losses(self.ordered_layer(), hidden, targets, padding_idx=-1,
                                   chunk_tokens=self.chunk_tokens).nll
        total = nll.masked_fill(ignored, 0.0).sum()
        if num_items_in_batch is None:
            return total / (~ignored).sum()
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(total.device)
        return total / num_items_in_batch

    def extra_repr(self) -> str:
        return "token order: the own-gate ids first" if self.token_order is not None else ""


class ReorderedLayer:
    """An output layer run with some of its tensors replaced (``functional_call``), for
    ``chunked_token_losses``: ``forward``, ``scores_per_position``, an eager ``compiled_forward``
    of None and ``direct_target_log_probs`` False are all that it reads of a layer whose
    targets' log-probabilities come from its ``forward``."""

    compiled_forward = None
    direct_target_log_probs = False

    def __init__(self, layer: OutputLayer, tensors: Dict[str, torch.Tensor]):
        check_option(not layer.direct_target_log_probs, "token order", layer.name,
                     "a layer whose target_log_probs come from its forward (mixtape)")
        self.layer = layer
        self.tensors = tensors

    @property
    def scores_per_position(self) -> int:
        return self.layer.scores_per_position

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return functional_call(self.layer, self.tensors, (features,))


def frequency_order(num_tokens: int, frequent: int, frequent_token_ids=None,
                    token_counts=None) -> Optional[torch.Tensor]:
    """The token order o (V,) whose first S entries are the own-gate ids, then every other id in
    increasing order: the S = ``frequent`` ids of largest ``token_counts`` (a count per id,
    ties to the smaller id), or ``frequent_token_ids`` as listed. None where neither is given."""
    if frequent_token_ids is None and token_counts is None:
        return None
    if frequent_token_ids is not None:
        chosen = [int(x) for x in frequent_token_ids]
        check_option(all(0 <= x < num_tokens for x in chosen), "frequent_token_ids", chosen,
                     f"token ids in [0, {num_tokens})")
        check_option(len(set(chosen)) == len(chosen), "frequent_token_ids", chosen,
                     "distinct token ids")
        chosen = torch.tensor(chosen, dtype=torch.long)
    else:
        counts = torch.as_tensor(token_counts).double().flatten()
        check_option(counts.numel() == num_tokens, "token_counts (length)", counts.numel(),
                     f"one count per token id: {num_tokens}")
        check_option(bool(torch.isfinite(counts).all() and (counts >= 0).all()), "token_counts",
                     "a negative or non-finite count", "finite counts >= 0")
        chosen = torch.sort(-counts, stable=True).indices[:frequent]  # stable: ties to smaller ids
    rest = torch.ones(num_tokens, dtype=torch.bool)
    rest[chosen] = False
    return torch.cat([chosen, rest.nonzero().squeeze(1)])


# ---------------------------------------------------------------------------------------------
# Building the head on a model


def layer_config(output_layer: str, config_fields: dict) -> OutputLayerConfig:
    names = [f.name for f in dataclasses.fields(OutputLayerConfig) if f.name != "output_layer"]
    for name in config_fields:
        check_option(name in names, "with_output_layer keyword", name,
                     "frequent_token_ids, token_counts, chunk_tokens, compile_output_layer, or "
                     f"a field of OutputLayerConfig: {', '.join(names)}")
    return OutputLayerConfig(output_layer=output_layer, **config_fields)


def head_name(model) -> str:
    """The attribute path of the model's output embedding (``lm_head`` for most models)."""
    head = model.get_output_embeddings()
    return next(name for name, module in model.named_modules() if module is head)


def is_tied(model) -> bool:
    return bool(getattr(model.config.get_text_config(), "tie_word_embeddings", False))


def stock_head(model) -> nn.Linear:
    """The model's ``lm_head``: an nn.Linear from the hidden state (d) to the vocabulary (V)."""
    head = model.get_output_embeddings()
    check_option(isinstance(head, nn.Linear), "the model's lm_head", type(head).__name__,
                 "an nn.Linear from the hidden state to the vocabulary (a stock causal LM)")
    return head


def build_head(model, spec: dict, frequent_token_ids=None, token_counts=None,
               loading: bool = False) -> OutputLayerHead:
    """The head for the model's stock ``lm_head`` (an nn.Linear d -> V), per ``spec``.

    Fresh (``loading`` False): built on the old head's device, the context scale matched as the
    core layer does it (in float32), the token order from the counts or ids. For loading (inside
    ``from_pretrained``, on the meta device): the same shapes, with placeholders for the context
    scale and the token order, which the checkpoint's buffers then replace."""
    old = stock_head(model)
    hidden_dim, num_tokens = old.in_features, old.out_features
    weight = model.get_input_embeddings().weight if is_tied(model) else old.weight
    check_option(weight.shape[0] == num_tokens, "input embedding rows (tied output embedding)",
                 weight.shape[0], f"the lm_head's vocabulary size {num_tokens}")
    cfg = OutputLayerConfig(**spec["output_layer"])
    placeholder_scale = loading and cfg.output_context_scale is None
    if placeholder_scale:
        cfg.output_context_scale = 1.0          # the checkpoint's context_scale buffer replaces it
    reference = weight.detach().float()         # the float32 rows the build computes with
    with torch.device(weight.device):
        layer = build_output_layer(cfg, hidden_dim, num_tokens,
                                   embed_weight=nn.Parameter(reference, requires_grad=False))
    if placeholder_scale:
        layer.configured_scale = None
    layer.weight = weight                       # the model's Parameter: tied or the old head's
    if layer.bias is not None and old.bias is not None:
        layer.bias.data.copy_(old.bias.detach())
    layer.to(dtype=weight.dtype)
    order = None
    if spec["token_order"]:
        order = torch.arange(num_tokens, device=weight.device) if loading else frequency_order(
            num_tokens, layer.frequent, frequent_token_ids, token_counts).to(weight.device)
    return OutputLayerHead(layer, order, spec["chunk_tokens"])


def attach_head(model, head: OutputLayerHead):
    """Put ``head`` in place of the model's ``lm_head``, and tie ``head.layer.weight`` to the
    input embedding in Hugging Face's books where the model ties (saving, loading, tie_weights)."""
    name = head_name(model)
    embedding = model.get_input_embeddings().weight
    tied = {}
    stock = getattr(type(model), "_tied_weights_keys", None)
    for key, source in (stock.items() if isinstance(stock, dict) else ()):
        if key != f"{name}.weight":
            tied[key] = source
    if is_tied(model):
        source = next(key for key, p in model.named_parameters(remove_duplicate=False)
                      if p is embedding and not key.startswith(f"{name}."))
        tied[f"{name}.layer.weight"] = source
    model.set_output_embeddings(head)
    model._tied_weights_keys = tied
    model.all_tied_weights_keys = model.get_expanded_tied_weights_keys(all_submodels=True)


def with_output_layer(model, output_layer: str = "mixtape", frequent_token_ids=None,
                      token_counts=None, chunk_tokens: Optional[int] = None,
                      compile_output_layer: bool = False, **config_fields):
    """Put the output layer ``output_layer`` (softmax, mos, mixtape, sigsoftmax, mos_sigsoftmax)
    on the ``transformers`` causal LM ``model`` in place of its ``lm_head``; returns the model,
    changed in place (its class becomes a subclass with this module's forward, see the module
    docstring). ``config_fields``: any field of ``OutputLayerConfig`` (output_components,
    output_bias, mixtape_frequent_tokens, ...).

    Mixtape's S own-gate tokens (S = ``mixtape_frequent_tokens``, a fraction of V or a count):
    with ``token_counts`` (one count per token id, e.g. from the training data), the S most
    frequent ids; with ``frequent_token_ids``, those ids (S = their number); with neither, the
    ids 0 .. S-1, right only where the ids are sorted by frequency. ``chunk_tokens``: target
    positions per chunk of the loss (``--output-chunk-tokens``; None: the core's default).
    ``compile_output_layer``: run the layer through torch.compile (``compile_head``), in this
    process only: it is not saved (``load_with_output_layer`` takes it again).
    """
    check_option(not isinstance(model, OutputLayerModel), "model", type(model).__name__,
                 "a stock transformers causal LM: this one has an output layer already")
    check_option(hasattr(model, "generate") and model.base_model is not model, "model",
                 type(model).__name__, "a transformers causal LM (an *ForCausalLM/*LMHeadModel "
                 "with a base model and an lm_head)")
    num_tokens = stock_head(model).out_features
    cfg = layer_config(output_layer, config_fields)
    given = [name for name, value in (("frequent_token_ids", frequent_token_ids),
                                       ("token_counts", token_counts)) if value is not None]
    check_option(len(given) <= 1, "frequent_token_ids and token_counts", "both",
                 "at most one of them")
    if given:
        check_option(cfg.output_layer == "mixtape", given[0], f"given with {cfg.output_layer}",
                     "only with output_layer='mixtape' (the layer with own-gate tokens)")
    if frequent_token_ids is not None:
        frequent_token_ids = list(frequent_token_ids)
        S = len(frequent_token_ids)
        if "mixtape_frequent_tokens" in config_fields:
            given_S = resolve_frequent_tokens(cfg.mixtape_frequent_tokens, num_tokens)
            check_option(given_S == S, "mixtape_frequent_tokens", cfg.mixtape_frequent_tokens,
                         f"unset, or the number of frequent_token_ids ({S})")
        cfg.mixtape_frequent_tokens = S
    check_option(chunk_tokens is None or (isinstance(chunk_tokens, int) and chunk_tokens >= 0),
                 "chunk_tokens", chunk_tokens,
                 "None (the default chunks), 0 (the whole batch) or a number of positions >= 1")
    spec = {"output_layer": dataclasses.asdict(cfg), "token_order": bool(given),
            "chunk_tokens": chunk_tokens}
    head = build_head(model, spec, frequent_token_ids, token_counts)
    frequent = getattr(head.layer, "frequent", 0)
    if given:
        check_option(frequent > 0, given[0], "given for a mixtape without own gates",
                     "mixtape with output_components >= 2 and mixtape_frequent_tokens > 0")
    if compile_output_layer:
        compile_head(head)
    if isinstance(head.layer, Mixtape):      # S as a count: the saved config rebuilds the same S
        spec["output_layer"]["mixtape_frequent_tokens"] = frequent
    base = type(model)
    spec.update(base_model_type=model.config.model_type, base_architecture=base.__name__,
                loader=LOADER)
    model.__class__ = output_layer_class(base)
    setattr(model.config, CONFIG_KEY, spec)
    attach_head(model, head)
    return model


def compile_head(head: OutputLayerHead) -> None:
    """``compile_output_layer=True``: from now on the head's layer runs through torch.compile
    (``OutputLayer.compile_forward``). Refused for a head with a token order, whose reordered
    layer runs eagerly."""
    check_option(head.token_order is None, "compile_output_layer", True,
                 "False with a token order (token_counts or frequent_token_ids): the reordered "
                 "layer runs eagerly")
    head.layer.compile_forward()


# ---------------------------------------------------------------------------------------------
# The model class: the stock class with this module's forward, saving and loading


class OutputLayerModel:
    """Mixed in before a stock causal LM class (``output_layer_class``): the forward that runs
    the body and the output layer, ``save_pretrained`` that marks the checkpoint,
    ``from_pretrained`` through ``load_with_output_layer``, and a refused resize."""

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)       # the stock model, with its lm_head
        spec = getattr(config, CONFIG_KEY, None)
        check_option(isinstance(spec, dict), f"config.{CONFIG_KEY}", spec,
                     "the output layer's settings, as with_output_layer saves them")
        # settings saved by earlier versions, under this version's names (saved so from now on)
        spec = {**spec, "output_layer": upgraded_settings(spec["output_layer"])}
        setattr(config, CONFIG_KEY, spec)
        attach_head(self, build_head(self, spec, loading=True))

    @property
    def output_layer(self) -> OutputLayer:
        return self.get_output_embeddings().layer

    def output_layer_forward(self, labels=None, logits_to_keep=0, return_dict=None,
                             num_items_in_batch=None, shift_labels=None, **body_arguments):
        """The stock model's arguments; runs the base model (the body), then the output layer.

        Returns the stock class's output type (``CausalLMOutputWithPast`` or the like): the
        body's outputs (cache, hidden states, attentions), and

        - ``logits``: log p(x | g) (B, positions, V), float32, for the last ``logits_to_keep``
          positions (0: all); given ``labels``: None in training mode, and in eval mode the
          log-probabilities without gradient, computed a chunk of sequences at a time;
        - ``loss`` (given ``labels`` or ``shift_labels``): the mean exact NLL of the next tokens
          over all positions, -100 ignored (``OutputLayerHead.next_token_loss``), chunked.
        """
        body = self.base_model
        body_outputs = body(**body_call_arguments(body, body_arguments))
        hidden = body_outputs.last_hidden_state
        head = self.get_output_embeddings()
        kept = keep_positions(hidden, logits_to_keep)
        loss = None
        if labels is None and shift_labels is None:
            logits = head(kept)
        else:
            loss = head.next_token_loss(hidden, labels, shift_labels, num_items_in_batch)
            logits = None if self.training else head.log_probs_without_grad(kept)
        output_type = lm_output_type(type(self))
        fields = {f.name: body_outputs[f.name] for f in dataclasses.fields(output_type)
                  if f.name not in ("loss", "logits") and f.name in body_outputs}
        output = output_type(loss=loss, logits=logits, **fields)
        if return_dict is None:
            return_dict = getattr(self.config, "return_dict", True)
        return output if return_dict else output.to_tuple()

    def save_pretrained(self, save_directory, *args, push_to_hub: bool = False, **kwargs):
        """The stock ``save_pretrained``, then config.json marked: ``model_type`` becomes
        ``fairseq_mixtape`` (stock loaders refuse it) and ``architectures`` the stock class; the
        layer's settings are under the key ``fairseq_mixtape``. ``push_to_hub=True`` is
        refused (it would upload before the mark): ``model.push_to_hub(repo)`` saves through this
        method."""
        check_option(not push_to_hub, "save_pretrained(push_to_hub=...)", push_to_hub,
                     "False: save, then upload; or call model.push_to_hub(repo_id), which "
                     "saves through this method")
        result = super().save_pretrained(save_directory, *args, **kwargs)
        path = os.path.join(save_directory, "config.json")
        if kwargs.get("is_main_process", True) and os.path.isfile(path):
            mark_saved_config(path)
        return result

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """The stock ``from_pretrained`` for a config that holds the layer's settings (use
        ``load_with_output_layer``), then the layer's derived buffers rebuilt."""
        model = super().from_pretrained(*args, **kwargs)
        rebuild_derived_buffers(model.output_layer)
        return model

    def resize_token_embeddings(self, *args, **kwargs):
        raise ValueError(
            f"resize_token_embeddings: refused for a model with a {self.output_layer.name} output "
            "layer (its output embedding, bias, gates and token order are per token id). Resize "
            "the stock model first, then call with_output_layer on it.")


def body_call_arguments(body, arguments: dict) -> dict:
    """The arguments the body accepts, with return_dict=True where it takes it: all where its
    forward takes **kwargs; a given (not None) argument it does not take is an error, an unset
    one is dropped."""
    parameters, any_keyword = forward_parameters(type(body))
    if any_keyword:
        return {**arguments, "return_dict": True}
    if "return_dict" in parameters:
        arguments = {**arguments, "return_dict": True}
    for name, value in arguments.items():
        check_option(value is None or name in parameters, "model argument", name,
                     f"an argument of {type(body).__name__}.forward")
    return {name: value for name, value in arguments.items() if name in parameters}


@lru_cache(maxsize=None)
def forward_parameters(cls: type):
    """The names of ``cls.forward``'s parameters, and whether it takes **kwargs."""
    parameters = inspect.signature(cls.forward).parameters
    return (frozenset(parameters),
            any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()))


def keep_positions(hidden: torch.Tensor, logits_to_keep) -> torch.Tensor:
    """Hugging Face's ``logits_to_keep``: an int n keeps the last n positions (0: all), a 1-D
    tensor those positions, a 2-D one per-sequence positions (or a boolean mask)."""
    if isinstance(logits_to_keep, torch.Tensor) and logits_to_keep.dim() == 2:
        if logits_to_keep.dtype == torch.bool:
            return hidden[logits_to_keep]
        return torch.take_along_dim(hidden, logits_to_keep[..., None], dim=1)
    if isinstance(logits_to_keep, int):
        logits_to_keep = slice(-logits_to_keep, None)
    return hidden[:, logits_to_keep, :]


@lru_cache(maxsize=None)
def lm_output_type(cls) -> type:
    """The output type the stock class's forward declares, or ``CausalLMOutputWithPast``."""
    for base in cls.__mro__:
        if "forward" in base.__dict__ and base.__module__.startswith("transformers."):
            declared = inspect.signature(base.forward).return_annotation
            if isinstance(declared, str):
                declared = getattr(sys.modules[base.__module__], declared, None)
            if (isinstance(declared, type) and issubclass(declared, ModelOutput)
                    and {"loss", "logits"} <= {f.name for f in dataclasses.fields(declared)}):
                return declared
            break
    return CausalLMOutputWithPast


def rebuild_derived_buffers(layer: OutputLayer):
    """The layer's non-persistent buffers, which are not in checkpoints and which Hugging Face's
    loading leaves uninitialised: Mixtape's sigmoid-tree paths, rebuilt from K."""
    names = {name for name, _ in layer.named_buffers()} - set(layer.state_dict())
    check_option(names <= {"tree_nodes", "tree_signs"}, "non-persistent buffers of the layer",
                 sorted(names), "Mixtape's tree_nodes and tree_signs (the ones rebuilt here)")
    if names:
        nodes, signs = sigmoid_tree_paths(layer.components)
        layer.tree_nodes = nodes.to(layer.tree_nodes.device)
        layer.tree_signs = signs.to(device=layer.tree_signs.device, dtype=layer.tree_signs.dtype)


_CLASSES: Dict[type, type] = {}


def output_layer_class(base: type) -> type:
    """The subclass of the stock class ``base`` with ``OutputLayerModel`` mixed in, one per base.

    Its ``forward`` has the stock forward's signature (``generate`` reads it, e.g. for
    ``logits_to_keep``) and hands the arguments, by name, to ``output_layer_forward``."""
    if issubclass(base, OutputLayerModel):
        return base
    if base not in _CLASSES:
        signature = inspect.signature(base.forward)

        def forward(self, *args, **kwargs):
            arguments = signature.bind(self, *args, **kwargs).arguments
            arguments.pop(next(iter(signature.parameters)))          # self
            for name, parameter in signature.parameters.items():     # **kwargs -> by name
                if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                    arguments.update(arguments.pop(name, {}))
            return self.output_layer_forward(**arguments)

        forward.__signature__ = signature
        forward.__doc__ = OutputLayerModel.output_layer_forward.__doc__
        name = f"{base.__name__}WithOutputLayer"
        _CLASSES[base] = type(name, (OutputLayerModel, base),
                              {"forward": forward, "__module__": __name__, "__qualname__": name})
    return _CLASSES[base]


# ---------------------------------------------------------------------------------------------
# Saving and loading


def mark_saved_config(path: str):
    """Rewrite a saved config.json: ``model_type`` ``fairseq_mixtape``, ``architectures`` the
    stock class (``fairseq_mixtape.base_architecture``)."""
    with open(path) as f:
        saved = json.load(f)
    spec = saved[CONFIG_KEY]
    saved["model_type"] = MODEL_TYPE
    saved["architectures"] = [spec["base_architecture"]]
    with open(path, "w") as f:
        json.dump(saved, f, indent=2, sort_keys=True)
        f.write("\n")


def load_with_output_layer(path, compile_output_layer: bool = False, **kwargs):
    """The model that ``save_pretrained`` saved at ``path`` (a folder or a Hub repository),
    output layer included, exactly; ``kwargs`` go to ``from_pretrained`` (dtype, device_map,
    revision, ...). The layer runs eagerly, or through torch.compile with
    ``compile_output_layer=True`` (``compile_head``), whatever the saving process did. Refuses a
    checkpoint without an output layer of this package."""
    hub = {name: kwargs[name] for name in HUB_ARGUMENTS if name in kwargs}
    saved, _ = PretrainedConfig.get_config_dict(path, **hub)
    spec = saved.get(CONFIG_KEY)
    check_option(saved.get("model_type") == MODEL_TYPE and isinstance(spec, dict),
                 f"{path}: config.json model_type", saved.get("model_type"),
                 f"{MODEL_TYPE!r} with a {CONFIG_KEY!r} entry (saved by a model from "
                 "with_output_layer); load other models with AutoModelForCausalLM")
    base_type = spec["base_model_type"]
    config = CONFIG_MAPPING[base_type].from_dict({**saved, "model_type": base_type})
    base = stock_class(spec["base_architecture"], config)
    model = output_layer_class(base).from_pretrained(path, config=config, **kwargs)
    if compile_output_layer:
        compile_head(model.get_output_embeddings())
    return model


def stock_class(name: str, config) -> type:
    """The stock class named ``name`` in transformers, else AutoModelForCausalLM's for config."""
    import transformers
    from transformers import AutoModelForCausalLM

    found = getattr(transformers, name, None)
    if isinstance(found, type):
        return found
    return AutoModelForCausalLM._model_mapping[type(config)]


def refusal_message(saved: dict) -> str:
    spec = saved.get(CONFIG_KEY) or {}
    layer = (spec.get("output_layer") or {}).get("output_layer", "?")
    return (f"this checkpoint (model_type {MODEL_TYPE!r}) is a {spec.get('base_model_type', '?')} "
            f"model with a fairseq_mixtape {layer} output layer in place of its lm_head, which "
            "transformers' own classes would drop. Load it with "
            "fairseq_mixtape.huggingface.load_with_output_layer(path) instead.")


class SavedWithOutputLayerConfig(PretrainedConfig):
    """Registered with ``AutoConfig`` for model_type ``fairseq_mixtape``: refuses to load, so
    that ``AutoConfig``/``AutoModelForCausalLM.from_pretrained`` name the loader to use."""

    model_type = MODEL_TYPE

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        raise ValueError(refusal_message(config_dict))


AutoConfig.register(MODEL_TYPE, SavedWithOutputLayerConfig, exist_ok=True)

__all__ = ["with_output_layer", "load_with_output_layer", "OutputLayerHead", "OutputLayerModel",
           "frequency_order", "output_layer_class", "CONFIG_KEY", "MODEL_TYPE"]
