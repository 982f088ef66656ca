"""Policy documents: YAML files and directories → :class:`Policy` values plus every error found.

::

    files / text ──► YAML documents ──► envelope (apiVersion, kind, metadata) ──► spec/specs
                         │ syntax errors        │ kind, name, namespace             │ schema (model)
                         ▼                      ▼                                   ▼ semantics (validate)
                                     PolicyError(source, index, path, message)

Nothing stops at the first error: each document, each rule and each list entry is checked on its own,
and :class:`LoadResult` carries the valid policies and all errors of the invalid ones. A YAML syntax
error in one document does not hide the others: the file is read again split on its ``---`` lines.
A ``kind: List`` (what ``kubectl get cnp -A -o yaml`` prints) is read item by item (field paths
``items[i]...``); a document of a kind that is not a policy at all (a Deployment, a ConfigMap) is
skipped with a :class:`PolicyNote`, so a whole manifest directory can be checked.
"""

from __future__ import annotations

import copy
import difflib
import enum
import re
import types
import typing
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

import yaml
from pydantic import BaseModel, ValidationError

from l7.errors import L7GateError
from l7.policy import labels
from l7.policy.fieldpath import field, from_loc, index
from l7.policy.model import Rule
from l7.policy.validate import Problem, validate_rule


class Kind(enum.StrEnum):
    L7_NETWORK_POLICY = "L7NetworkPolicy"
    L7_CLUSTERWIDE_NETWORK_POLICY = "L7ClusterwideNetworkPolicy"
    CILIUM_NETWORK_POLICY = "CiliumNetworkPolicy"
    CILIUM_CLUSTERWIDE_NETWORK_POLICY = "CiliumClusterwideNetworkPolicy"

    @property
    def namespaced(self) -> bool:
        return self in (Kind.L7_NETWORK_POLICY, Kind.CILIUM_NETWORK_POLICY)


@dataclass(frozen=True)
class Policy:
    """One valid policy document.

    ``rules`` holds ``spec`` (one rule) and/or ``specs`` in document order; ``rule_paths[i]`` is the
    field path of ``rules[i]`` in the document (``"spec"`` or ``"specs[2]"``), used to report which
    rule decided a verdict. ``namespace`` is ``None`` for cluster-wide kinds; a namespaced document
    without ``metadata.namespace`` gets ``"default"``.
    """

    kind: Kind
    api_version: str
    name: str
    namespace: str | None
    rules: tuple[Rule, ...]
    rule_paths: tuple[str, ...]
    source: str = "<memory>"
    index: int = 0

    @property
    def key(self) -> str:
        """``Kind/namespace/name`` (``Kind/name`` when cluster-wide): unique within a policy set."""
        if self.namespace is None:
            return f"{self.kind}/{self.name}"
        return f"{self.kind}/{self.namespace}/{self.name}"


@dataclass(frozen=True)
class PolicyError:
    """One problem in one document: ``path`` is a field path such as ``spec.egress[0].toPorts``."""

    source: str
    index: int
    path: str
    message: str
    policy: str | None = None

    def __str__(self) -> str:
        where = f"{self.source}[{self.index}]"
        if self.policy:
            where += f" ({self.policy})"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


@dataclass(frozen=True)
class PolicyNote:
    """A document that was skipped (not a policy kind), at ``source[index]`` (``path``: ``items[i]`` in a
    ``kind: List``)."""

    source: str
    index: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}[{self.index}]"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


@dataclass(frozen=True)
class LoadResult:
    policies: tuple[Policy, ...]
    errors: tuple[PolicyError, ...]
    notes: tuple[PolicyNote, ...] = ()
    sources: tuple[str, ...] = ()  # the files read, in reading order (for reports in document order)

    @property
    def ok(self) -> bool:
        return not self.errors


class PolicySourceError(L7GateError):
    """A policy path does not exist."""


API_VERSIONS: Mapping[Kind, str] = {
    Kind.L7_NETWORK_POLICY: "l7gate.io/v1alpha1",
    Kind.L7_CLUSTERWIDE_NETWORK_POLICY: "l7gate.io/v1alpha1",
    Kind.CILIUM_NETWORK_POLICY: "cilium.io/v2",
    Kind.CILIUM_CLUSTERWIDE_NETWORK_POLICY: "cilium.io/v2",
}
SUFFIXES = (".yaml", ".yml")
_TOP_LEVEL = frozenset({"apiVersion", "kind", "metadata", "spec", "specs", "status"})
# ObjectMeta fields set by the API server (or kubectl): accepted and ignored.
_SERVER_METADATA = frozenset(
    {
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "managedFields",
        "selfLink",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "finalizers",
        "ownerReferences",
        "generateName",
    }
)
# Cilium fields l7gate knows of but does not implement (the schema rejects every unknown field; these
# get a message saying so). ``labels`` only at the rule level.
_CILIUM_UNSUPPORTED = frozenset(
    {
        "toRequires",
        "fromRequires",
        "toGroups",
        "fromGroups",
        "authentication",
        "kafka",
        "l7proto",
        "l7",
        "listener",
        "log",
        "cidrGroupRef",
        "cidrGroupSelector",
    }
)


