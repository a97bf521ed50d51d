"""Reading a JSON file into a pydantic model, with one line naming the file for whatever is wrong with it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from agent.data.coco import describe_json_error
from agent.errors import UserError

__all__ = ["load_json_model", "read_text_file"]

Model = TypeVar("Model", bound=BaseModel)


def read_text_file(path: Path, what: str) -> str:
    """The UTF-8 text of `path`; a UserError saying `what` file it is (`this errors file`) and why it can't be read."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: cannot read {what}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None


def load_json_model(path: Path, model: type[Model], kind: str) -> Model:
    """`path` read and checked as `model`; a UserError saying which `kind` of file is unusable, and why."""
    path = Path(path)
    text = read_text_file(path, f"this {kind} file")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON: {describe_json_error(exc)}") from exc
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        problems = [_problem(error) for error in exc.errors()]
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise UserError(f"{path}: not a valid {kind} file: {shown}") from exc


def _problem(error: Any) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "top level"
    return f"{where}: {error['msg']}"
