"""Jinja2 evaluation of lm-eval-style ``doc_to_*`` fields — as data, never as code.

Same semantics as lm-eval: a plain field name returns that field; a string that is exactly one
``{{ expression }}`` returns the expression's Python value (so ``{{choices.text}}`` is a list and
``{{label}}`` an int); anything else renders to text.

Task folders are shared like datasets, so a template must not be able to run code on the machine
that renders it. Templates are therefore

* checked before use (:func:`check_template`, called when a task YAML is loaded): no attribute or
  key starting with ``_`` (the way to ``__globals__``/``__subclasses__``), only the filters in
  :data:`ALLOWED_FILTERS`, and no names but the document's fields;
* rendered in jinja2's :class:`~jinja2.sandbox.ImmutableSandboxedEnvironment` with every global
  (``lipsum``, ``cycler``, ``joiner``, ``namespace``, ``range``, ``dict``) removed, as a second wall.

A refused template is one :class:`CfbenchError` line naming the field and the construct.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from cfbench.errors import CfbenchError


def _regex_replace(s: str, find: str, repl: str) -> str:
    return re.sub(find, repl, s)


#: Filters a task template may use: jinja2's pure text/number filters plus the project's own.
_JINJA_FILTERS = (
    "int", "float", "string", "join", "replace", "lower", "upper", "trim", "title", "capitalize",
    "first", "last", "length", "default", "list", "truncate", "wordcount", "abs", "round",
)  # fmt: skip
ALLOWED_FILTERS: dict[str, Any] = {name: jinja2.filters.FILTERS[name] for name in _JINJA_FILTERS}
ALLOWED_FILTERS["regex_replace"] = _regex_replace
#: Tests (``x is defined``) are harmless predicates; keep jinja2's.
_ENV = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
_ENV.globals.clear()
_ENV.filters.clear()
_ENV.filters.update(ALLOWED_FILTERS)
_SINGLE_EXPR = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\{\{|\}\}).)*)\}\}\s*$", re.S)
_REFUSED_NODES = (nodes.Import, nodes.FromImport, nodes.Include, nodes.Extends, nodes.Macro, nodes.CallBlock)


def _unsafe(field: str, what: str) -> CfbenchError:
    return CfbenchError(
        f"{field}: template refused ({what}); task templates are data — use only document fields, "
        f"plain expressions and the filters {', '.join(sorted(ALLOWED_FILTERS))}"
    )


@lru_cache(maxsize=1024)
def check_template(src: str, field: str = "template") -> None:
    """Refuse templates that reach past the document (dunder access, unknown filters, imports, macros)."""
    if "{{" not in src and "{%" not in src:
        return
    try:
        tree = _ENV.parse(src)
    except jinja2.TemplateSyntaxError as exc:
        raise CfbenchError(f"{field}: invalid template {src[:60]!r} ({exc.message}); fix the YAML") from exc
    for node in tree.find_all(nodes.Node):
        if isinstance(node, _REFUSED_NODES):
            raise _unsafe(field, f"{type(node).__name__.lower()} is not allowed")
        if isinstance(node, nodes.Getattr) and node.attr.startswith("_"):
            raise _unsafe(field, f"attribute {node.attr!r}")
        key = node.arg.value if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) else None
        if isinstance(key, str) and key.startswith("_"):
            raise _unsafe(field, f"key {key!r}")
        if isinstance(node, nodes.Filter) and node.name not in ALLOWED_FILTERS:
            raise _unsafe(field, f"filter {node.name!r}")
        if isinstance(node, nodes.Name) and node.name.startswith("_"):
            raise _unsafe(field, f"name {node.name!r}")


def check_spec(spec: Any, field: str) -> None:
    """:func:`check_template` over a ``doc_to_*`` spec (a template string or a list of them)."""
    for s in spec if isinstance(spec, list) else [spec]:
        if isinstance(s, str):
            check_template(s, field)


@lru_cache(maxsize=512)
def _template(src: str) -> jinja2.Template:
    return _ENV.from_string(src)


@lru_cache(maxsize=512)
def _expression(src: str) -> Any:
    return _ENV.compile_expression(src, undefined_to_none=False)


def render_text(template: str, doc: dict[str, Any], field: str = "template") -> str:
    """Render a text template (or return a field's value as text when given a bare field name)."""
    if "{{" not in template and "{%" not in template and template in doc:
        return str(doc[template])
    check_template(template, field)
    try:
        return _template(template).render(**doc)
    except SecurityError as exc:
        raise _unsafe(field, str(exc)) from exc
    except jinja2.TemplateError as exc:
        raise CfbenchError(f"{field}: cannot render {template[:60]!r} ({exc}); check field names in the YAML") from exc


def evaluate(spec: Any, doc: dict[str, Any], field: str = "template") -> Any:
    """Value of ``doc_to_choice`` / ``doc_to_target``-style specs (list, int, field, expression)."""
    if isinstance(spec, list):
        return [render_text(s, doc, field) if isinstance(s, str) else s for s in spec]
    if not isinstance(spec, str):
        return spec
    if spec in doc:
        return doc[spec]
    m = _SINGLE_EXPR.match(spec)
    if m:
        check_template(spec, field)
        try:
            value = _expression(m.group("expr").strip())(**doc)
        except SecurityError as exc:
            raise _unsafe(field, str(exc)) from exc
        except jinja2.TemplateError as exc:
            raise CfbenchError(f"{field}: cannot evaluate {spec!r} ({exc}); check field names in the YAML") from exc
        if isinstance(value, jinja2.Undefined):  # a missing field, or an attribute the sandbox withheld
            raise CfbenchError(
                f"{field}: {spec!r} is undefined for this document (a missing field, or access the sandbox "
                "refuses); check field names in the YAML"
            )
        return value
    return render_text(spec, doc, field)
