"""Static validation of the metric file contract (see prompts/CONTRACT.md).

A metric file is untrusted code, often written by a model, so everything here reads it with `ast`
only: nothing in this module imports, compiles to bytecode or executes the file. The sandbox runs
it later; this module decides whether it is worth running and what it claims to be.
"""

from __future__ import annotations

import ast
import hashlib
import math
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent import resources
from agent.data.inject import INJECT_TYPES
from agent.errors import UserError

BUILTIN_PREFIX = "builtin:"
NAME_PATTERN = r"^[a-z][a-z0-9_]*$"
NAME_MAX_LENGTH = 64
# The rows an evaluation adds beside the metrics' own: a metric of the same name would be shown as one of them.
BASELINE_NAMES = frozenset({"random", "combined", "rank_average"})
# Besides the standard library, only what the sandbox image ships; anything else would fail at
# import time inside the sandbox, far from the line that caused it.
ALLOWED_THIRD_PARTY: frozenset[str] = frozenset({"numpy", "cv2", "math"})
LEVEL_PARAMETERS: dict[str, tuple[str, ...]] = {
    "image": ("image", "scene"),
    "object": ("image", "obj", "scene"),
}

_NAME_RE = re.compile(NAME_PATTERN)
_CONTRACT_CONSTANTS = (
    "NAME", "LEVEL", "SUSPICIOUS", "TITLE", "RANGE", "TAGS", "OUTPUT", "NEIGHBOURS", "COMBINE", "ERRORS",
)  # fmt: skip
_REQUIRED_CONSTANTS = ("NAME", "LEVEL", "SUSPICIOUS")
_FUNCTIONS = ("score", "prepare")  # the functions the worker calls; prepare is optional
_CONTRACT_NAMES = frozenset({*_CONTRACT_CONSTANTS, *_FUNCTIONS})
# An object metric may define `prepare(image, scene)`: the worker calls it once per image (per scene),
# and score() then takes its result as a fourth argument, so work on the whole image is done once.
PREPARE_PARAMETERS = ("image", "scene")
PREPARED_SCORE_PARAMETERS = ("image", "obj", "scene", "prepared")
_IMPORT_RULE = "a metric may import only numpy, cv2, math and the standard library"

Origin = Literal["file", "builtin", "library"]


DEFAULT_NEIGHBOURS = 10
MAX_NEIGHBOURS = 100
# What a learned feature metric can be trained to find: every injected error type that leaves a box to score.
LEARNABLE_ERRORS = tuple(t for t in INJECT_TYPES if t != "drop")


