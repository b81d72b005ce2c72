"""fairseq wav2vec 2.0 / HuBERT checkpoints -> our config and state dict, without fairseq.

Reading the file
----------------
A fairseq checkpoint is a ``torch.save`` pickle of ``{"model": state_dict, "cfg": ...,
"args": ..., "optimizer_history": ..., ...}``. Plain ``torch.load(weights_only=True)``
refuses it, because besides tensors it pickles Python objects: older files keep their
settings in an ``argparse.Namespace`` (``args``), hydra-era files in an omegaconf
``DictConfig`` (``cfg``, whose metadata can reference fairseq dataclasses and enums), and
training state may hold fairseq meter objects. ``torch.load(weights_only=False)`` would read
them, but it imports and runs whatever the pickle names, and it fails anyway when
``omegaconf`` or ``fairseq`` is not installed.

:func:`load_fairseq_checkpoint` therefore keeps torch's restricted (``weights_only=True``)
unpickler and allowlists only the globals the file actually names (found by disassembling
the pickle first, never executing it):

- ``argparse.Namespace`` is the real class (it only stores attributes);
- every other non-torch global (``omegaconf.*``, ``fairseq.*``, ``typing.Any``, numpy
  scalars, ...) becomes an inert stand-in class that records its constructor arguments and
  pickled state and runs no code; omegaconf containers and nodes are then rebuilt as plain
  dicts / lists / values from that recorded state (``_content`` / ``_val``).
  ``collections.defaultdict`` becomes a plain dict and ``getattr`` (Python 3.12 enum
  pickles) a stand-in lookup.

Modules torch blocks outright (``os``, ``sys``, ...) still stop the load. If this restricted
read fails, the error says how to proceed: pass ``trust_pickle=True`` (CLI
``--trust-pickle``) for a file you trust, which uses ``torch.load(weights_only=False)`` and
needs ``omegaconf`` (``pip install omegaconf``) for hydra-era files, or re-save the
checkpoint with its ``cfg`` as a plain dict (``OmegaConf.to_container(cfg)``) where fairseq
is installed.

Mapping the weights
-------------------
fairseq names -> ours (explicit table in ``_KEY_RULES``)::

    feature_extractor.conv_layers.N.0.{weight,bias}     -> feature_extractor.conv_layers.N.conv.*
    feature_extractor.conv_layers.N.2.{weight,bias}     -> ...N.layer_norm.*  (GroupNorm, "default" mode, N=0)
    feature_extractor.conv_layers.N.2.1.{weight,bias}   -> ...N.layer_norm.*  ("layer_norm" mode: LN inside TransposeLast)
    layer_norm.*                                        -> encoder.feature_projection.layer_norm.*
    post_extract_proj.*                                 -> encoder.feature_projection.projection.*
    encoder.pos_conv.0.{weight_g,weight_v,bias}         -> encoder.transformer.pos_conv_embed.conv.*
      (or ...pos_conv.0.parametrizations.weight.original0/1)
    encoder.layer_norm.*                                -> encoder.transformer.layer_norm.*
    encoder.layers.N.self_attn.{q,k,v,out}_proj.*       -> encoder.transformer.layers.N.attention.*
    encoder.layers.N.self_attn_layer_norm.*             -> ...layers.N.layer_norm.*
    encoder.layers.N.fc1.* / fc2.*                      -> ...layers.N.feed_forward.intermediate_dense.* / output_dense.*
    encoder.layers.N.final_layer_norm.*                 -> ...layers.N.final_layer_norm.*

Dropped and reported: the pre-training-only ``mask_emb``, ``label_embs_concat``,
``final_proj.*``, ``quantizer.*``, ``project_q.*``, ``target_glu.*``, and for fine-tuned
(``wav2vec_ctc`` / ``hubert_ctc``) files the CTC head ``w2v_encoder.proj.*`` (their encoder
lives under ``w2v_encoder.w2v_model.``). Anything else unknown is an error naming the key.
"""

from __future__ import annotations

import argparse
import ast
import enum
import io
import os
import pickle
import pickletools
import re
import zipfile
from pathlib import Path
from typing import Any, ClassVar, Mapping, Optional

