"""The batch line format, shared by `batch` and the queue's `enqueue` / `collect`: input lines
(an ``"id"`` and a `request.ChatRequest`) parsed and checked, and the result rows written for
them: ``{"id", "content", "model", "usage", "duration_ms"}`` or ``{"id", "error": {"category",
"message"}}``."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from typing import Any

from pydantic import ConfigDict, ValidationError

from .chat import ChatResult
from .request import ChatRequest

Row = dict[str, Any]
Lines = Iterator[tuple[str, "BatchLine | Row"]]  # (key, a valid line or its error row)


class BatchLine(ChatRequest):
    """A valid input line: the request (every `request.Parameters` field too) and its id."""

    model_config = ConfigDict(extra="allow")  # the file's own fields, never sent: `model_extra`

    id: str | int
{%- if cookiecutter.worker == "celery" %}


def request_of(line: BatchLine) -> ChatRequest:
    """The request alone: without the id and the file's own fields."""
    return ChatRequest.model_validate(line.model_dump(exclude={"id", *(line.model_extra or {})}))
{%- endif %}


def read_lines(lines: Iterable[bytes]) -> Lines:
    """Parse the input lazily; blank lines are skipped."""
    first_line_of: dict[str, int] = {}
    for number, raw in enumerate(lines, 1):
        if raw.strip():
            line = parse_line(number, raw, first_line_of)
            yield (row_key(line) if isinstance(line, dict) else json.dumps(line.id)), line


def parse_line(number: int, raw: bytes, first_line_of: dict[str, int]) -> BatchLine | Row:
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        return invalid(number, None, "not UTF-8 text")
    except json.JSONDecodeError as exc:
        return invalid(number, None, f"not valid JSON ({exc.msg} at column {exc.colno})")
    if not isinstance(data, dict):
        return invalid(number, None, "not a JSON object")
    row_id = data.get("id")
    if isinstance(row_id, bool) or not isinstance(row_id, (str, int)) or row_id == "":
        return invalid(number, None, 'no "id" (a non-empty string or an integer)')
    key = json.dumps(row_id)  # keeps 1 and "1" apart
    if key in first_line_of:
        return invalid(number, None, f"duplicate id {key} (first on line {first_line_of[key]})")
    first_line_of[key] = number
    try:
        return BatchLine.model_validate(data)
    except ValidationError as exc:
        return invalid(number, row_id, describe(exc))


def describe(exc: ValidationError) -> str:
    """What is wrong with a line, each problem naming its field (and what the field takes)."""
    problems = []
    for error in exc.errors(include_input=False, include_url=False)[:3]:
        problem = error["msg"].removeprefix("Value error, ")
        if error["loc"]:
            known = BatchLine.model_fields.get(str(error["loc"][0]))
            about = f" ({known.description})" if known and known.description else ""
            problem = f'"{".".join(map(str, error["loc"]))}"{about}: {problem}'
        problems.append(problem)
    return "; ".join(problems)


def invalid(number: int, row_id: str | int | None, reason: str) -> Row:
    error = {"category": "invalid_input", "message": f"line {number}: {reason}"}
    return {"id": row_id, "line": number, "error": error}


def row_key(row: Row) -> str:
    """What identifies a row for --resume: its id, or the line of one without a usable id."""
    return json.dumps(row["id"]) if row["id"] is not None else f"line:{int(row['line'])}"


def result_row(row_id: str | int, result: ChatResult, duration_ms: float) -> Row:
    usage = asdict(result.usage) if result.usage else None
    row = {"id": row_id, "content": result.content, "model": result.model, "usage": usage}
    return {**row, "duration_ms": duration_ms}


def error_row(row_id: str | int | None, category: str, message: str) -> Row:
    return {"id": row_id, "error": {"category": category, "message": message}}