class MetricSpec(BaseModel):
    """What a metric file declares, plus the exact text that approval and execution will use."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, max_length=NAME_MAX_LENGTH)
    level: Literal["image", "object"]
    suspicious: Literal["high", "low"]
    description: str = Field(min_length=1)
    title: str | None = None
    value_range: tuple[float | None, float | None] | None = None
    tags: tuple[str, ...] = ()
    # "features": score() returns a feature vector; metricsmith turns the vectors into scores
    # (the share of each box's nearest neighbours labelled with another class).
    output: Literal["score", "features"] = "score"
    neighbours: int = Field(default=DEFAULT_NEIGHBOURS, ge=1, le=MAX_NEIGHBOURS)
    # How a feature metric's vectors become scores: "neighbours" (the k-NN class disagreement above), or
    # "learned" (a classifier trained on errors injected into the dataset: agent.metrics.learned).
    combine: Literal["neighbours", "learned"] = "neighbours"
    # A learned metric: the injected error types its classifier learns to tell from the dataset's boxes.
    learns: tuple[str, ...] = ()
    # A file that lists ERRORS declares one metric per type, NAME_type, each with its own classifier (see
    # `file_metrics`); this is the file's NAME on each of them, and None on every other metric.
    family: str | None = None
    source: str
    path: str
    origin: Origin
    imports: tuple[str, ...]
    code_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class MetricFileError(UserError):
    """A metric file breaks the contract.

    `str(err)` is `path:line: reason` (or `path: reason`) for one problem. For several it is a
    header line naming the file and then one such line per problem, so that a user fixes them all
    in one edit rather than one per run. `line` and `reason` are the first problem's.
    """

    def __init__(
        self,
        path: str,
        line: int | None,
        reason: str,
        problems: tuple[tuple[int | None, str], ...] = (),
    ) -> None:
        self.path = path
        self.line = line
        self.reason = reason
        # Every problem found, first one included, so a repair prompt can list them all in one round.
        self.problems: tuple[tuple[int | None, str], ...] = problems or ((line, reason),)
        if len(self.problems) == 1:
            message = _located(path, line, reason)
        else:
            # Indented as the CLI lists a COCO file's problems under its `error:` line.
            listed = "\n".join(f"  {_located(path, at, why)}" for at, why in self.problems)
            message = f"{path}: {len(self.problems)} problems break the metric contract:\n{listed}"
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        # The default reduce passes only the message back to __init__, which needs three arguments;
        # keep errors picklable so they can cross a process boundary (a worker pool, a sandbox).
        return (type(self), (self.path, self.line, self.reason, self.problems))


def _located(path: str, line: int | None, reason: str) -> str:
    return f"{path}:{line}: {reason}" if line is not None else f"{path}: {reason}"


# A problem is (line or None, reason). Checks append to a list rather than raise, so that one error
# reports every problem, in line order whatever order the checks happen to run in.
_Problem = tuple[int | None, str]


def _raise_problems(path: str, problems: list[_Problem]) -> None:
    if not problems:
        return
    # Stable sort: line-less problems (missing things) go last, ties keep check order.
    ordered = sorted(problems, key=lambda p: (p[0] is None, p[0] or 0))
    line, reason = ordered[0]
    raise MetricFileError(path, line, reason, tuple(ordered))


def _allowed_module(top: str) -> bool:
    return top in ALLOWED_THIRD_PARTY or top in sys.stdlib_module_names


def _import_problems(tree: ast.AST) -> tuple[tuple[str, ...], list[_Problem]]:
    """Top-level module names imported anywhere in `tree`, and the imports that break the rule."""
    names: set[str] = set()
    problems: list[_Problem] = []
    # The whole tree, not just the module body: an import inside score() fails just the same.
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                dots = "." * node.level
                problems.append(
                    (
                        node.lineno,
                        f"relative import 'from {dots}{node.module or ''} import ...' is not allowed; "
                        "a metric is one self-contained file",
                    )
                )
                continue
            modules = [node.module or ""]
        else:
            continue
        for module in modules:
            top = module.split(".")[0]
            if not _allowed_module(top):
                problems.append((node.lineno, f"imports '{top}'; {_IMPORT_RULE}"))
            elif top != "__future__":
                # __future__ is a compiler switch, not a dependency worth listing.
                names.add(top)
    return tuple(sorted(names)), problems


def check_imports(tree: ast.AST, path: str = "<metric>") -> tuple[str, ...]:
    """Sorted top-level modules that `tree` imports; raises one MetricFileError listing every bad import.

    Only static `import` statements are seen; `__import__` and friends are the sandbox's job.
    """
    names, problems = _import_problems(tree)
    _raise_problems(path, problems)
    return names


_NEW_SCOPES = (
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.ClassDef,
    ast.Lambda,
    ast.ListComp,
    ast.SetComp,
    ast.DictComp,
    ast.GeneratorExp,
)


def _scope_nodes(node: ast.AST) -> Iterator[ast.AST]:
    """`node` and its descendants that still belong to the module scope.

    Function, lambda, class and comprehension bodies have their own scopes, so a local called
    `score` or `NAME` there is harmless; their names (def/class) do bind in the module.
    """
    yield node
    if isinstance(node, _NEW_SCOPES):
        return
    for child in ast.iter_child_nodes(node):
        yield from _scope_nodes(child)


def _bound_names(node: ast.AST) -> list[str]:
    """Names that `node` itself binds in its scope (not counting its descendants)."""
    if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
        return [node.id]
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [node.name]
    if isinstance(node, ast.Import | ast.ImportFrom):
        return [alias.asname or alias.name.split(".")[0] for alias in node.names]
    if isinstance(node, ast.ExceptHandler | ast.MatchAs | ast.MatchStar) and node.name:
        return [node.name]
    if isinstance(node, ast.MatchMapping) and node.rest:
        return [node.rest]
    return []


def _is_plain_assignment(stmt: ast.stmt) -> bool:
    """`X = literal` / `X = Y = literal` / `X: T = literal` with plain names only."""
    if isinstance(stmt, ast.Assign):
        return all(isinstance(target, ast.Name) for target in stmt.targets)
    return isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None


def _stray_binding_problems(tree: ast.Module) -> tuple[list[_Problem], set[str]]:
    """Contract names bound other than by a top-level `X = literal` or a top-level `def score`.

    Anything else (inside an `if`, through an import, a loop, `global`) would make the value
    depend on running the file, which is exactly what this module refuses to do.
    """
    problems: list[_Problem] = []
    names: set[str] = set()
    for stmt in tree.body:
        if _is_plain_assignment(stmt):
            # Constants are checked by _constant_values; only `score = ...` or `prepare = ...` is out of place here.
            assert isinstance(stmt, ast.Assign | ast.AnnAssign)
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            for target in targets:
                if isinstance(target, ast.Name) and target.id in _FUNCTIONS:
                    problems.append((stmt.lineno, _stray_reason(target.id)))
            # A walrus in the value (`X = [(NAME := ...)]`) still binds at module scope.
            candidates: list[ast.AST] = list(_scope_nodes(stmt.value)) if stmt.value is not None else []
        elif isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef) and stmt.name in _FUNCTIONS:
            # Its name is fine; its decorators and defaults are still module-scope expressions.
            candidates = []
            for part in [*stmt.decorator_list, *stmt.args.defaults, *stmt.args.kw_defaults]:
                if part is not None:
                    candidates.extend(_scope_nodes(part))
        else:
            candidates = list(_scope_nodes(stmt))
        for node in candidates:
            for name in _bound_names(node):
                if name in _CONTRACT_NAMES:
                    line = getattr(node, "lineno", stmt.lineno)
                    problems.append((line, _stray_reason(name)))
                    names.add(name)
    # `global NAME` inside a function lets runtime code rebind a constant after validation.
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            for name in node.names:
                if name in _CONTRACT_NAMES:
                    problems.append((node.lineno, f"'global {name}' is not allowed; {name} is fixed"))
    return problems, names


def _stray_reason(name: str) -> str:
    if name in _FUNCTIONS:
        return f"{name} must be defined once with a plain top-level 'def {name}(...)'"
    return f"{name} must be set once by a plain top-level assignment '{name} = <literal>'"


def _constant_values(
    tree: ast.Module,
) -> tuple[dict[str, tuple[int, Any]], list[_Problem], set[str]]:
    """The literal value and line of each contract constant assigned at the top level.

    Also returns every constant name assigned at all, literal or not, so that a computed NAME is
    reported as computed rather than as missing.
    """
    values: dict[str, tuple[int, Any]] = {}
    problems: list[_Problem] = []
    assigned: set[str] = set()
    for stmt in tree.body:
        if not _is_plain_assignment(stmt):
            continue
        assert isinstance(stmt, ast.Assign | ast.AnnAssign)
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        names = [t.id for t in targets if isinstance(t, ast.Name) and t.id in _CONTRACT_CONSTANTS]
        if not names:
            continue
        assigned.update(names)
        assert stmt.value is not None
        try:
            value = ast.literal_eval(stmt.value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            for name in names:
                problems.append((stmt.lineno, f"{name} must be a literal value, not a computed expression"))
            continue
        for name in names:
            if name in values:
                first_line, first_value = values[name]
                # Identical repeats are harmless; a different value means the file says two things.
                if first_value != value:
                    problems.append(
                        (
                            stmt.lineno,
                            f"{name} is assigned again with a different value (first at line {first_line})",
                        )
                    )
                continue
            values[name] = (stmt.lineno, value)
    return values, problems, assigned


def _check_constants(
    values: dict[str, tuple[int, Any]], mentioned: set[str], problems: list[_Problem]
) -> dict[str, Any]:
    """Validate each constant's value; return the normalized ones that passed.

    `mentioned` holds names already reported with a line (computed, bound oddly), which are
    therefore not also "not defined".
    """
    out: dict[str, Any] = {}
    for name in _REQUIRED_CONSTANTS:
        if name not in values and name not in mentioned:
            problems.append((None, f"{name} is not defined; a metric must set NAME, LEVEL and SUSPICIOUS"))

    for name, (line, value) in values.items():
        error = _constant_error(name, value)
        if error is not None:
            problems.append((line, error))
        else:
            out[name] = _normalize(name, value)
    return out


def _constant_error(name: str, value: Any) -> str | None:
    if name == "NAME":
        if not isinstance(value, str):
            return f"NAME must be a string, got {value!r}"
        if len(value) > NAME_MAX_LENGTH:
            return f"NAME must be at most {NAME_MAX_LENGTH} characters, got {len(value)}"
        if not _NAME_RE.match(value):
            return (
                "NAME must be snake_case (lowercase letters, digits and underscores, "
                f"starting with a letter), got {value!r}"
            )
        if value in BASELINE_NAMES:
            return f"NAME {value!r} is a baseline's, which every evaluation shows beside the metrics; choose another"
    elif name == "LEVEL":
        if not isinstance(value, str) or value not in ("image", "object"):
            return f"LEVEL must be 'image' or 'object', got {value!r}"
    elif name == "SUSPICIOUS":
        if not isinstance(value, str) or value not in ("high", "low"):
            return f"SUSPICIOUS must be 'high' or 'low', got {value!r}"
    elif name == "TITLE":
        if value is not None and (not isinstance(value, str) or not value.strip()):
            return f"TITLE must be a non-empty string, got {value!r}"
    elif name == "RANGE":
        return _range_error(value)
    elif name == "TAGS" and not _is_tag_list(value):
        return f"TAGS must be a list of non-empty strings, got {value!r}"
    elif name == "OUTPUT":
        if not isinstance(value, str) or value not in ("score", "features"):
            return f"OUTPUT must be 'score' or 'features', got {value!r}"
    elif name == "NEIGHBOURS" and (
        not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_NEIGHBOURS
    ):
        return f"NEIGHBOURS must be a whole number from 1 to {MAX_NEIGHBOURS}, got {value!r}"
    elif name == "COMBINE":
        if not isinstance(value, str) or value not in ("neighbours", "learned"):
            return f"COMBINE must be 'neighbours' or 'learned', got {value!r}"
    elif name == "ERRORS" and (
        not isinstance(value, list | tuple)
        or not value
        or not all(isinstance(t, str) and t in LEARNABLE_ERRORS for t in value)
        or len(set(value)) != len(value)
    ):
        return f"ERRORS must be a list of distinct error types from {', '.join(LEARNABLE_ERRORS)}, got {value!r}"
    return None


_FEATURE_ONLY = ("NEIGHBOURS", "COMBINE", "ERRORS")


def _feature_problems(values: dict[str, tuple[int, Any]], constants: dict[str, Any]) -> list[_Problem]:
    """A feature metric's score is a class-disagreement share, so only one LEVEL and direction fit."""
    if constants.get("OUTPUT") != "features":
        return [
            (values[name][0], f"{name} applies only to OUTPUT = 'features'") for name in _FEATURE_ONLY if name in values
        ]
    line = values["OUTPUT"][0]
    problems: list[_Problem] = []
    learned = constants.get("COMBINE") == "learned"
    if learned and "NEIGHBOURS" in values:
        problems.append((values["NEIGHBOURS"][0], "NEIGHBOURS applies only to COMBINE = 'neighbours'"))
    if not learned and "ERRORS" in values:
        problems.append((values["ERRORS"][0], "ERRORS applies only to COMBINE = 'learned'"))
    if constants.get("LEVEL", "object") != "object":
        problems.append((line, "OUTPUT = 'features' needs LEVEL = 'object': neighbours are compared by class"))
    if constants.get("SUSPICIOUS", "high") != "high":
        problems.append((line, "OUTPUT = 'features' needs SUSPICIOUS = 'high': the score is a disagreement share"))
    return problems