import torch
from torch import Tensor

from . import ConversionError, make_config, rename_weight

PRETRAINING_ARCHS = frozenset({"wav2vec2", "hubert"})
FINETUNED_ARCHS = frozenset({"wav2vec_ctc", "hubert_ctc"})
FINETUNED_PREFIX = "w2v_encoder.w2v_model."

#: Pre-training-only weights: masked-frame embedding, label embeddings, projection heads and
#: quantiser of the pre-training losses. Exact names, then prefixes.
PRETRAINING_ONLY_KEYS = frozenset({"mask_emb", "label_embs_concat"})
PRETRAINING_ONLY_PREFIXES = ("final_proj.", "quantizer.", "project_q.", "target_glu.")
#: Fine-tuning heads outside ``w2v_encoder.w2v_model``.
FINETUNED_HEAD_PREFIXES = ("w2v_encoder.proj.",)

DEFAULT_CONV_FEATURE_LAYERS = "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]"

#: fairseq's own defaults (``Wav2Vec2Config`` / ``HubertConfig``) for fields an old
#: checkpoint may lack; used as fairseq itself would, and listed in ``info["defaulted"]``.
FAIRSEQ_DEFAULTS: dict[str, Any] = {
    "extractor_mode": "default",
    "conv_feature_layers": DEFAULT_CONV_FEATURE_LAYERS,
    "conv_bias": False,
    "encoder_embed_dim": 768,
    "encoder_layers": 12,
    "encoder_attention_heads": 12,
    "encoder_ffn_embed_dim": 3072,
    "activation_fn": "gelu",
    "dropout": 0.1,
    "attention_dropout": 0.1,
    "activation_dropout": 0.0,
    "dropout_input": 0.0,
    "encoder_layerdrop": 0.0,
    "layer_norm_first": False,
    "conv_pos": 128,
    "conv_pos_groups": 16,
}

_POS_CONV = "encoder.transformer.pos_conv_embed.conv"
_LAYER = "encoder.transformer.layers"

_KEY_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(p), r) for p, r in [
        (r"^feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)$", r"feature_extractor.conv_layers.\1.conv.\2"),
        (r"^feature_extractor\.conv_layers\.(\d+)\.2\.(weight|bias)$", r"feature_extractor.conv_layers.\1.layer_norm.\2"),
        (r"^feature_extractor\.conv_layers\.(\d+)\.2\.1\.(weight|bias)$", r"feature_extractor.conv_layers.\1.layer_norm.\2"),
        (r"^layer_norm\.(weight|bias)$", r"encoder.feature_projection.layer_norm.\1"),
        (r"^post_extract_proj\.(weight|bias)$", r"encoder.feature_projection.projection.\1"),
        (r"^encoder\.pos_conv\.0\.(weight_g|weight_v|bias)$", _POS_CONV + r".\1"),
        (r"^encoder\.pos_conv\.0\.parametrizations\.weight\.original0$", _POS_CONV + ".weight_g"),
        (r"^encoder\.pos_conv\.0\.parametrizations\.weight\.original1$", _POS_CONV + ".weight_v"),
        (r"^encoder\.layer_norm\.(weight|bias)$", r"encoder.transformer.layer_norm.\1"),
        (r"^encoder\.layers\.(\d+)\.self_attn\.(q_proj|k_proj|v_proj|out_proj)\.(weight|bias)$", _LAYER + r".\1.attention.\2.\3"),
        (r"^encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)$", _LAYER + r".\1.layer_norm.\2"),
        (r"^encoder\.layers\.(\d+)\.fc1\.(weight|bias)$", _LAYER + r".\1.feed_forward.intermediate_dense.\2"),
        (r"^encoder\.layers\.(\d+)\.fc2\.(weight|bias)$", _LAYER + r".\1.feed_forward.output_dense.\2"),
        (r"^encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)$", _LAYER + r".\1.final_layer_norm.\2"),
    ]
]


# --------------------------------------------------------------------------------------------
# Restricted reading
# --------------------------------------------------------------------------------------------


