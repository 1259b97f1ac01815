"""Writes ``helm/<service>/values.schema.json`` for the four service charts, so that ``helm
install``, ``helm template`` and ``helm lint`` refuse values a service would refuse (or silently
ignore), such as a misspelled key under ``settings:``.

    .venv/bin/python scripts/helm_schema.py          # (re)write the schemas
    .venv/bin/python scripts/helm_schema.py --check  # exit 1 when one is stale (tests/helm)

``settings:`` (and the generator's ``gpu.vllm:``, whose keys become ``vllm_<key>``) is derived from
the service's pydantic-settings model: each key is a field name, and the chart turns it into the
environment variable ``RAGFLEET_<SERVICE>_<KEY>`` (helm/ragfleet-common/templates/_configmap.tpl).
A value may be the field's own JSON type or, since it ends up as an environment string anyway, a
string the model parses: numbers and booleans as text, lists and objects as JSON (pydantic-settings
reads complex values as JSON). Constraints (enums, bounds, lengths, patterns) apply to the native
form; a number written as a string is only checked to look like one. Unknown keys are refused,
and so are the keys the chart always sets itself from other values (they would be overridden).

The rest of values.yaml is described by its own structure: the type of every key that the chart's
values.yaml sets, objects left open to keys it does not list (the umbrella chart adds ``enabled``
and ``global``), Kubernetes objects passed through as they are left unchecked inside.
"""

from __future__ import annotations

import argparse
import ast
import copy
import enum
import importlib
import inspect
import itertools
import json
import sys
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, create_model
from pydantic.errors import PydanticInvalidForJsonSchema, PydanticUserError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

REPO = Path(__file__).resolve().parents[1]
COMMAND = ".venv/bin/python scripts/helm_schema.py"
JSON_SCHEMA_DRAFT = "http://json-schema.org/draft-07/schema#"

Schema = dict[str, Any]


@dataclass(frozen=True)
class SettingsMap:
    """A values map whose key ``k`` sets the setting ``<prefix>k``, e.g. gpu.vllm -> vllm_."""

    path: str
    prefix: str
    managed: Mapping[str, str] = field(default_factory=dict)
    """Settings of that prefix the chart sets from other values (name -> where from)."""


@dataclass(frozen=True)
class Chart:
    name: str
    settings_class: str
    """``module:Class`` of the service's pydantic-settings model."""
    managed: Mapping[str, str] = field(default_factory=dict)
    """Settings the chart always sets from other values (name -> where from): not allowed under
    ``settings:``, where they would be overridden."""
    settings_maps: Sequence[SettingsMap] = ()
    """More values maps whose keys are settings with a name prefix."""
    from_settings: Mapping[str, str] = field(default_factory=dict)
    """Values paths that carry one setting's value (its native forms), e.g. backend."""

    @property
    def env_prefix(self) -> str:
        return f"RAGFLEET_{self.name.upper()}_"


# The service credential comes from a Secret mounted into every service's pods
# (helm/ragfleet-common/templates/_credential.tpl), never from a ConfigMap.
_CREDENTIAL_MANAGED = {
    "service_credential": "global.serviceCredential",
    "service_credential_file": "global.serviceCredential",
}
# The keys each chart's templates always set (ragfleet-common.configmap sets host, port and
# grace_period_s for the Deployment/StatefulSet services; generator.appEnv its own list).
_COMMON_MANAGED = {
    "host": "0.0.0.0",
    "port": "ports.grpc",
    "grace_period_s": "gracePeriodSeconds",
    **_CREDENTIAL_MANAGED,
}
CHARTS = (
    Chart(
        "embedder",
        "ragfleet_embedder.settings:EmbedderSettings",
        managed=_COMMON_MANAGED,
    ),
    Chart(
        "retriever",
        "ragfleet_retriever.settings:RetrieverSettings",
        managed={
            **_COMMON_MANAGED,
            "backend": "backend",
            "data_dir": "persistence.mountPath",
            "opensearch_url": "opensearch.url",
        },
        from_settings={"backend": "backend"},
    ),
    Chart(
        "generator",
        "ragfleet_generator.settings:GeneratorSettings",
        managed={
            "port": "ports.grpc",
            "http_port": "ports.serve",
            "app_name": "appName",
            "grace_period_s": "gracePeriodSeconds",
            "model_cache_dir": "modelCache.mountPath",
            **_CREDENTIAL_MANAGED,
        },
        # generator.appEnv, with gpu.enabled: each gpu.vllm.<key> sets vllm_<key>.
        settings_maps=(SettingsMap("gpu.vllm", "vllm_", managed={"vllm_models": "gpu.models"}),),
    ),
    Chart(
        "gateway",
        "ragfleet_gateway.settings:GatewaySettings",
        managed={
            **_COMMON_MANAGED,
            "rest_port": "ports.http",
            "embedder_address": "upstreams.embedder",
            "retriever_address": "upstreams.retriever",
            "generator_address": "upstreams.generator",
            "generator_application": "upstreams.generator.application",
            "api_keys_file": "auth.apiKeysSecret",
            "auth_disabled": "auth.disabled",
        },
    ),
)