def _is_tag_list(value: Any) -> bool:
    return isinstance(value, list | tuple) and all(isinstance(t, str) and t.strip() for t in value)


def _is_number(value: Any) -> bool:
    # bool is an int subclass, but RANGE = (False, True) is surely a mistake.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _range_error(value: Any) -> str | None:
    if value is None:
        return None
    shape = "RANGE must be (low, high) where each bound is a number or None"
    if not isinstance(value, list | tuple) or len(value) != 2:
        return f"{shape}, got {value!r}"
    if not all(bound is None or _is_number(bound) for bound in value):
        return f"{shape}, got {value!r}"
    if not all(bound is None or math.isfinite(bound) for bound in value):
        return f"RANGE bounds must be finite (use None for an open end), got {value!r}"
    low, high = value
    if low is not None and high is not None and low >= high:
        return f"RANGE low bound must be below the high bound, got {value!r}"
    return None


def _normalize(name: str, value: Any) -> Any:
    if name == "RANGE" and value is not None:
        return tuple(None if bound is None else float(bound) for bound in value)
    if name == "TAGS":
        return tuple(value)
    if name == "TITLE" and value is not None:
        return value.strip()
    return value


def _format_parameters(args: ast.arguments) -> str:
    """Render a parameter list as written, so the error shows what the file actually declares."""
    positional = [*args.posonlyargs, *args.args]
    first_default = len(positional) - len(args.defaults)
    parts = [a.arg + ("=..." if i >= first_default else "") for i, a in enumerate(positional)]
    if args.posonlyargs:
        parts.insert(len(args.posonlyargs), "/")
    if args.vararg is not None:
        parts.append("*" + args.vararg.arg)
    elif args.kwonlyargs:
        parts.append("*")
    for arg, default in zip(args.kwonlyargs, args.kw_defaults, strict=True):
        parts.append(arg.arg + ("=..." if default is not None else ""))
    if args.kwarg is not None:
        parts.append("**" + args.kwarg.arg)
    return ", ".join(parts)


