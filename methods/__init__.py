"""Training and quantisation methods: one module per method, found and registered on import."""

import importlib
import pkgutil

from methods.base import METHODS, Method, MethodContext, MethodParams, MethodResult, get_method

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["METHODS", "Method", "MethodContext", "MethodParams", "MethodResult", "get_method"]
