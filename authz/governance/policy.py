"""A tenant's (or a client key's) policy: which endpoints, which models, which limits.

Parsed once, strictly, from the JSON an operator wrote (the tenant's Vault record,
AUTHZ_DEFAULT_POLICY, a client key's record):

    {"endpoints": "all" | "inference" | ["METHOD /v1/path", ...],
     "models": ["gpt-4o-mini", "text-embedding-3-*"],          # optional
     "limits": {"user_requests_per_minute": 60, ...}}          # optional, see Limits

Anything unexpected (an unknown field, a malformed rule, a negative limit) is a
PolicyError whose message names the field or rule, so an operator's typo never turns
into a silently wider policy. A limit of 0 is valid and means "nothing allowed": every
request that the limit counts is refused with 429 (a way to switch a tenant or a key
off without deleting it).

A request must be allowed by every policy that applies (the tenant's and, for a client
key with its own, the key's): see EffectivePolicy.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from authz.errors import InternalError
from authz.governance.model import Limits

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
PROFILES = ("all", "inference")
_TOP_FIELDS = ("endpoints", "models", "limits")
_LIMIT_FIELDS = tuple(f.name for f in fields(Limits))
# A rule's path: /v1/ then RFC 3986 path characters minus `%` (rules name decoded
# paths); `*` only as the last character (a prefix).
_RULE_PATH = re.compile(r"/v1/[A-Za-z0-9\-._~!$&'()+,;=:@/]*\*?")


class PolicyError(ValueError):
    """A policy that cannot be used; the message names the offending field or rule."""


@dataclass(frozen=True)
class Rule:
    method: str  # one of METHODS, or "*"
    path: str  # without the trailing "*" when prefix
    prefix: bool

    @property
    def text(self) -> str:
        return f"{self.method} {self.path}{'*' if self.prefix else ''}"

    def matches(self, method: str, path: str) -> bool:
        if self.method != "*" and self.method != method:
            return False
        return path.startswith(self.path) if self.prefix else path == self.path


def parse_rule(text: Any) -> Rule:
    if not isinstance(text, str):
        raise PolicyError(f"endpoints: rule {text!r} is not a string \"METHOD /v1/path\"")
    method, sep, path = text.partition(" ")
    if not sep or (method not in METHODS and method != "*"):
        raise PolicyError(f"endpoints: rule {text!r}: METHOD must be one of "
                          f"{', '.join(METHODS)} or *, then one space and the path")
    if _RULE_PATH.fullmatch(path) is None:
        raise PolicyError(f"endpoints: rule {text!r}: the path must start with /v1/, "
                          "hold no whitespace or %, and may end in * (a prefix)")
    segments = path.rstrip("*").split("/")[1:]
    if "//" in path or any(s in (".", "..") for s in segments):
        raise PolicyError(f"endpoints: rule {text!r}: the path must be normalised "
                          "(no //, . or .. segments)")
    prefix = path.endswith("*")
    return Rule(method, path[:-1] if prefix else path, prefix)


#: The `inference` profile, exactly as shared/DESIGN.md lists it: model calls only, no
#: stored data (completions, responses, files...), no credentials minted for others.
INFERENCE_RULES: tuple[Rule, ...] = tuple(parse_rule(text) for text in (
    "POST /v1/responses",
    "POST /v1/chat/completions",
    "POST /v1/completions",
    "POST /v1/embeddings",
    "POST /v1/moderations",
    "POST /v1/images/generations",
    "POST /v1/images/edits",
    "POST /v1/images/variations",
    "POST /v1/audio/speech",
    "POST /v1/audio/transcriptions",
    "POST /v1/audio/translations",
    "GET /v1/models",
    "GET /v1/models/*",
))


def _model_matches(pattern: str, model: str) -> bool:
    return model.startswith(pattern[:-1]) if pattern.endswith("*") else model == pattern


@dataclass(frozen=True)
class Policy:
    #: "all", "inference", or the rules (any one allowing the request is enough).
    endpoints: str | tuple[Rule, ...] = "all"
    #: Allowed model names (a trailing * is a prefix); None: any model.
    models: tuple[str, ...] | None = None
    limits: Limits = field(default_factory=Limits)
    # The rules, indexed once (every governed check asks): exact (method, path) pairs,
    # method "*" included, in a set; prefix rules in a tuple.
    _exact: frozenset[tuple[str, str]] = field(init=False, repr=False, compare=False)
    _prefixes: tuple[Rule, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        rules: tuple[Rule, ...] = ()
        if self.endpoints == "inference":
            rules = INFERENCE_RULES
        elif not isinstance(self.endpoints, str):
            rules = self.endpoints
        object.__setattr__(self, "_exact", frozenset(
            (rule.method, rule.path) for rule in rules if not rule.prefix))
        object.__setattr__(self, "_prefixes", tuple(rule for rule in rules if rule.prefix))

    @property
    def allows_all_endpoints(self) -> bool:
        return self.endpoints == "all"

    @property
    def exact_rules(self) -> frozenset[tuple[str, str]]:
        """(method or "*", path) of every rule that is not a prefix (profiles expanded)."""
        return self._exact

    @property
    def prefix_rules(self) -> tuple[Rule, ...]:
        return self._prefixes

    def allows_endpoint(self, method: str, path: str | None) -> bool:
        """path: the normalised OpenAI path (endpoints.openai_path), None if odd."""
        if self.endpoints == "all":
            return True
        if path is None:
            return False
        exact = self._exact
        if (method, path) in exact or ("*", path) in exact:
            return True
        return any(rule.matches(method, path) for rule in self._prefixes)

    def allows_model(self, model: str) -> bool:
        return self.models is None or any(_model_matches(p, model) for p in self.models)


ALLOW_ALL = Policy()


def parse_policy(value: Any) -> Policy:
    """A Policy from a JSON object (a Mapping) or a string holding one; PolicyError if
    anything in it is unknown or malformed."""
    if isinstance(value, str | bytes):
        try:
            value = json.loads(value, parse_constant=_no_constant)
        except (ValueError, RecursionError) as exc:
            raise PolicyError(f"policy is not valid JSON: {exc}") from None
    if not isinstance(value, Mapping):
        raise PolicyError("policy must be a JSON object")
    unknown = sorted(str(k) for k in value if k not in _TOP_FIELDS)
    if unknown:
        raise PolicyError(f"policy: unknown field {unknown[0]!r} "
                          f"(allowed: {', '.join(_TOP_FIELDS)})")
    return Policy(
        endpoints=_parse_endpoints(value.get("endpoints", "all")),
        models=_parse_models(value.get("models")),
        limits=_parse_limits(value.get("limits")),
    )


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_endpoints(value: Any) -> str | tuple[Rule, ...]:
    if isinstance(value, str):
        if value not in PROFILES:
            raise PolicyError(f"endpoints: {value!r} is not a profile ({', '.join(PROFILES)})"
                              " or a list of rules")
        return value
    if not isinstance(value, list):
        raise PolicyError("endpoints: must be \"all\", \"inference\" or a list of rules")
    return tuple(parse_rule(item) for item in value)


def _parse_models(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise PolicyError("models: must be a list of model names")
    for item in value:
        if not isinstance(item, str) or not item.strip() or item != item.strip():
            raise PolicyError(f"models: {item!r} is not a non-empty model name")
        if "*" in item[:-1]:
            raise PolicyError(f"models: {item!r}: * is allowed only at the end (a prefix)")
    return tuple(value)


def _parse_limits(value: Any) -> Limits:
    if value is None:
        return Limits()
    if not isinstance(value, Mapping):
        raise PolicyError("limits: must be a JSON object")
    unknown = sorted(str(k) for k in value if k not in _LIMIT_FIELDS)
    if unknown:
        raise PolicyError(f"limits: unknown field {unknown[0]!r} "
                          f"(allowed: {', '.join(_LIMIT_FIELDS)})")
    values: dict[str, int | None] = {}
    for name, limit in value.items():
        if limit is None:
            values[name] = None
            continue
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise PolicyError(f"limits.{name}: {limit!r} is not a non-negative integer")
        values[name] = limit
    return Limits(**values)


def policy_to_json(policy: Policy) -> dict[str, Any]:
    """The policy as the JSON object it was parsed from (normalised), for display and
    for writing back."""
    out: dict[str, Any] = {
        "endpoints": policy.endpoints if isinstance(policy.endpoints, str)
        else [rule.text for rule in policy.endpoints],
    }
    if policy.models is not None:
        out["models"] = list(policy.models)
    limits = {f.name: getattr(policy.limits, f.name) for f in fields(Limits)
              if getattr(policy.limits, f.name) is not None}
    if limits:
        out["limits"] = limits
    return out


@dataclass(frozen=True)
class EffectivePolicy:
    """Every policy that applies to one request (the tenant's, and a client key's own):
    an endpoint or a model must be allowed by all of them; limits are the tightest."""

    policies: tuple[Policy, ...]
    limits: Limits
    # Worked out once (every check reads them): whether any rule, model list or limit
    # applies at all.
    governs_endpoints: bool = False
    governs_models: bool = False
    has_limits: bool = False

    @classmethod
    def of(cls, tenant: Policy, key: Policy | None = None) -> EffectivePolicy:
        policies = (tenant,) if key is None else (tenant, key)
        limits = tenant.limits if key is None else tenant.limits.tightened_by(key.limits)
        return cls(policies, limits,
                   governs_endpoints=not all(p.allows_all_endpoints for p in policies),
                   governs_models=any(p.models is not None for p in policies),
                   has_limits=limits.any)

    @property
    def allows_all_endpoints(self) -> bool:
        return not self.governs_endpoints

    def allows_endpoint(self, method: str, path: str | None) -> bool:
        return all(p.allows_endpoint(method, path) for p in self.policies)

    def allows_model(self, model: str) -> bool:
        return all(p.allows_model(model) for p in self.policies)


def parse_stored_policy(value: Any, owner: str) -> Policy | None:
    """A policy as Vault stores it beside a key (`owner`: "tenant" or "client key"):
    None when there is none; an invalid one fails closed as InternalError "<owner> policy
    invalid" (the log names the field; the record's other values are never quoted)."""
    if value is None or value == "":
        return None
    try:
        return parse_policy(value)
    except PolicyError as exc:
        raise InternalError(f"{owner} policy invalid: {exc}",
                            detail=f"{owner} policy invalid") from None