def _function_problems(
    tree: ast.Module, name: str, expected: tuple[str, ...] | None, for_what: str
) -> tuple[ast.FunctionDef | ast.AsyncFunctionDef | None, list[_Problem]]:
    """The top-level `def NAME` and what is wrong with it: defined twice, async, decorated, other parameters."""
    problems: list[_Problem] = []
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    defs = [stmt for stmt in tree.body if isinstance(stmt, functions) and stmt.name == name]
    if not defs:
        return None, problems
    first = defs[0]
    for extra in defs[1:]:
        problems.append((extra.lineno, f"{name} is defined more than once (first at line {first.lineno})"))
    if isinstance(first, ast.AsyncFunctionDef):
        problems.append((first.lineno, f"{name} must be a plain 'def', not 'async def'"))
    if first.decorator_list:
        # A decorator can replace the function, so the signature checked here would mean nothing.
        problems.append((first.decorator_list[0].lineno, f"{name} must not be decorated"))
    if expected is not None:
        args = first.args
        exact = (
            not args.posonlyargs
            and not args.vararg
            and not args.kwonlyargs
            and not args.kwarg
            and not args.defaults
            and tuple(a.arg for a in args.args) == expected
        )
        if not exact:
            problems.append(
                (first.lineno, f"{name} must take ({', '.join(expected)}){for_what}, got ({_format_parameters(args)})")
            )
    return first, problems


