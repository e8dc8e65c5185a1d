"""Every module the wheel ships declares its public surface with a well-formed `__all__`.

The rule: a module that defines a public (no leading underscore) function or class of its own
must have `__all__`. Route modules are exempt when all they define is a module-level `router`
(`fastapi.APIRouter`) and the endpoints registered on it: their surface is `router`, which
server/app.py includes. Where `__all__` exists, each name in it must exist in the module, appear
once, and be in the order ruff's isort-style sort gives (RUF022): ALL_CAPS constants, then
CamelCase classes, then everything else, each group sorted by code point.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path
from types import ModuleType

import pytest

PACKAGES = ("server", "strategies", "clients")


def _walk(path: Path, prefix: str) -> list[str]:
    """Module names under a package folder, without importing anything."""
    names = []
    for info in pkgutil.iter_modules([str(path)], prefix):
        names.append(info.name)
        if info.ispkg:
            names += _walk(path / info.name.rsplit(".", 1)[-1], f"{info.name}.")
    return names


def _modules() -> list[str]:
    names = []
    for package in PACKAGES:
        path = Path(__file__).resolve().parents[1] / package
        names += [package, *_walk(path, f"{package}.")]
    return sorted(names)


MODULES = _modules()


def _own_public_definitions(module: ModuleType) -> dict[str, object]:
    """Public functions and classes whose `__module__` is this module (not imported ones)."""
    return {
        name: obj for name, obj in vars(module).items()
        if not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
        and obj.__module__ == module.__name__
    }


def _is_route_module(module: ModuleType) -> bool:
    from fastapi import APIRouter

    router = getattr(module, "router", None)
    if not isinstance(router, APIRouter):
        return False
    endpoints = {getattr(route, "endpoint", None) for route in router.routes}
    return all(obj in endpoints for obj in _own_public_definitions(module).values())


def isort_style(name: str) -> tuple[int, str]:
    """RUF022's order: SCREAMING_SNAKE_CASE, then CamelCase, then the rest."""
    if name.isupper():
        return 0, name
    return (1, name) if name[:1].isupper() else (2, name)


def test_the_walk_finds_the_packages_modules() -> None:
    assert {"server.app", "strategies.base", "clients.loadgen"} <= set(MODULES)


@pytest.mark.parametrize("module_name", MODULES)
def test_public_modules_declare_a_well_formed_all(module_name: str) -> None:
    module = importlib.import_module(module_name)
    exported = getattr(module, "__all__", None)
    if exported is None:
        defined = sorted(_own_public_definitions(module))
        assert not defined or _is_route_module(module), (
            f"{module_name} defines public {defined} but has no __all__"
        )
        return
    assert isinstance(exported, (list, tuple)), f"{module_name}.__all__ is not a list or tuple"
    assert all(isinstance(name, str) for name in exported)
    missing = [name for name in exported if not hasattr(module, name)]
    assert not missing, f"{module_name}.__all__ names what the module lacks: {missing}"
    duplicates = sorted({name for name in exported if list(exported).count(name) > 1})
    assert not duplicates, f"{module_name}.__all__ repeats {duplicates}"
    expected = sorted(exported, key=isort_style)
    assert list(exported) == expected, f"{module_name}.__all__ is not sorted: {expected}"