class _Stub:
    """Inert stand-in for a pickled class the restricted loader does not import.

    Creating one (NEWOBJ / REDUCE) records the arguments; BUILD records the state. It has no
    behaviour, so a checkpoint cannot make the loader run code through it.
    """

    pickled_name: ClassVar[str] = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "_Stub":
        self = object.__new__(cls)
        self.__dict__["_args"] = args
        self.__dict__["_state"] = None
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # arguments were recorded in __new__
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_state"] = state

    def __repr__(self) -> str:
        return f"<unloaded {self.pickled_name}>"


def _stub_class(full_name: str) -> type[_Stub]:
    module, _, name = full_name.rpartition(".")
    return type(name or full_name, (_Stub,), {"pickled_name": full_name, "__module__": module or "?"})


def _plain_dict(*args: Any, **kwargs: Any) -> dict:
    """``collections.defaultdict`` stand-in: a plain dict (SETITEMS then works on it)."""
    return {}


def _stub_getattr(obj: Any, name: Any) -> Any:
    """``getattr`` stand-in (Python >= 3.12 pickles enum members as ``getattr(cls, name)``)."""
    if isinstance(obj, type) and issubclass(obj, _Stub):
        return obj(name)
    raise pickle.UnpicklingError(f"refusing getattr on {obj!r}")


def _stub_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """``copyreg._reconstructor`` stand-in (protocol 0/1 objects): only allowlisted classes."""
    if isinstance(cls, type) and (issubclass(cls, _Stub) or cls is argparse.Namespace):
        return cls.__new__(cls)
    raise pickle.UnpicklingError(f"refusing to reconstruct {cls!r}")


_REAL_GLOBALS: dict[str, Any] = {
    "argparse.Namespace": argparse.Namespace,
    "collections.defaultdict": _plain_dict,
    "builtins.getattr": _stub_getattr,
    "copyreg._reconstructor": _stub_reconstructor,
}


def _global_names(pickle_bytes_or_file: Any, count: int) -> set[str]:
    """Names of the globals referenced by the next ``count`` pickles (disassembled, not run).

    Names are normalised like torch's restricted unpickler does (Python 2 module names).
    """
    import _compat_pickle

    names: set[str] = set()
    for _ in range(count):
        recent: list[str] = []
        for opcode, arg, _pos in pickletools.genops(pickle_bytes_or_file):
            if opcode.name in ("GLOBAL", "INST"):
                module, name = str(arg).split(" ", 1)
            elif opcode.name == "STACK_GLOBAL" and len(recent) >= 2:
                module, name = recent[-2], recent[-1]
            else:
                if isinstance(arg, str):
                    recent.append(arg)
                continue
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
            names.add(f"{module}.{name}")
    return names


def _checkpoint_globals(path: Path) -> set[str]:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            records = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
            if len(records) != 1:
                raise ConversionError(f"{path}: expected one data.pkl in the torch zip file, found {records}")
            return _global_names(io.BytesIO(archive.read(records[0])), 1)
    # Legacy (pre-1.6) format: magic number, protocol version, sys info, then the object.
    with open(path, "rb") as f:
        return _global_names(f, 4)


def _trusted_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as error:
        module = error.name or str(error)
        hint = (
            "install it (pip install omegaconf), or drop --trust-pickle to use the restricted loader"
            if module.split(".")[0] == "omegaconf"
            else "drop --trust-pickle (the restricted loader needs no fairseq), or install the module"
        )
        raise ConversionError(f"{path}: unpickling needs the module {module!r}: {hint}") from error


