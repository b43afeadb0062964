"""Replacing a model's linear layers in place, by module name: the one mechanism behind every load-time layout of
them (oneDNN-packed in packed_linear.py, int8 in int8_linear.py)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def replace_linears(
    model: nn.Module, build: Callable[[nn.Linear], nn.Module], chosen: Callable[[str, nn.Linear], bool]
) -> int:
    """Replace every nn.Linear of `model` for which `chosen(module name, layer)` holds by `build(layer)`, in place;
    returns how many."""
    linears = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    targets = [(name, module) for name, module in linears if chosen(name, module)]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, build(module))
    return len(targets)
