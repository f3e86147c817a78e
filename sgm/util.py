"""Small helpers shared by the generic components."""

from __future__ import annotations

import difflib
import importlib
import inspect
import math

import torch

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def use_exact_fp32() -> None:
    """fp32 math means fp32 on a GPU too: no TF32 in CUDA matmuls or cuDNN convolutions (torch allows TF32
    convolutions by default), so fp32 runs (the VAE, the parity configs, fp32 references) match the CPU to
    rounding instead of ~1e-3. bf16 and fp16 math is unaffected. Process-wide; the entry points call it."""
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    torch.backends.cudnn.conv.fp32_precision = "ieee"


def parse_dtype(value: str | torch.dtype) -> torch.dtype:
    """Map a config dtype name ('float32'/'fp32', 'bfloat16'/'bf16', 'float16'/'fp16') to a torch dtype."""
    if isinstance(value, torch.dtype):
        return value
    try:
        return _DTYPES[str(value).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {value!r}: expected one of {sorted(_DTYPES)}") from None


PROJECT_PACKAGES = ("kaleido.", "sgm.", "sat.")


class InstantiationError(ValueError):
    """A `target:`/`params:` node cannot be built; the message names the config path and its origin."""


def _import_target(target: str):
    module_name, _, attr = target.rpartition(".")
    if not module_name:
        raise ImportError(f"'{target}' is not a dotted path (package.module.Name)")
    module = importlib.import_module(module_name)
    if not hasattr(module, attr):
        raise ImportError(f"module '{module_name}' has no attribute '{attr}'")
    return getattr(module, attr)


def check_component(node, path: str = "config", where=lambda path: "config", external_targets=()):
    """The factory of a `{target: ..., params: {...}}` node after checking the node without building anything: the
    target is importable (and of this project unless listed in `external_targets`), every param is one it accepts
    and every required one is given. Errors name the config path and its origin (`where`)."""
    if not isinstance(node, dict) or "target" not in node:
        raise InstantiationError(f"{where(path)}: '{path}' must be a mapping with 'target:' and optional 'params:'")
    extra = sorted(set(node) - {"target", "params"})
    if extra:
        raise InstantiationError(
            f"{where(f'{path}.{extra[0]}')}: unknown key '{path}.{extra[0]}' (a component has only 'target' and 'params')"
        )
    target = str(node["target"])
    allowed = PROJECT_PACKAGES + tuple(p if p.endswith(".") else p + "." for p in external_targets)
    if not target.startswith(allowed):
        raise InstantiationError(
            f"{where(f'{path}.target')}: '{path}.target: {target}' is outside this project "
            f"(allowed prefixes {list(allowed)}; list its package in args.external_targets to allow it)"
        )
    try:
        factory = _import_target(target)
    except ImportError as err:
        raise InstantiationError(f"{where(f'{path}.target')}: cannot import '{path}.target: {target}': {err}") from None
    params = node.get("params") or {}
    if not isinstance(params, dict):
        raise InstantiationError(f"{where(f'{path}.params')}: '{path}.params' must be a mapping")

    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # some builtins have no signature: leave the checking to the call itself
        parameters = None
    if parameters is not None:
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        accepted = [n for n, p in parameters.items() if p.kind in kinds]
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            for key in params:
                if key not in accepted:
                    close = difflib.get_close_matches(str(key), accepted, n=1)
                    hint = f" (did you mean '{close[0]}'?)" if close else ""
                    raise InstantiationError(
                        f"{where(f'{path}.params.{key}')}: unknown key '{path}.params.{key}' for {target}{hint}"
                    )
        for key in accepted:
            if parameters[key].default is inspect.Parameter.empty and key not in params:
                raise InstantiationError(f"{where(f'{path}.params')}: '{path}.params.{key}' is required by {target}")

    return factory


def instantiate_from_config(node, path: str = "config", where=lambda path: "config", external_targets=()):
    """Build `target(**params)` from a `{target: ..., params: {...}}` node (checked by check_component first).

    Any param that is itself such a node is built first (depth first). `target:` must name a module of this
    project unless its prefix is listed in `external_targets` (an explicit opt-in, e.g. ['mypackage.']).
    `where(path)` names the file or override that set a key, for error messages.
    """
    factory = check_component(node, path, where, external_targets)
    target, params = str(node["target"]), node.get("params") or {}
    kwargs = {}
    for key, value in params.items():
        if isinstance(value, dict) and "target" in value:
            value = instantiate_from_config(value, f"{path}.params.{key}", where, external_targets)
        kwargs[key] = value
    try:
        return factory(**kwargs)
    except (TypeError, ValueError, OSError, ImportError) as err:  # bad values, missing files, missing packages
        raise InstantiationError(f"{where(f'{path}.params')}: {target} rejected '{path}.params': {err}") from None


def random_parameter(name: str, shape, generator: torch.Generator) -> torch.Tensor:
    """A float32 seeded draw of a sensible scale for the parameter `name` (see seeded_random_init_)."""
    draw = torch.randn(shape, generator=generator, dtype=torch.float32)
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "gamma" or ("norm" in name and leaf == "weight"):
        return 1 + 0.05 * draw
    if "modulation" in name:
        return 0.3 * draw
    if len(shape) >= 2:
        return draw / math.sqrt(math.prod(shape[1:]))
    return 0.05 * draw


@torch.no_grad()
def seeded_random_init_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Overwrite every parameter with seeded random values of a sensible scale (smoke tests, random demos).

    Matrices ~ N(0, 1/fan_in); vectors (biases) ~ 0.05·N(0, 1); norm weights and gains 1 + 0.05·N(0, 1);
    modulation tables 0.3·N(0, 1). Independent of the global RNG: one generator, parameters in name order.
    """
    generator = torch.Generator().manual_seed(seed)
    for name, param in sorted(module.named_parameters()):
        param.copy_(random_parameter(name, param.shape, generator).to(param.dtype))
    return module