def _restricted_load(path: Path) -> Any:
    if not hasattr(torch.serialization, "safe_globals"):
        raise ConversionError(
            f"{path}: this torch ({torch.__version__}) lacks torch.serialization.safe_globals; "
            "use trust_pickle=True (--trust-pickle) for a file you trust"
        )
    try:
        names = _checkpoint_globals(path)
    except ConversionError:
        raise
    except Exception as error:  # not a zip archive and not a legacy torch pickle stream
        raise ConversionError(f"{path}: not a torch checkpoint ({type(error).__name__}: {error})") from error
    entries: list[Any] = []
    for name in sorted(names):
        # torch resolves its own allowlist (tensor rebuilds, OrderedDict, ...) before these,
        # so a stand-in registered under one of those names is never used.
        entries.append((_REAL_GLOBALS.get(name) or _stub_class(name), name))
    try:
        with torch.serialization.safe_globals(entries):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as error:  # re-raised with what to do next
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        # torch wraps the cause in generic advice; keep the line that names the problem.
        cause = next((line for line in lines if "GLOBAL" in line or "Can only" in line or "Unsupported" in line),
                     lines[0] if lines else type(error).__name__)
        raise ConversionError(
            f"{path}: the restricted loader could not read this checkpoint ({cause}). If you trust the file, "
            "pass trust_pickle=True (CLI --trust-pickle; needs `pip install omegaconf` for hydra-era fairseq files), "
            "or re-save it where fairseq is installed with its cfg as a plain dict: "
            "ckpt['cfg'] = OmegaConf.to_container(ckpt['cfg']); torch.save(ckpt, path)"
        ) from error


