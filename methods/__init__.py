"""Training and quantisation methods: one module per method, registered in `METHODS` when the
registry is first read (and plugins' methods, entry-point group `medq_bench.methods`)."""

from methods.base import METHODS, Method, MethodContext, MethodParams, MethodResult, get_method

__all__ = ["METHODS", "Method", "MethodContext", "MethodParams", "MethodResult", "get_method"]