def _score_problems(tree: ast.Module, level: str | None) -> list[_Problem]:
    prepare, problems = _function_problems(tree, "prepare", PREPARE_PARAMETERS, "")
    if prepare is not None and level == "image":
        reason = "prepare is for LEVEL 'object' only: an image metric is called once per image anyway"
        problems.append((prepare.lineno, reason))
    if prepare is not None and level == "object":
        expected: tuple[str, ...] | None = PREPARED_SCORE_PARAMETERS
        for_what = " when the metric defines prepare()"
    else:
        expected = LEVEL_PARAMETERS.get(level or "")
        for_what = f" for LEVEL '{level}'"
    score, score_problems = _function_problems(tree, "score", expected, for_what)
    if score is None:
        return [*problems, (None, "defines no function 'score'")]
    return [*problems, *score_problems]


def _docstring(tree: ast.Module, problems: list[_Problem]) -> str | None:
    text = ast.get_docstring(tree, clean=True)
    if text is None:
        problems.append((None, "has no module docstring; its text is the metric's description"))
        return None
    if not text.strip():
        problems.append((tree.body[0].lineno, "the module docstring is empty; describe what the metric measures"))
        return None
    return text.strip()


def _parse_tree(source: str, path: str) -> ast.Module:
    try:
        return ast.parse(source, filename=path)
    except SyntaxError as err:
        raise MetricFileError(path, err.lineno, f"syntax error: {err.msg}") from None
    except ValueError as err:  # older Pythons report NUL bytes this way
        raise MetricFileError(path, None, f"cannot parse: {err}") from None
    except (RecursionError, MemoryError):
        raise MetricFileError(path, None, "cannot parse: the code is nested too deeply") from None


