"""Model names and registration: the one ``<arch>_npe<K>`` name parser and ``register_variants``.

Every family module describes its variants as a table ``name -> build arguments`` and hands
it, with the function that builds a variant, to ``register_variants``, which registers one
documented entrypoint per name with timm (classifiers) or torchvision (segmentation models).
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any, Optional

from timm.models import register_model

__all__ = ["npe_model_name", "parse_npe_name", "register_variants"]

REGISTRIES = ("timm", "torchvision")
_NPE_NAME = re.compile(r"^(?P<arch>.+)_npe(?P<num_pems>\d+)$")


def parse_npe_name(name: str) -> tuple[str, int]:
    """Split a model name ``<arch>_npe<K>[.<tag>]`` into ``(arch, K)``; a name without ``_npe<K>`` gives ``(arch, 0)``.

    ``"resnet32_npe16.cifar10_lt_r100_hp2"`` -> ``("resnet32", 16)``, ``"resnet32"`` -> ``("resnet32", 0)``.
    """
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string, got {type(name).__name__}.")
    architecture = name.split(".", 1)[0]
    match = _NPE_NAME.match(architecture)
    if match is None:
        return architecture, 0
    num_pems = int(match["num_pems"])
    if num_pems == 0:
        raise ValueError(f"{name!r} asks for 0 PEMs; use the plain name {match['arch']!r} for a model without PEMs.")
    return match["arch"], num_pems


def npe_model_name(architecture: str, num_pems: int) -> str:
    """The registered name of ``architecture`` with ``num_pems`` PEMs: ``<arch>_npe<K>``, or ``<arch>`` for 0."""
    return f"{architecture}_npe{num_pems}" if num_pems else architecture


def _signature(
    create: Callable[..., Any], fixed: Mapping[str, Any], annotations: Mapping[str, Any]
) -> inspect.Signature:
    """``create``'s signature without the variant name and the ``fixed`` arguments, with the given annotations."""
    parameters = list(inspect.signature(create).parameters.values())[1:]
    return inspect.Signature(
        [
            parameter.replace(annotation=annotations.get(parameter.name, parameter.annotation))
            for parameter in parameters
            if parameter.name not in fixed
        ]
    )


def _entrypoint(
    name: str, create: Callable[..., Any], build_args: Mapping[str, Any], module: str
) -> Callable[..., Any]:
    """A function called ``name`` in ``module`` that builds the variant: ``create(name, ..., **build_args)``."""

    def entrypoint(*args: Any, **kwargs: Any) -> Any:
        return create(name, *args, **build_args, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = module
    return entrypoint


def _register_with_torchvision(builder: Callable[..., Any]) -> None:
    """Add ``builder`` to torchvision's model registry under its ``__name__``, through torchvision's private helper."""
    try:
        from torchvision.models import _api

        registry, register = _api.BUILTIN_MODELS, _api.register_model
    except (ImportError, AttributeError) as error:
        raise ImportError(
            "npe_models registers its segmentation models through torchvision.models._api.register_model / "
            f"BUILTIN_MODELS, which this torchvision lacks ({error}). Use npe_models.create_segmentation_model, "
            "or install a torchvision version supported by npe_models."
        ) from error
    name, existing = builder.__name__, registry.get(builder.__name__)
    if existing is not None:
        if getattr(existing, "__module__", None) != builder.__module__:
            raise RuntimeError(
                f"torchvision already has a model named {name!r} (from {getattr(existing, '__module__', '?')}); "
                "npe_models will not overwrite it. Rename or unregister the other model."
            )
        del registry[name]  # the registering module was imported again (e.g. importlib.reload): replace its entry
    register(name)(builder)
    if _api.get_model_builder(name) is not builder:
        raise RuntimeError(
            f"registering {name!r} with torchvision did not make get_model find it; torchvision's private registry "
            "changed. Use npe_models.create_segmentation_model instead."
        )


def register_variants(
    table: Mapping[str, Mapping[str, Any]],
    create: Callable[..., Any],
    *,
    doc: Callable[..., str],
    registry: str = "timm",
    module: Optional[str] = None,
    annotations: Optional[Callable[..., Mapping[str, Any]]] = None,
) -> dict[str, Callable[..., Any]]:
    """Register one entrypoint per variant: ``<name>(...)`` returns ``create(name, ..., **table[name])``.

    ``registry`` is ``"timm"`` (``timm.create_model``; the pretrained cfgs are the ``default_cfgs``
    of ``module``, by default ``create``'s module) or ``"torchvision"`` (``torchvision.models.get_model``).
    Each entrypoint becomes ``module.<name>``, with ``create``'s signature less the arguments the
    table fixes, the docstring ``doc(name, **table[name])`` and, for the parameters that
    ``annotations(name, **table[name])`` names, those annotations (torchvision's ``weights`` enum).
    """
    if registry not in REGISTRIES:
        raise ValueError(f"registry must be one of {REGISTRIES}, got {registry!r}.")
    module = module or create.__module__
    register = register_model if registry == "timm" else _register_with_torchvision
    entrypoints = {}
    for name, build_args in table.items():
        entrypoint = _entrypoint(name, create, build_args, module)
        entrypoint.__doc__ = doc(name, **build_args)
        extra = annotations(name, **build_args) if annotations is not None else {}
        entrypoint.__signature__ = _signature(create, build_args, extra)
        register(entrypoint)
        setattr(sys.modules[module], name, entrypoint)
        entrypoints[name] = entrypoint
    return entrypoints