# --- settings: pydantic field -> JSON schema ---------------------------------------------------

# Strings pydantic parses as the field's type (lax mode, as for environment variables).
_DIGITS = "[0-9](_?[0-9])*"
_INT_TEXT = rf"^\s*[+-]?{_DIGITS}(\.0+)?\s*$"
_NUMBER_TEXT = rf"^\s*[+-]?({_DIGITS}(\.({_DIGITS})?)?|\.{_DIGITS})([eE][+-]?[0-9]+)?\s*$"
_BOOL_WORDS = ("true", "false", "yes", "no", "on", "off", "t", "f", "y", "n", "1", "0")


def _any_case(word: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in word)


_BOOL_TEXT = "^(" + "|".join(_any_case(w) for w in _BOOL_WORDS) + ")$"
_TEXT_FORMS: dict[str, Schema] = {
    "integer": {"type": "string", "pattern": _INT_TEXT},
    "number": {"type": "string", "pattern": _NUMBER_TEXT},
    "boolean": {"type": "string", "pattern": _BOOL_TEXT},
    # Lists and objects are passed as JSON text, which pydantic-settings decodes.
    "array": {"type": "string"},
    "object": {"type": "string"},
}
# Keywords that describe rather than constrain; kept on the field only.
_ANNOTATIONS = (
    "title",
    "description",
    "default",
    "examples",
    "deprecated",
    "readOnly",
    "writeOnly",
)