def code_sha256(source: str) -> str:
    """The sha256 of a metric's exact text: what approval binds to and what repeat detection compares."""
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def parse_metric_source(source: str, path: str = "<metric>", origin: Origin = "file") -> MetricSpec:
    """Validate a metric's text against the contract and describe it. Pure: no I/O, no execution.

    Raises one MetricFileError listing every problem by line (problems without a line come last).
    A syntax error is the exception: without a tree there is nothing left to check.
    """
    if origin not in ("file", "builtin", "library"):
        raise ValueError(f"origin must be 'file', 'builtin' or 'library', got {origin!r}")
    # A syntax error raises here, alone: every check below needs the parsed tree.
    tree = _parse_tree(source, path)

    problems: list[_Problem] = []
    description = _docstring(tree, problems)
    values, value_problems, assigned = _constant_values(tree)
    problems.extend(value_problems)
    stray_problems, stray_names = _stray_binding_problems(tree)
    problems.extend(stray_problems)
    constants = _check_constants(values, assigned | stray_names, problems)
    problems.extend(_feature_problems(values, constants))
    problems.extend(_score_problems(tree, constants.get("LEVEL")))
    imports, import_problems = _import_problems(tree)
    problems.extend(import_problems)
    _raise_problems(path, problems)

    assert description is not None  # every missing piece above was reported as a problem
    return MetricSpec(
        name=constants["NAME"],
        level=constants["LEVEL"],
        suspicious=constants["SUSPICIOUS"],
        description=description,
        title=constants.get("TITLE"),
        value_range=constants.get("RANGE"),
        tags=constants.get("TAGS", ()),
        output=constants.get("OUTPUT", "score"),
        neighbours=constants.get("NEIGHBOURS", DEFAULT_NEIGHBOURS),
        combine=constants.get("COMBINE", "neighbours"),
        learns=tuple(constants.get("ERRORS", LEARNABLE_ERRORS)) if constants.get("COMBINE") == "learned" else (),
        family=constants["NAME"] if len(constants.get("ERRORS", ())) > 1 else None,
        source=source,
        path=path,
        origin=origin,
        imports=imports,
        # Over the exact text that will run, so approving a metric pins this very code.
        code_sha256=code_sha256(source),
    )


