"""Local files the CLI reads (policies, chains): YAML or JSON, validated through the policy
models before anything is sent, each error naming the file and the field (exit 2)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

from control.cli.client import EXIT_USAGE, CliError
from control.errors import InvalidArgument
from control.rpc import convert

ERRORS_SHOWN = 20


def read_input(path: str) -> tuple[str, str]:
    """(text, name to show) of a file, or of stdin for '-'."""
    name = "<stdin>" if path == "-" else path
    try:
        return (sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")), name
    except OSError as exc:
        raise CliError(EXIT_USAGE, f"{name}: cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise CliError(EXIT_USAGE, f"{name}: not UTF-8 text (byte {exc.start})") from None


def _parse_json(text: str, name: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(EXIT_USAGE, f"{name}: line {exc.lineno}, column {exc.colno}: not valid JSON: "
                                   f"{exc.msg}") from None


def _parse_yaml(text: str, name: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise CliError(EXIT_USAGE, f"{name}: {where}not valid YAML: {problem}") from None


def load_document(path: str) -> tuple[Any, str]:
    """(parsed content, name to show): JSON for *.json, YAML otherwise (JSON text is tried first)."""
    text, name = read_input(path)
    if path.endswith(".json"):
        return _parse_json(text, name), name
    if text.lstrip().startswith(("{", "[")):
        try:
            return json.loads(text), name
        except json.JSONDecodeError:
            pass  # YAML flow style, or broken: YAML says where
    return _parse_yaml(text, name), name


def load_model(path: str, model: Any, what: str, informational: tuple[str, ...] = ()) -> Any:
    """A file validated as `model`; exit 2 naming the file and each bad field otherwise.
    Top-level keys in `informational` are dropped first (a listing's "generation")."""
    data, name = load_document(path)
    if data is None:
        raise CliError(EXIT_USAGE, f"{name}: empty document: write {what} (an empty policy is `{{}}`)")
    if not isinstance(data, dict):
        raise CliError(EXIT_USAGE, f"{name}: expected a mapping ({what}), found a {type(data).__name__}")
    data = {k: v for k, v in data.items() if k not in informational}
    try:
        return convert.validated(model.model_validate, data)
    except InvalidArgument as exc:
        lines = [f"{name}: {path_.replace('(policy)', '(top level)')}: {reason}"
                 for path_, reason in exc.errors[:ERRORS_SHOWN]]
        if len(exc.errors) > ERRORS_SHOWN:
            lines.append(f"{name}: and {len(exc.errors) - ERRORS_SHOWN} more errors")
        raise CliError(EXIT_USAGE, *lines) from None