STDIN = Path("-")


def load_paths(paths: Sequence[Path], stdin: TextIO | None = None) -> LoadResult:
    """Load every ``*.yaml``/``*.yml`` file (directories recursively, sorted) and validate it. With
    ``stdin``, the path ``-`` reads it (source ``<stdin>``).

    Raises :class:`PolicySourceError` when a path does not exist; everything else is a
    :class:`PolicyError` in the result.
    """
    missing = [str(path) for path in paths if not path.exists() and not (stdin is not None and path == STDIN)]
    if missing:
        raise PolicySourceError(f"no such file or directory: {', '.join(missing)}")
    loader = _Loader()
    for path in paths:
        if stdin is not None and path == STDIN:
            loader.add_text(stdin.read(), "<stdin>")
            continue
        for file in _files(path):
            try:
                text = file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                loader.sources.append(str(file))
                loader.errors.append(PolicyError(str(file), 0, "", f"cannot read: {exc}"))
                continue
            loader.add_text(text, str(file))
    return loader.result()


def load_text(text: str, source: str = "<memory>") -> LoadResult:
    """Load and validate a (multi-document) YAML string."""
    loader = _Loader()
    loader.add_text(text, source)
    return loader.result()


def parse_documents(text: str) -> list[object] | None:
    """The YAML documents of ``text`` as :func:`load_text` parses them; None on a syntax error (then
    only :func:`load_text` reports it, document by document)."""
    try:
        return list(yaml.load_all(text, Loader=_StrictSafeLoader))
    except yaml.YAMLError:
        return None


def load_documents(documents: Sequence[object], source: str = "<memory>") -> LoadResult:
    """Validate documents :func:`parse_documents` gave: ``load_text(text, source)`` without the parse."""
    loader = _Loader()
    loader.sources.append(source)
    loader.add_documents(documents, source)
    return loader.result()


def _files(path: Path) -> Iterator[Path]:
    if path.is_dir():
        yield from sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
    else:
        yield path


class _StrictSafeLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """SafeLoader that refuses duplicate mapping keys (kubectl does too)."""