def to_plain(obj: Any) -> Any:
    """Rebuild plain dicts / lists / values from Namespaces, omegaconf objects and stand-ins."""
    if isinstance(obj, _Stub):
        return _plain_stub(obj)
    if isinstance(obj, argparse.Namespace):
        return {k: to_plain(v) for k, v in vars(obj).items()}
    if type(obj).__module__.split(".")[0] == "omegaconf":  # real omegaconf objects (trusted load)
        from omegaconf import OmegaConf

        return to_plain(OmegaConf.to_container(obj, resolve=False, enum_to_str=False))
    if isinstance(obj, Mapping):
        return {to_plain(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_plain(v) for v in obj)
    if isinstance(obj, enum.Enum):
        return to_plain(obj.value)
    return obj


def _plain_stub(stub: _Stub) -> Any:
    state = stub.__dict__["_state"]
    if isinstance(state, tuple) and len(state) == 2 and (state[0] is None or isinstance(state[0], dict)):
        state = state[0]  # (dict state, slot state)
    if isinstance(state, dict):
        if "_content" in state:  # omegaconf DictConfig / ListConfig
            content = state["_content"]
            if isinstance(content, dict):
                return {to_plain(k): to_plain(v) for k, v in content.items()}
            if isinstance(content, list):
                return [to_plain(v) for v in content]
            return content  # None, "???" (missing) or an unresolved "${...}" string
        if "_val" in state:  # omegaconf value node
            return to_plain(state["_val"])
    args = stub.__dict__["_args"]
    if state is None and len(args) == 1:  # enum member pickled by value (or by name)
        return to_plain(args[0])
    return repr(stub)


_INTERPOLATION = re.compile(r"^\$\{([A-Za-z_][\w.]*)\}$")


def _resolve(value: Any, root: Mapping[str, Any], depth: int = 0) -> Any:
    """Resolve a plain ``${a.b}`` omegaconf reference against ``root`` (others stay as strings)."""
    match = _INTERPOLATION.match(value) if isinstance(value, str) else None
    if not match or depth > 8:
        return value
    node: Any = root
    for part in match.group(1).split("."):
        if not isinstance(node, Mapping) or part not in node:
            return value
        node = node[part]
    return _resolve(node, root, depth + 1)


def load_fairseq_checkpoint(path: str | os.PathLike[str], trust_pickle: bool = False) -> dict[str, Any]:
    """``{"model": state_dict, "cfg": dict | None, "args": dict | None}`` of a fairseq file.

    ``cfg`` / ``args`` come back as plain dicts whatever they were pickled as (see the module
    docstring for how, and for ``trust_pickle``); training state is not returned.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"fairseq checkpoint not found: {path}")
    checkpoint = _trusted_load(path) if trust_pickle else _restricted_load(path)
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("model"), Mapping):
        keys = sorted(map(str, checkpoint)) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise ConversionError(f"{path}: not a fairseq checkpoint (expected a dict with a 'model' state dict, found {keys})")
    model = dict(checkpoint["model"])
    bad = [k for k, v in model.items() if not isinstance(v, Tensor)]
    if bad:
        raise ConversionError(f"{path}: non-tensor entries in 'model': {', '.join(map(str, bad))}")
    cfg = to_plain(checkpoint.get("cfg"))
    args = to_plain(checkpoint.get("args"))
    return {
        "model": model,
        "cfg": cfg if isinstance(cfg, dict) else None,
        "args": args if isinstance(args, dict) else None,
    }


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


def parse_conv_feature_layers(spec: Any, source: str = "conv_feature_layers") -> list[tuple[int, int, int]]:
    """Parse fairseq's ``conv_feature_layers`` (e.g. ``"[(512, 10, 5)] + [(512, 3, 2)] * 4"``).

    ``ast.literal_eval`` cannot evaluate the ``+`` / ``*`` list arithmetic these strings use,
    and ``eval`` would run arbitrary code, so this walks the syntax tree and accepts only int
    literals, lists, tuples, list concatenation and list-times-int repetition.
    """
    def evaluate(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.List):
            return [evaluate(e) for e in node.elts]
        if isinstance(node, ast.Tuple):
            return tuple(evaluate(e) for e in node.elts)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            left, right = evaluate(node.left), evaluate(node.right)
            if isinstance(left, list) and isinstance(right, list):
                return left + right
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            left, right = evaluate(node.left), evaluate(node.right)
            if isinstance(left, int) and isinstance(right, list):
                left, right = right, left
            if isinstance(left, list) and isinstance(right, int) and 0 <= right <= 1000:
                return left * right
        raise ConversionError(f"{source}: unsupported expression {ast.unparse(node)!r} in {text!r}")

    if isinstance(spec, (list, tuple)):
        layers = [tuple(layer) for layer in spec]
        text = repr(spec)
    else:
        text = str(spec)
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except SyntaxError as error:
            raise ConversionError(f"{source}: cannot parse {text!r} ({error.msg})") from error
        layers = evaluate(tree.body)
    if not isinstance(layers, list) or not layers or not all(
        isinstance(layer, tuple) and len(layer) == 3 and all(type(v) is int and v > 0 for v in layer) for layer in layers
    ):
        raise ConversionError(f"{source}: expected a non-empty list of (channels, kernel, stride) int triples, got {text!r}")
    return [(int(c), int(k), int(s)) for c, k, s in layers]


def _section(cfg: Optional[Mapping[str, Any]], name: str) -> dict[str, Any]:
    value = cfg.get(name) if cfg else None
    return dict(value) if isinstance(value, Mapping) else {}


def model_and_task_config(checkpoint: Mapping[str, Any], source: str = "fairseq checkpoint") -> tuple[dict[str, Any], dict[str, Any], str]:
    """``(model_cfg, task_cfg, key_prefix)`` of a loaded checkpoint.

    New files: ``cfg["model"]`` / ``cfg["task"]``; old files: the ``args`` Namespace for both.
    Fine-tuned CTC files point to their pre-training config in ``w2v_args`` and keep the
    encoder weights under ``w2v_encoder.w2v_model.``. Unsupported architectures are refused
    with their name.
    """
    cfg, args = checkpoint.get("cfg"), checkpoint.get("args")
    if cfg and isinstance(cfg.get("model"), Mapping):
        model, task = _section(cfg, "model"), _section(cfg, "task")
        model = {k: _resolve(v, cfg) for k, v in model.items()}
        task = {k: _resolve(v, cfg) for k, v in task.items()}
        arch = model.get("_name")
    elif args:
        model, task = dict(args), dict(args)
        arch = model.get("arch") or model.get("_name")
    else:
        raise ConversionError(f"{source}: no model settings (neither cfg['model'] nor args)")

    prefix = ""
    if arch in FINETUNED_ARCHS:
        inner = model.get("w2v_args")
        if not isinstance(inner, Mapping):
            raise ConversionError(
                f"{source}: fine-tuned {arch} checkpoint without its pre-training config (w2v_args); "
                "convert the pre-trained checkpoint it was fine-tuned from instead"
            )
        if isinstance(inner.get("model"), Mapping):  # hydra-era: a full config
            inner_model = {k: _resolve(v, inner) for k, v in dict(inner["model"]).items()}
            inner_task = {k: _resolve(v, inner) for k, v in _section(inner, "task").items()}
            arch = inner_model.get("_name")
        else:  # argparse-era: a Namespace of the pre-training run
            inner_model = inner_task = dict(inner)
            arch = inner_model.get("arch") or inner_model.get("_name")
        if "normalize" not in task and "normalize" in inner_task:
            task["normalize"] = inner_task["normalize"]
        model = inner_model
        prefix = FINETUNED_PREFIX
    if arch not in PRETRAINING_ARCHS:
        raise ConversionError(
            f"{source}: unsupported fairseq architecture {arch!r}; supported: "
            f"{', '.join(sorted(PRETRAINING_ARCHS | FINETUNED_ARCHS))}"
        )
    model["_name"] = arch
    return model, task, prefix


def config_from_fairseq(
    model_cfg: Mapping[str, Any],
    task_cfg: Optional[Mapping[str, Any]] = None,
    normalize_waveform: Optional[bool] = None,
    source: str = "fairseq config",
    info: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """Map a fairseq wav2vec2 / HuBERT model config (plus task config) to the DPHuBERT config.

    ``normalize_waveform``: an explicit choice wins, else the task's ``normalize`` (default
    False). Fields the config lacks take fairseq's defaults (listed in ``info["defaulted"]``).
    Settings our model cannot represent are refused with the field named.
    """
    arch = model_cfg.get("_name", "wav2vec2")
    defaulted: list[str] = []

    def get(field: str) -> Any:
        value = model_cfg.get(field)
        if value is None or value == "???":
            defaulted.append(field)
            return FAIRSEQ_DEFAULTS[field]
        return value

    def refuse(field: str, value: Any, why: str) -> ConversionError:
        return ConversionError(f"{source}: unsupported {field}={value!r} ({why})")

    if get("activation_fn") != "gelu":
        raise refuse("activation_fn", model_cfg.get("activation_fn"), "only 'gelu' is supported")
    if model_cfg.get("layer_type", "transformer") not in (None, "transformer"):
        raise refuse("layer_type", model_cfg.get("layer_type"), "only the transformer encoder is supported")
    if model_cfg.get("pos_conv_depth", 1) not in (None, 1):
        raise refuse("pos_conv_depth", model_cfg.get("pos_conv_depth"), "only a single positional conv is supported")
    if model_cfg.get("quantize_input"):
        raise refuse("quantize_input", True, "quantised encoder inputs are not supported")
    if model_cfg.get("encoder_layers_to_keep"):
        raise refuse("encoder_layers_to_keep", model_cfg.get("encoder_layers_to_keep"), "convert the full model instead")
    modes = {"default": "group_norm", "layer_norm": "layer_norm"}
    mode = get("extractor_mode")
    if mode not in modes:
        raise refuse("extractor_mode", mode, "expected 'default' or 'layer_norm'")

    embed_dim = int(get("encoder_embed_dim"))
    for field in ("encoder_attention_heads", "conv_pos_groups"):
        if int(get(field)) < 1 or embed_dim % int(get(field)):
            raise refuse(field, get(field), f"encoder_embed_dim {embed_dim} is not divisible by it")

    if normalize_waveform is None:
        normalize_waveform = bool((task_cfg or {}).get("normalize") or False)
    config = make_config(
        source=source,
        family="hubert" if arch == "hubert" else "wav2vec2",
        extractor_mode=modes[mode],
        conv_layers=parse_conv_feature_layers(get("conv_feature_layers"), f"{source}: conv_feature_layers"),
        conv_bias=bool(get("conv_bias")),
        embed_dim=embed_dim,
        projection_dropout=float(get("dropout_input")),
        pos_conv_kernel=int(get("conv_pos")),
        pos_conv_groups=int(get("conv_pos_groups")),
        num_layers=int(get("encoder_layers")),
        num_heads=int(get("encoder_attention_heads")),
        ff_interm_features=int(get("encoder_ffn_embed_dim")),
        attention_dropout=float(get("attention_dropout")),
        ff_interm_dropout=float(get("activation_dropout")),
        dropout=float(get("dropout")),
        layer_norm_first=bool(get("layer_norm_first")),
        layer_drop=float(get("encoder_layerdrop")),
        normalize_waveform=bool(normalize_waveform),
    )
    if info is not None:
        info["defaulted"] = sorted(set(defaulted))
    return config


# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------


def convert_fairseq_state_dict(
    model_state: Mapping[str, Tensor],
    config: Mapping[str, Any],
    prefix: str = "",
    source: str = "fairseq state dict",
    info: Optional[dict[str, Any]] = None,
) -> dict[str, Tensor]:
    """Rename a fairseq wav2vec2 / HuBERT state dict to ours (table in the module docstring).

    ``prefix`` is where the encoder sits (``"w2v_encoder.w2v_model."`` in fine-tuned files).
    Known pre-training / fine-tuning-only keys are dropped and listed in ``info["dropped"]``;
    any other unrecognised key is an error naming it. A model without ``post_extract_proj``
    (fairseq omits it when the width equals the last conv's channels) gets an identity
    projection, which is what fairseq computes. Adds ``feature_extractor.dummy_weight``.
    """
    dropped: list[str] = []
    unknown: list[str] = []
    out: dict[str, Tensor] = {}
    for key, value in model_state.items():
        if prefix and not key.startswith(prefix):
            (dropped if key.startswith(FINETUNED_HEAD_PREFIXES) else unknown).append(key)
            continue
        name = key[len(prefix):]
        if name in PRETRAINING_ONLY_KEYS or name.startswith(PRETRAINING_ONLY_PREFIXES):
            dropped.append(key)
            continue
        if not rename_weight(out, key, name, value, _KEY_RULES, source):
            unknown.append(key)
    if unknown:
        raise ConversionError(f"{source}: unrecognised keys {', '.join(sorted(unknown))}")

    channels = int(config["extractor_conv_layer_config"][-1][0])
    embed_dim = int(config["encoder_embed_dim"])
    notes: list[str] = []
    projection = "encoder.feature_projection.projection"
    if f"{projection}.weight" not in out and f"{projection}.bias" not in out and channels == embed_dim:
        out[f"{projection}.weight"] = torch.eye(embed_dim)
        out[f"{projection}.bias"] = torch.zeros(embed_dim)
        notes.append("no post_extract_proj in the checkpoint (width equals conv channels): identity projection")
    out["feature_extractor.dummy_weight"] = torch.ones(channels)  # frozen channel scale, ones until pruning
    if info is not None:
        info.setdefault("dropped", []).extend(sorted(dropped))
        info.setdefault("notes", []).extend(notes)
    return out


def convert_fairseq_checkpoint(
    path: str | os.PathLike[str],
    trust_pickle: bool = False,
    normalize_waveform: Optional[bool] = None,
    info: Optional[dict[str, Any]] = None,
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Read a fairseq wav2vec2 / HuBERT checkpoint file -> ``(config, state_dict)``.

    ``info`` (optional dict) receives ``arch``, ``dropped`` keys, ``defaulted`` config
    fields, ``notes`` and ``normalize_waveform_from``. Load the result with
    ``wav2vec2.convert.build_converted_model`` (strict).
    """
    source = str(path)
    checkpoint = load_fairseq_checkpoint(path, trust_pickle=trust_pickle)
    model_cfg, task_cfg, prefix = model_and_task_config(checkpoint, source)
    local: dict[str, Any] = {}
    config = config_from_fairseq(model_cfg, task_cfg, normalize_waveform=normalize_waveform, source=source, info=local)
    state_dict = convert_fairseq_state_dict(checkpoint["model"], config, prefix=prefix, source=source, info=local)
    if info is not None:
        info.update(local)
        info["arch"] = model_cfg["_name"] + (" (fine-tuned)" if prefix else "")
        info["normalize_waveform_from"] = (
            "explicit choice" if normalize_waveform is not None
            else "task normalize" if "normalize" in task_cfg else "default (no task normalize)"
        )
    return config, state_dict
