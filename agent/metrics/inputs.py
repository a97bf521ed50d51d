"""Which of its inputs a metric's score() can read, found from its source with `ast` only.

A score depends on the image's pixels and on what score() reads of `obj` and `scene`. When a
metric provably reads only some keys of `obj` and never touches `scene`, its score for a box is
known wherever the image and those keys are the same: `selftest` uses that to score the boxes its
injections leave alone only once across seeds.

The analysis is conservative, because a wrong "reads only this" would silently reuse a score that a
real call would have changed. Anything it cannot follow counts as reading everything: `obj` used in
any way other than `obj["key"]` or `obj.get("key", ...)` (passed to a helper, iterated, rebound),
`scene` named at all, `score` defined other than by one plain top-level def, a metric with
`prepare()` (its score() takes a fourth argument, made from the whole scene), and any route to the
caller's frame or to objects by reference (`locals`, `vars`, `globals`, `eval`, `exec`, frame and
traceback attributes, `sys`, `inspect`, `gc` and the like).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Literal

__all__ = ["EVERYTHING", "MetricInputs", "metric_inputs"]

# Names and modules that reach a frame's locals or arbitrary live objects, past any static reading.
_INTROSPECTION_NAMES = frozenset({"locals", "vars", "globals", "eval", "exec", "compile", "__import__", "breakpoint"})
_INTROSPECTION_MODULES = frozenset({"sys", "inspect", "gc", "traceback", "ctypes", "builtins", "types", "importlib"})
_FRAME_ATTRIBUTE_PREFIXES = ("f_", "tb_", "gi_", "cr_", "ag_", "__")


@dataclass(frozen=True, slots=True)
class MetricInputs:
    """What score() can read besides the pixels: the scene or not, and which keys of the object (None: any)."""

    scene: bool
    obj_keys: frozenset[str] | None

    def depends_on(self, level: str) -> Literal["scene", "pixels", "box"]:
        """What a call's result depends on besides the pixels: the whole scene, nothing, or keys of its box."""
        if self.scene or self.obj_keys is None:
            return "scene"
        return "pixels" if level == "image" else "box"


EVERYTHING = MetricInputs(scene=True, obj_keys=None)


def metric_inputs(source: str, level: str) -> MetricInputs:
    """The inputs score() in `source` can read; `EVERYTHING` wherever that can't be shown."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return EVERYTHING
    score = _the_score_function(tree)
    if score is None or _introspects(tree):
        return EVERYTHING
    names = [arg.arg for arg in score.args.args]
    expected = 2 if level == "image" else 3
    if len(names) != expected or score.args.vararg or score.args.kwarg or score.args.kwonlyargs:
        return EVERYTHING
    scene_name = names[-1]
    body = ast.Module(body=score.body, type_ignores=[])
    # Defaults and annotations are evaluated at def time, outside any call: they can't see the arguments.
    if any(isinstance(node, ast.Name) and node.id == scene_name for node in ast.walk(body)):
        return EVERYTHING
    if level == "image":
        return MetricInputs(scene=False, obj_keys=frozenset())
    keys = _keys_read(body, names[1])
    # The whole object includes its id, which differs between versions: as good as reading everything.
    return EVERYTHING if keys is None else MetricInputs(scene=False, obj_keys=keys)


def _the_score_function(tree: ast.Module) -> ast.FunctionDef | None:
    """The one top-level `def score` the worker will call, or None when anything else may bind `score`."""
    defs = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "score"]
    if len(defs) != 1 or defs[0].decorator_list:
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id == "score" and not isinstance(node.ctx, ast.Load):
            return None
        if isinstance(node, ast.Global | ast.Nonlocal) and "score" in node.names:
            return None
        if isinstance(node, ast.alias) and (node.asname or node.name) == "score":
            return None
    return defs[0]


def _introspects(tree: ast.Module) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in _INTROSPECTION_NAMES:
            return True
        if isinstance(node, ast.Attribute) and node.attr.startswith(_FRAME_ATTRIBUTE_PREFIXES):
            return True
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] in _INTROSPECTION_MODULES for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in _INTROSPECTION_MODULES:
            return True
    return False


def _keys_read(body: ast.Module, obj_name: str) -> frozenset[str] | None:
    """The constant keys `obj` is read with; None when it is used any other way."""
    parents: dict[int, ast.AST] = {}
    for node in ast.walk(body):
        for child in ast.iter_child_nodes(node):
            parents[id(child)] = node
    keys: set[str] = set()
    for node in ast.walk(body):
        if not (isinstance(node, ast.Name) and node.id == obj_name):
            continue
        if not isinstance(node.ctx, ast.Load):
            return None
        parent = parents.get(id(node))
        if isinstance(parent, ast.Subscript) and parent.value is node and isinstance(parent.ctx, ast.Load):
            key = _constant_string(parent.slice)
        elif isinstance(parent, ast.Attribute) and parent.value is node and parent.attr == "get":
            call = parents.get(id(parent))
            is_call = isinstance(call, ast.Call) and call.func is parent and call.args and not call.keywords
            key = _constant_string(call.args[0]) if is_call and len(call.args) <= 2 else None  # type: ignore[union-attr]
        else:
            key = None
        if key is None:
            return None
        keys.add(key)
    return frozenset(keys)


def _constant_string(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None