def _read_source(file: Path, shown: str) -> str:
    """The file's text, or a MetricFileError naming `shown` (what the user typed)."""
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise MetricFileError(shown, None, "no such metric file") from None
    except IsADirectoryError:
        raise MetricFileError(shown, None, "is a directory, not a metric .py file") from None
    except PermissionError:
        raise MetricFileError(shown, None, "cannot read the file: permission denied") from None
    except OSError as err:
        raise MetricFileError(shown, None, f"cannot read the file: {err.strerror or err}") from None
    try:
        # utf-8-sig: a BOM from a Windows editor is not part of the code (and ast rejects it).
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise MetricFileError(
            shown, line, f"is not UTF-8 text (byte 0x{data[err.start]:02x}); save the file as UTF-8"
        ) from None


def file_metrics(spec: MetricSpec) -> list[MetricSpec]:
    """The metrics a parsed file declares: itself, or for a learned file listing several ERRORS, one per type.

    Each of those is named NAME_type and learns that type alone: one classifier per type ranks that
    type's errors far better than one classifier of all of them, whose top is shared by every type.
    """
    if spec.family is None or len(spec.learns) < 2:
        return [spec]
    return [spec.model_copy(update={"name": f"{spec.family}_{error}", "learns": (error,)}) for error in spec.learns]


def _builtin_files() -> list[str]:
    """The shipped metric files' names, from file names alone (no parsing, so never fails on content)."""
    folder = resources.builtin_metrics_dir()
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.py") if p.is_file() and _NAME_RE.match(p.stem))


def _parse_builtin(stem: str, ref: str) -> MetricSpec:
    file = resources.builtin_metrics_dir() / f"{stem}.py"
    spec = parse_metric_source(_read_source(file, ref), path=f"{BUILTIN_PREFIX}{stem}", origin="builtin")
    if spec.name != stem:
        # builtin:NAME must mean the metric called NAME, or reports would disagree with the command line.
        raise MetricFileError(ref, None, f"declares NAME '{spec.name}' but its file is {stem}.py")
    return spec


def builtin_metric_names() -> list[str]:
    """Names usable as `builtin:NAME`: one per shipped metric (a file listing ERRORS gives one per type)."""
    return [spec.name for spec in list_builtin_metrics()]


def load_builtin_metrics(ref: str) -> list[MetricSpec]:
    """`builtin:NAME`: the metric so named, or every metric of the file so named (a learned file's types)."""
    name = ref[len(BUILTIN_PREFIX) :]
    files = _builtin_files()
    # Checking membership (not just existence) also stops 'builtin:../x' from leaving the folder.
    if name in files:
        return file_metrics(_parse_builtin(name, ref))
    for stem in files:
        if name.startswith(f"{stem}_"):
            found = [spec for spec in file_metrics(_parse_builtin(stem, ref)) if spec.name == name]
            if found:
                return found
    available = builtin_metric_names()
    listing = ", ".join(available) if available else "none are installed"
    raise MetricFileError(ref, None, f"unknown builtin metric '{name}'; available: {listing}")


def _load_builtin(ref: str) -> MetricSpec:
    specs = load_builtin_metrics(ref)
    if len(specs) > 1:
        names = ", ".join(spec.name for spec in specs)
        raise MetricFileError(ref, None, f"declares {len(specs)} metrics ({names}); name one of them")
    return specs[0]


def load_metric_file(ref: str) -> MetricSpec:
    """Read and validate a metric: `ref` is a file path, or `builtin:NAME` for a shipped metric."""
    if ref.startswith(BUILTIN_PREFIX):
        return _load_builtin(ref)
    return parse_metric_source(_read_source(Path(ref), ref), path=ref, origin="file")


def load_metric_files(ref: str) -> list[MetricSpec]:
    """Every metric `ref` declares: like `load_metric_file`, and a learned file listing ERRORS gives one per type."""
    if ref.startswith(BUILTIN_PREFIX):
        return load_builtin_metrics(ref)
    return file_metrics(load_metric_file(ref))


def list_builtin_metrics() -> list[MetricSpec]:
    """Every shipped metric, validated, sorted by name. A broken one raises: it is our bug to fix."""
    specs = [spec for stem in _builtin_files() for spec in file_metrics(_parse_builtin(stem, BUILTIN_PREFIX + stem))]
    return sorted(specs, key=lambda spec: spec.name)