def _construct_mapping(loader: Any, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if isinstance(key_node, yaml.ScalarNode):
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictSafeLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _yaml_message(exc: yaml.YAMLError, line_offset: int = 0) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"YAML error at line {mark.line + 1 + line_offset}, column {mark.column + 1}: {exc.problem}"
    return f"YAML error: {exc}"


_SEPARATOR = re.compile(r"^---(?:\s.*)?$")
_END = re.compile(r"^\.\.\.\s*$")


def _chunks(text: str) -> list[tuple[int, str]]:
    """The documents of a stream as (first line's offset, text), split on ``---`` lines: the fallback
    when a syntax error stops the parser. A first chunk before the first ``---`` that holds nothing but
    comments and directives is not a document (as for the parser)."""
    out: list[tuple[int, list[str]]] = [(0, [])]
    for number, line in enumerate(text.splitlines()):
        if _SEPARATOR.match(line):
            out.append((number, [line[3:]]))
        elif _END.match(line):
            continue
        else:
            out[-1][1].append(line)
    first = [line for line in out[0][1] if line.strip() and not line.lstrip().startswith(("#", "%"))]
    chunks = [(offset, "\n".join(lines)) for offset, lines in out]
    return chunks[1:] if not first and len(chunks) > 1 else chunks


# kinds that are policies (an unknown one of them is an error, not a skipped document)
_POLICY_API_GROUPS = ("cilium.io/", "l7gate.io/")


def _is_policy_kind(api_version: object, kind: object) -> bool:
    return str(kind).endswith("Policy") or str(api_version).startswith(_POLICY_API_GROUPS)


class _Loader:
    def __init__(self) -> None:
        self.policies: list[Policy] = []
        self.errors: list[PolicyError] = []
        self.notes: list[PolicyNote] = []
        self.sources: list[str] = []
        self._seen: dict[str, Policy] = {}

    def result(self) -> LoadResult:
        return LoadResult(tuple(self.policies), tuple(self.errors), tuple(self.notes), tuple(self.sources))

    def add_text(self, text: str, source: str) -> None:
        self.sources.append(source)
        try:
            documents = list(yaml.load_all(text, Loader=_StrictSafeLoader))
        except yaml.YAMLError:
            self._add_chunks(text, source)
            return
        self.add_documents(documents, source)

    def add_documents(self, documents: Sequence[object], source: str) -> None:
        for position, document in enumerate(documents):
            if document is not None:
                self._add_document(document, source, position)

    def _add_chunks(self, text: str, source: str) -> None:
        """After a syntax error: each ``---`` section on its own, the error at its own document."""
        for position, (offset, chunk) in enumerate(_chunks(text)):
            try:
                documents = list(yaml.load_all(chunk, Loader=_StrictSafeLoader))
            except yaml.YAMLError as exc:
                self.errors.append(PolicyError(source, position, "", _yaml_message(exc, offset)))
                continue
            for document in documents[:1]:
                if document is not None:
                    self._add_document(document, source, position)

    def _add_document(self, document: object, source: str, position: int, prefix: str = "") -> None:
        errors: list[PolicyError] = []

        def error(path: str, message: str, policy: str | None = None) -> None:
            full = f"{prefix}.{path}" if prefix and path else (prefix or path)
            errors.append(PolicyError(source, position, full, message, policy))

        if not isinstance(document, dict):
            error("", f"a policy document must be a mapping, not {type(document).__name__}")
            self.errors += errors
            return
        if not prefix and document.get("kind") == "List" and isinstance(document.get("items"), list):
            for i, item in enumerate(document["items"]):
                self._add_document(item, source, position, index("items", i))
            return
        api_version, kind_text = document.get("apiVersion"), document.get("kind")
        if api_version is not None and kind_text is not None and not _is_policy_kind(api_version, kind_text):
            self.notes.append(
                PolicyNote(source, position, prefix, f"skipped: {api_version} {kind_text} is not a policy")
            )
            return
        kind = _kind(document, error)
        metadata = document.get("metadata")
        name, namespace = _metadata(metadata, kind, error)
        label = None
        if kind is not None and name is not None:
            label = f"{kind} {namespace}/{name}" if namespace is not None else f"{kind} {name}"
            errors[:] = [PolicyError(e.source, e.index, e.path, e.message, label) for e in errors]
        for unknown in sorted(set(map(str, document)) - _TOP_LEVEL):
            error(unknown, "unsupported field" + did_you_mean(unknown, _TOP_LEVEL), label)
        if kind is None:  # not a policy kind (or unknown): its spec means nothing to check
            self.errors += errors
            return
        rules, rule_paths = _rules(document, kind, error, label)
        if errors or name is None:
            self.errors += errors
            return
        policy = Policy(
            kind, document["apiVersion"], name, namespace, tuple(rules), tuple(rule_paths), source, position
        )
        previous = self._seen.get(policy.key)
        if previous is not None:
            error(
                "metadata.name",
                f"duplicate policy: {label} is already defined in {previous.source}[{previous.index}]",
                label,
            )
            self.errors += errors
            return
        self._seen[policy.key] = policy
        self.policies.append(policy)


class _Report(Protocol):
    """The ``error(path, message, policy=None)`` callback of one document."""

    def __call__(self, path: str, message: str, policy: str | None = None) -> None: ...


def _kind(document: dict[Any, Any], error: _Report) -> Kind | None:
    api_version = document.get("apiVersion")
    kind_text = document.get("kind")
    if api_version is None:
        error("apiVersion", "required field missing")
    if kind_text is None:
        error("kind", "required field missing")
    if api_version is None or kind_text is None:
        return None
    try:
        kind = Kind(kind_text)
    except ValueError:
        supported = ", ".join(f"{v} {k}" for k, v in API_VERSIONS.items())
        hint = did_you_mean(str(kind_text), [k.value for k in Kind])
        error("kind", f"unsupported kind {api_version} {kind_text}{hint} (supported: {supported})")
        return None
    if api_version != API_VERSIONS[kind]:
        error("apiVersion", f"{kind} belongs to apiVersion {API_VERSIONS[kind]}, not {api_version}")
        return None
    return kind


def _metadata(metadata: object, kind: Kind | None, error: _Report) -> tuple[str | None, str | None]:
    if metadata is None:
        error("metadata", "required field missing")
        return None, None
    if not isinstance(metadata, dict):
        error("metadata", "must be a mapping")
        return None, None
    name = metadata.get("name")
    valid_name: str | None = None
    if name is None:
        error("metadata.name", "required field missing")
    elif not isinstance(name, str) or not labels.is_dns_subdomain(name):
        error(
            "metadata.name", f"{name!r} is not a valid name (lower-case RFC 1123 subdomain, ≤253 characters)"
        )
    else:
        valid_name = name
    namespace = metadata.get("namespace")
    valid_namespace: str | None = None
    if namespace is not None:
        if kind is not None and not kind.namespaced:
            error("metadata.namespace", f"{kind} is cluster-wide and cannot have a namespace")
        elif not isinstance(namespace, str) or not labels.is_dns_label(namespace):
            error(
                "metadata.namespace",
                f"{namespace!r} is not a valid namespace (lower-case RFC 1123 label, ≤63 characters)",
            )
        else:
            valid_namespace = namespace
    elif kind is not None and kind.namespaced:
        valid_namespace = "default"
    for map_name in ("labels", "annotations"):
        value = metadata.get(map_name)
        if value is not None and not (
            isinstance(value, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
        ):
            error(f"metadata.{map_name}", "must be a mapping of strings to strings")
    allowed = _SERVER_METADATA | {"name", "namespace", "labels", "annotations"}
    for unknown in sorted(set(map(str, metadata)) - allowed):
        error(field("metadata", unknown), "unsupported field" + did_you_mean(unknown, allowed))
    return valid_name, valid_namespace


def _rules(
    document: dict[Any, Any], kind: Kind | None, error: _Report, label: str | None
) -> tuple[list[Rule], list[str]]:
    entries: list[tuple[str, object]] = []
    if "spec" in document:
        entries.append(("spec", document["spec"]))
    if "specs" in document:
        specs = document["specs"]
        if isinstance(specs, list):
            entries += [(index("specs", i), spec) for i, spec in enumerate(specs)]
        else:
            error("specs", "must be a list of rules", label)
    if not entries and "specs" not in document:
        error("spec", "required field missing (a policy needs spec and/or specs)", label)
    namespaced = kind.namespaced if kind is not None else True
    rules: list[Rule] = []
    paths: list[str] = []
    for path, raw in entries:
        if not isinstance(raw, dict):
            error(path, "must be a mapping (a rule)", label)
            continue
        problems: list[Problem] = []
        try:
            rule = Rule.model_validate(raw)
        except ValidationError as exc:
            _schema_errors(exc, path, error, label)
            problems = _partial_problems(raw, exc, path, namespaced)
        else:
            problems = validate_rule(rule, path, namespaced=namespaced)
            rules.append(rule)
            paths.append(path)
        for problem in problems:
            error(problem.path, problem.message, label)
    return rules, paths


def _partial_problems(
    raw: dict[Any, Any], exc: ValidationError, path: str, namespaced: bool
) -> list[Problem]:
    """Semantic problems of the rest of a rule whose schema errors were reported already.

    The map keys the schema rejected are removed (only map keys, so list positions do not shift) until
    the rule parses; problems reported at an ancestor of a removed field are dropped as consequences.
    """
    pruned = copy.deepcopy(raw)
    removed: list[str] = []
    for _ in range(_MAX_PRUNE_ROUNDS):
        for item in exc.errors():
            loc = _existing_key_loc(pruned, tuple(item["loc"]), missing=item["type"] == "missing")
            if loc:
                _delete(pruned, loc)
                removed.append(from_loc(path, loc))
        try:
            rule = Rule.model_validate(pruned)
        except ValidationError as again:
            exc = again
            continue
        return [
            problem
            for problem in validate_rule(rule, path, namespaced=namespaced)
            if not any(_is_ancestor(problem.path, gone) for gone in removed)
        ]
    return []


_MAX_PRUNE_ROUNDS = 8


def _is_ancestor(path: str, descendant: str) -> bool:
    return descendant == path or descendant.startswith((path + ".", path + "["))


def _existing_key_loc(raw: object, loc: tuple[int | str, ...], *, missing: bool) -> tuple[int | str, ...]:
    """The prefix of ``loc`` that ends at its deepest existing map key (for a missing field, the key
    holding the object that lacks it)."""
    best: tuple[int | str, ...] = ()
    node = raw
    for depth, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            best = loc[: depth + 1]
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif missing:
            break
        else:
            break
    return best


def _delete(raw: object, loc: tuple[int | str, ...]) -> None:
    node: Any = raw
    for part in loc[:-1]:
        node = node[part]
    if isinstance(node, dict):
        node.pop(loc[-1], None)


def _schema_errors(exc: ValidationError, prefix: str, error: _Report, label: str | None) -> None:
    merged: dict[str, list[str]] = {}
    for item in exc.errors():
        loc = item["loc"]
        path = from_loc(prefix, loc)
        last = loc[-1] if loc else ""
        if item["type"] == "extra_forbidden":
            known = last in _CILIUM_UNSUPPORTED or (last == "labels" and len(loc) == 1)
            message = (
                "unsupported by l7gate (a Cilium feature l7gate does not implement)"
                if known
                else "unsupported field" + did_you_mean(str(last), _field_names(loc[:-1]))
            )
        elif item["type"] == "missing":
            message = "required field missing"
        else:
            message = _plain_message(item, loc)
        merged.setdefault(path, [])
        if message not in merged[path]:
            merged[path].append(message)
    for path, messages in merged.items():
        error(path, _join(messages), label)


def _join(messages: list[str]) -> str:
    """One message for the alternatives of a union (``int | str``): "must be an integer or a string"."""
    if len(messages) == 1:
        return messages[0]
    lead = "must be "
    if all(m.startswith(lead) for m in messages):
        return lead + " or ".join(dict.fromkeys(m.removeprefix(lead) for m in messages))
    return "; ".join(messages)


def did_you_mean(text: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or ``""``."""
    close = difflib.get_close_matches(text, sorted(candidates), n=1, cutoff=0.6)
    if not close:
        lowered = {c.lower(): c for c in candidates}
        close = [lowered[text.lower()]] if text.lower() in lowered else []
    return f" (did you mean {close[0]!r}?)" if close else ""


# ---------------------------------------------------------------------- schema errors in plain words
_ELEMENT_WORDS = {
    "IngressRule": "ingress rules",
    "EgressRule": "egress rules",
    "PortRule": "port rules",
    "PortProtocol": "ports",
    "EndpointSelector": "endpoint selectors",
    "CIDRRule": "CIDR rules",
    "HTTPRule": "HTTP rules",
    "DNSRule": "DNS rules",
    "FQDNSelector": "FQDN selectors",
    "ICMPRule": "ICMP rules",
    "ICMPField": "ICMP fields",
    "Service": "services",
    "HeaderMatch": "header matches",
    "LabelSelectorRequirement": "label selector requirements",
    "str": "strings",
    "int": "integers",
}
_TYPE_WORDS = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "float_type": "a number",
    "float_parsing": "a number",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _unwrap(annotation: Any) -> list[Any]:
    """The types an annotation allows (``X | None`` → [X])."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return [a for arg in typing.get_args(annotation) if arg is not type(None) for a in _unwrap(arg)]
    return [annotation]


def _field_at(loc: Sequence[int | str]) -> Any:
    """The annotation of the rule field at ``loc`` (document spelling), or None when unknown."""
    current: Any = Rule
    for part in loc:
        if isinstance(part, int):
            nxt = None
            for option in _unwrap(current):
                if typing.get_origin(option) in (tuple, list):
                    nxt = typing.get_args(option)[0]
            current = nxt
        else:
            nxt = None
            for option in _unwrap(current):
                if isinstance(option, type) and issubclass(option, BaseModel):
                    for name, info in option.model_fields.items():
                        if part in (info.alias, name):
                            nxt = info.annotation
            current = nxt
        if current is None:
            return None
    return current


def _field_names(loc: Sequence[int | str]) -> list[str]:
    """The fields the object at ``loc`` may have (their document spelling)."""
    out: list[str] = []
    for option in _unwrap(_field_at(loc)):
        if isinstance(option, type) and issubclass(option, BaseModel):
            out += [info.alias or name for name, info in option.model_fields.items()]
    return out


def _plain_message(item: Any, loc: Sequence[int | str]) -> str:
    """A pydantic error in the words of the policy reference ("must be a list of egress rules")."""
    kind = item["type"]
    if kind in ("tuple_type", "list_type"):
        element = None
        for option in _unwrap(_field_at(loc)):
            if typing.get_origin(option) in (tuple, list):
                element = typing.get_args(option)[0]
        name = getattr(element, "__name__", "")
        words = _ELEMENT_WORDS.get(name)
        return f"must be a list of {words}" if words else "must be a list"
    if kind in _TYPE_WORDS:
        return f"must be {_TYPE_WORDS[kind]}"
    if kind == "enum":
        expected = (item.get("ctx") or {}).get("expected")
        return f"must be one of {expected}" if expected else str(item["msg"])
    return str(item["msg"])