def _inline_refs(schema: Any, defs: Mapping[str, Schema], seen: tuple[str, ...] = ()) -> Any:
    """``schema`` with every ``$ref`` into ``defs`` replaced by the definition (self-contained
    properties read better than a shared ``definitions``), and titles and formats dropped:
    pydantic's titles repeat the names and its formats (path, password) are not JSON Schema's."""
    if isinstance(schema, list):
        return [_inline_refs(item, defs, seen) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        name = str(schema["$ref"]).removeprefix("#/$defs/")
        if name in seen:
            raise ValueError(f"recursive type {name} cannot be inlined")
        target = _inline_refs(defs[name], defs, (*seen, name))
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        return {**target, **_inline_refs(rest, defs, seen)}
    out: Schema = {}
    for key, value in schema.items():
        if key in ("title", "format"):
            continue
        if key in ("properties", "patternProperties", "$defs"):
            out[key] = {k: _inline_refs(v, defs, seen) for k, v in value.items()}
        elif key in ("default", "examples", "const", "enum"):
            out[key] = value
        else:
            out[key] = _inline_refs(value, defs, seen)
    return out


def _pydantic_schema(name: str, info: FieldInfo) -> Schema | None:
    """The field's JSON schema as pydantic writes it, refs inlined; None when pydantic cannot
    describe its type."""
    holder: type[BaseModel] = create_model(
        "FieldHolder",
        __config__=ConfigDict(arbitrary_types_allowed=True, protected_namespaces=()),
        **{name: (info.annotation, copy.copy(info))},  # type: ignore[call-overload]
    )
    try:
        full = holder.model_json_schema(mode="validation")
    except (PydanticInvalidForJsonSchema, PydanticUserError):
        return None
    schema: Schema = _inline_refs(full["properties"][name], full.get("$defs", {}))
    return schema


def _forms(schema: Schema) -> list[Schema]:
    """The alternatives a settings value may take: each native form, plus the text that the
    environment variable would hold where that differs."""
    for key in ("anyOf", "oneOf"):
        if key in schema and len(schema) == 1 + sum(k in schema for k in _ANNOTATIONS):
            return [form for option in schema[key] for form in _forms(option)]
    core = {k: v for k, v in schema.items() if k not in _ANNOTATIONS}
    forms = [core]
    values = core.get("enum", [core["const"]] if "const" in core else None)
    if values is not None:
        texts = [v if isinstance(v, str) else json.dumps(v) for v in values]
        if texts != values:
            forms.append({"type": "string", "enum": texts})
    else:
        types = core.get("type")
        for kind in [types] if isinstance(types, str) else types or []:
            if kind in _TEXT_FORMS:
                forms.append(_TEXT_FORMS[kind])
    return forms


def _enum_member_docs(annotation: Any) -> list[str]:
    """``value: docstring`` of the members of the enums in ``annotation`` that document them
    (a string literal right after the member, as ragfleet's enums do)."""
    found: list[str] = []
    stack = [annotation]
    while stack:
        tp = stack.pop(0)
        stack.extend(getattr(tp, "__args__", ()))
        if not (inspect.isclass(tp) and issubclass(tp, enum.Enum)):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(tp)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for statement, following in itertools.pairwise(body):
            if (
                isinstance(statement, ast.Assign)
                and len(statement.targets) == 1
                and isinstance(statement.targets[0], ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                member = tp.__members__.get(statement.targets[0].id)
                if member is not None:
                    doc = " ".join(following.value.value.split())
                    found.append(f"{member.value}: {doc}")
    return found


def _has_input_validator(model: type[BaseModel], name: str) -> bool:
    """Whether a before/plain/wrap field validator may accept inputs that the field's type does
    not describe (unless it declares json_schema_input_type, which pydantic then documents)."""
    decorators = model.__pydantic_decorators__.field_validators.values()
    for decorator in decorators:
        info = decorator.info
        if name in info.fields and info.mode in ("before", "plain", "wrap"):
            declared = getattr(info, "json_schema_input_type", PydanticUndefined)
            if declared is Any or declared is PydanticUndefined:
                return True
    return False


def setting_schema(model: type[BaseModel], name: str, env_var: str) -> Schema:
    """The schema of one ``settings:`` value: the field's native forms, their text forms, and
    null (the chart then leaves the variable out, so the service default applies)."""
    info = model.model_fields[name]
    native = None if _has_input_validator(model, name) else _pydantic_schema(name, info)
    notes: list[str] = [info.description] if info.description else []
    if native is not None:  # e.g. an enum's docstring
        options: list[Schema] = native.get("anyOf") or native.get("oneOf") or []
        notes += [str(o["description"]) for o in options if o.get("description")]
    notes += _enum_member_docs(info.annotation)
    if native is None:
        # Inputs that pydantic cannot describe (or a validator widens): any value or its JSON.
        forms: list[Schema] = [{}]
        notes.append("not checked here (the service validates it at start-up)")
    else:
        forms = [*_forms(native), {"type": "null"}]
    unique: list[Schema] = []
    for form in forms:
        if form not in unique:
            unique.append(form)
    text = "; ".join(" ".join(n.split()).rstrip(".") for n in notes)
    schema: Schema = {"description": f"{env_var}: {text}" if text else env_var}
    if native is not None and "default" in native and not native.get("writeOnly"):
        schema["default"] = native["default"]
    if {} in unique:
        return schema
    if len(unique) == 1:
        schema.update(unique[0])
    else:
        schema["anyOf"] = unique
    return schema


def settings_object(
    model: type[BaseModel],
    env_prefix: str,
    description: str,
    *,
    prefix: str = "",
    exclude: Mapping[str, str] | None = None,
) -> Schema:
    """A closed object of the model's fields named ``prefix<key>``, keyed by ``<key>``."""
    properties = {
        name.removeprefix(prefix): setting_schema(model, name, f"{env_prefix}{name.upper()}")
        for name in sorted(model.model_fields)
        if name.startswith(prefix) and name not in (exclude or {})
    }
    return {
        "description": description,
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }


# --- the rest of values.yaml -------------------------------------------------------------------

# Kubernetes (or Ray) objects the templates pass through as they are: checked by the API server.
_OPAQUE_KEYS = frozenset(
    {
        "affinity",
        "annotations",
        "args",
        "behavior",
        "nodeSelector",
        "podAnnotations",
        "podLabels",
        "podSecurityContext",
        "rayStartParams",
        "resources",
        "securityContext",
        "updateStrategy",
    }
)
# A count or a percentage ("25%").
_INT_OR_PERCENT_KEYS = frozenset({"maxSurge", "maxUnavailable", "minAvailable"})
# Printed with toString or as a Kubernetes quantity, so a number is as good as a string.
_STRING_OR_NUMBER_KEYS = frozenset({"tag", "tmpSizeLimit", "size", "sizeLimit"})
# Fractions allowed although values.yaml shows a whole number.
_NUMBER_KEYS = frozenset({"gpusPerReplica"})


def _structure(value: Any, key: str) -> Schema:
    """A schema of the shape values.yaml gives ``value``: its type, and for objects the types of
    the keys it lists (others allowed)."""
    if key in _INT_OR_PERCENT_KEYS:
        return {"type": ["integer", "string", "null"]}
    if key in _STRING_OR_NUMBER_KEYS:
        return {"type": ["string", "number"]}
    if key in _NUMBER_KEYS:
        return {"type": "number"}
    if isinstance(value, dict):
        if key in _OPAQUE_KEYS:
            return {"type": "object"}
        return {
            "type": "object",
            "properties": {str(k): _structure(v, str(k)) for k, v in value.items()},
        }
    if isinstance(value, list):
        return {"type": "array"}
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "integer"}
    if isinstance(value, float):
        return {"type": "number"}
    if isinstance(value, str):
        return {"type": "string"}
    return {}  # null in values.yaml: no type to go by


def _settings_model(chart: Chart) -> type[BaseModel]:
    module, name = chart.settings_class.split(":")
    model = getattr(importlib.import_module(module), name)
    if not (inspect.isclass(model) and issubclass(model, BaseModel)):
        raise TypeError(f"{chart.settings_class} is not a pydantic model")
    return model


def _set_path(schema: Schema, path: str, replacement: Schema) -> None:
    *parents, last = path.split(".")
    node = schema
    for part in parents:
        node = node["properties"][part]
    if last not in node.get("properties", {}):
        raise KeyError(f"{path} is not in values.yaml")
    node["properties"][last] = replacement


def values_schema(chart: Chart, values: Mapping[str, Any]) -> Schema:
    """The JSON schema of the chart's values."""
    model = _settings_model(chart)
    where = f"{model.__module__}.{model.__qualname__}"
    schema: Schema = {
        "$schema": JSON_SCHEMA_DRAFT,
        "$comment": f"Generated by scripts/helm_schema.py from values.yaml and {where}; "
        f"do not edit, run {COMMAND}.",
        "title": f"ragfleet {chart.name} chart values",
        **_structure(dict(values), ""),
    }
    managed = ", ".join(f"{k} ({v})" for k, v in sorted(chart.managed.items()))
    settings_description = (
        f"Fields of {where} (snake_case names), each set as {chart.env_prefix}<NAME>; numbers, "
        "booleans and JSON lists/objects may also be written as strings; null leaves a "
        "setting at the service default."
    )
    if managed:
        settings_description += f" Set by the chart from other values: {managed}."
    schema["properties"]["settings"] = settings_object(
        model, chart.env_prefix, settings_description, exclude=chart.managed
    )
    for extra in chart.settings_maps:
        description = (
            f"Fields {extra.prefix}<key> of {where}, each set as "
            f"{chart.env_prefix}{extra.prefix.upper()}<KEY>."
        )
        if extra.managed:
            from_values = ", ".join(f"{k} ({v})" for k, v in sorted(extra.managed.items()))
            description += f" Set by the chart from other values: {from_values}."
        _set_path(
            schema,
            extra.path,
            settings_object(
                model, chart.env_prefix, description, prefix=extra.prefix, exclude=extra.managed
            ),
        )
    for path, name in sorted(chart.from_settings.items()):
        setting = setting_schema(model, name, f"{chart.env_prefix}{name.upper()}")
        options = [f for f in setting.get("anyOf", [setting]) if f.get("type") != "null"]
        native = {k: v for k, v in options[0].items() if k not in _ANNOTATIONS}
        _set_path(schema, path, {"description": setting["description"], **native})
    return schema


def render(chart: Chart, root: Path = REPO) -> str:
    """The text of ``helm/<chart>/values.schema.json``: sorted keys, two-space indent, newline."""
    values = yaml.safe_load((root / "helm" / chart.name / "values.yaml").read_text()) or {}
    schema = values_schema(chart, values)
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def schema_path(chart: Chart, root: Path = REPO) -> Path:
    return root / "helm" / chart.name / "values.schema.json"


def stale_charts(root: Path = REPO, charts: Sequence[Chart] = CHARTS) -> list[str]:
    """Names of the charts whose values.schema.json is missing or differs from what this script
    writes."""
    stale = []
    for chart in charts:
        path = schema_path(chart, root)
        if not path.is_file() or path.read_text() != render(chart, root):
            stale.append(chart.name)
    return stale


def check(root: Path = REPO) -> str | None:
    """None when every schema is current, else a message naming the stale ones and the fix."""
    stale = stale_charts(root)
    if not stale:
        return None
    files = ", ".join(f"helm/{name}/values.schema.json" for name in stale)
    return (
        f"Helm values schema out of date for chart(s) {', '.join(stale)} ({files}): it no "
        f"longer matches the chart's values.yaml or its service's settings model. "
        f"Regenerate with: {COMMAND}"
    )


def write(root: Path = REPO) -> list[Path]:
    """Writes every chart's schema; returns the files that changed."""
    changed = []
    for chart in CHARTS:
        path = schema_path(chart, root)
        text = render(chart, root)
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
            changed.append(path)
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 when a schema is stale"
    )
    args = parser.parse_args(argv)
    if args.check:
        message = check()
        if message:
            print(message, file=sys.stderr)
            return 1
        print(f"helm values schemas are current ({', '.join(c.name for c in CHARTS)})")
        return 0
    changed = write()
    for path in changed:
        print(f"wrote {path.relative_to(REPO)}")
    if not changed:
        print("helm values schemas already current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
