"""Per-tenant policies: one YAML file per tenant (`<tenant>.yaml`), validated, hot-reloaded.

Every file is checked against the published JSON Schema (`policies/policy.schema.json`, generated from
memos.governance.policy by `memos-proxy policy schema`) and then against the pydantic model. A file
that fails gets an error naming the file, the line and the field (`acme.yaml:7: memory.top_k: ...`),
its tenant keeps its last good policy (defaults if it never had one), and no other tenant is touched.

`start()` polls the directory's mtimes about once a second in a daemon thread; each change (a new,
edited, removed or broken file) is audited as `policy.reload` when an AuditLog is given.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from memos.errors import InvalidInput
from memos.governance.policy import Policy
from memos.polling import PollingThread

log = logging.getLogger(__name__)

_TENANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SUFFIXES = (".yaml", ".yml")


class PolicyError(InvalidInput):
    """A policy file is invalid. `str()` names the file, the line and the field."""

    def __init__(self, file: str, line: int | None, field: str | None, message: str) -> None:
        self.file, self.line, self.field, self.message = file, line, field, message
        where = f"{file}:{line}" if line is not None else file
        what = f"{field}: " if field else ""
        super().__init__(f"{where}: {what}{message}")


@lru_cache(maxsize=1)
def policy_json_schema() -> dict[str, Any]:
    """The JSON Schema of a policy file, generated from the pydantic model (what policies/ publishes)."""
    schema = Policy.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://memos-proxy.dev/policy.schema.json"
    schema["title"] = "memos-proxy tenant policy"
    schema.setdefault(
        "description",
        "One file per tenant, named <tenant>.yaml, in MEMOS_POLICY_DIR. Unknown fields are errors.",
    )
    return schema


@lru_cache(maxsize=1)
def _schema_validator() -> Any:
    import jsonschema

    schema = policy_json_schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


# ------------------------------------------------------------------ parsing with line numbers


class _PolicyLoader(yaml.SafeLoader):
    """YAML 1.2-style booleans: only true/false. (In YAML 1.1 `off`, `no` and `on` are booleans, which
    would turn `audit_level: off` or `allowed_modes: [off]` into False.)"""


_PolicyLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_PolicyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def _node_at(root: yaml.Node | None, path: Sequence[Any]) -> tuple[yaml.Node | None, bool]:
    """The deepest node along `path`, and whether the whole path was found."""
    node = root
    for part in path:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if key_node.value == str(part):
                    node = value_node
                    break
            else:
                return node, False
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
        else:
            return node, False
    return node, True


def _key_node(root: yaml.Node | None, path: Sequence[Any]) -> yaml.Node | None:
    """For an unknown-field error: the key node itself (its line is where the field is written)."""
    if not path:
        return None
    parent, found = _node_at(root, path[:-1])
    if found and isinstance(parent, yaml.MappingNode):
        for key_node, _ in parent.value:
            if key_node.value == str(path[-1]):
                return key_node
    return None


def _line_of(root: yaml.Node | None, path: Sequence[Any], *, prefer_key: bool = False) -> int | None:
    node: yaml.Node | None = _key_node(root, path) if prefer_key else None
    if node is None:
        node, _ = _node_at(root, path)
    if node is None:
        return None
    return node.start_mark.line + 1


def _dotted(path: Sequence[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def parse_policy(text: str, file: str, tenant: str | None = None) -> Policy:
    """Parse and validate one policy document; raise PolicyError naming file, line and field."""
    try:
        root = yaml.compose(text, Loader=_PolicyLoader)
        data = yaml.load(text, Loader=_PolicyLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or exc.context or "invalid YAML"
        raise PolicyError(file, line, None, f"YAML syntax error: {problem}") from None
    except yaml.YAMLError as exc:
        raise PolicyError(file, None, None, f"YAML error: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError(file, _line_of(root, ()), None, "a policy must be a mapping of fields")

    errors = sorted(
        _schema_validator().iter_errors(data), key=lambda e: _line_of(root, list(e.absolute_path)) or 0
    )
    if errors:
        err = _deepest(errors[0])
        path = list(err.absolute_path)
        if err.validator == "additionalProperties":
            extra = _unexpected_keys(err)
            if extra:
                path = [*path, extra[0]]
                line = _line_of(root, path, prefer_key=True)
                raise PolicyError(file, line, _dotted(path), "unknown field")
        line = _line_of(root, path)
        raise PolicyError(file, line, _dotted(path), _short(err.message))

    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = [p for p in first["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        extra_forbidden = first.get("type") == "extra_forbidden"
        line = _line_of(root, path, prefer_key=extra_forbidden)
        message = "unknown field" if extra_forbidden else first["msg"]
        raise PolicyError(file, line, _dotted(path), message) from None

    if tenant is not None:
        if policy.tenant is not None and policy.tenant != tenant:
            line = _line_of(root, ["tenant"])
            raise PolicyError(
                file, line, "tenant", f"names tenant '{policy.tenant}' but the file is for '{tenant}'"
            )
        policy = policy.model_copy(update={"tenant": tenant})
    return policy


def _deepest(err: Any) -> Any:
    """For anyOf/oneOf failures, the most specific sub-error (deepest path; a type mismatch last)."""
    while err.context:
        err = max(err.context, key=lambda e: (len(list(e.absolute_path)), e.validator != "type"))
    return err


def _unexpected_keys(err: Any) -> list[str]:
    instance = err.instance if isinstance(err.instance, dict) else {}
    allowed = set((err.schema or {}).get("properties", {}))
    return sorted(k for k in instance if k not in allowed)


def _short(message: str, limit: int = 200) -> str:
    return message if len(message) <= limit else message[: limit - 3] + "..."


def load_policy_file(path: Path, tenant: str | None = None) -> Policy:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise PolicyError(str(path), None, None, "not UTF-8 text") from None
    return parse_policy(text, str(path), tenant if tenant is not None else path.stem)


# ------------------------------------------------------------------ the store


@dataclass
class _FileState:
    stamp: tuple[int, int, int]  # (mtime_ns, size, inode)
    error: str | None


class PolicyStore:
    """Tenant -> Policy from a directory of YAML files; thread-safe; blocking file reads (small files)."""

    def __init__(
        self,
        policy_dir: Path | None,
        *,
        audit: Any = None,
        poll_interval_s: float = 1.0,
    ) -> None:
        self.policy_dir = Path(policy_dir) if policy_dir is not None else None
        self._audit = audit
        self._good: dict[str, Policy] = {}
        self._errors: dict[str, str] = {}
        self._files: dict[Path, _FileState] = {}
        self._lock = threading.RLock()
        self._watch = PollingThread("policy-reload", poll_interval_s, self.reload)
        self.reload(audit=False)

    # -- reading

    def get(self, tenant: str) -> Policy:
        """The tenant's policy: its file's, its last good one while the file is broken, else defaults."""
        policy = self._good.get(tenant)
        if policy is not None:
            return policy
        return _default_policy(tenant)

    def has_file(self, tenant: str) -> bool:
        return tenant in self._good or any(p.stem == tenant for p in self._files)

    def errors(self) -> dict[str, str]:
        """File -> error message for every file currently failing validation."""
        return dict(self._errors)

    def tenants(self) -> list[str]:
        return sorted(self._good)

    # -- reloading

    def reload(self, *, force: bool = False, audit: bool = True) -> list[tuple[str, str | None]]:
        """Re-read changed (or, with force, all) files. Returns (tenant, error or None) per change."""
        with self._lock:
            current = self._scan()
            changes: list[tuple[str, str | None]] = []
            for path, stamp in current.items():
                state = self._files.get(path)
                if not force and state is not None and state.stamp == stamp:
                    continue
                tenant = path.stem
                error: str | None = None
                try:
                    if not _TENANT_NAME.match(tenant):
                        raise PolicyError(str(path), None, None, "the file name is not a valid tenant name")
                    policy = load_policy_file(path, tenant)
                except PolicyError as exc:
                    error = str(exc)
                except OSError as exc:
                    error = f"{path}: cannot read: {exc.strerror or exc}"
                if error is None:
                    self._good[tenant] = policy
                    self._errors.pop(str(path), None)
                    log.info("policy loaded", extra={"tenant": tenant, "file": str(path)})
                else:
                    self._errors[str(path)] = error
                    # The tenant keeps its last good policy (or defaults); nobody else is affected.
                    log.error("policy rejected: %s", error)
                self._files[path] = _FileState(stamp, error)
                changes.append((tenant, error))
            for path in [p for p in self._files if p not in current]:
                tenant = path.stem
                del self._files[path]
                self._errors.pop(str(path), None)
                if not any(p.stem == tenant for p in current):
                    self._good.pop(tenant, None)
                log.info("policy removed", extra={"tenant": tenant, "file": str(path)})
                changes.append((tenant, None))
        if audit:
            for tenant, error in changes:
                self._record(tenant, error)
        return changes

    def _scan(self) -> dict[Path, tuple[int, int, int]]:
        if self.policy_dir is None or not self.policy_dir.is_dir():
            return {}
        found: dict[Path, tuple[int, int, int]] = {}
        for path in sorted(self.policy_dir.iterdir()):
            if path.suffix not in _SUFFIXES or path.name.startswith("."):
                continue
            try:
                st = path.stat()
            except OSError:
                continue
            if not path.is_file():
                continue
            found[path] = (st.st_mtime_ns, st.st_size, st.st_ino)
        # One file per tenant: if both acme.yaml and acme.yml exist, .yaml wins.
        stems: dict[str, Path] = {}
        for path in found:
            if path.stem in stems and stems[path.stem].suffix == ".yaml":
                continue
            stems[path.stem] = path
        return {p: found[p] for p in stems.values()}

    def _record(self, tenant: str, error: str | None) -> None:
        if self._audit is None or not _TENANT_NAME.match(tenant):
            return
        detail: dict[str, Any] = {"ok": error is None}
        try:
            self._audit.record(tenant, "policy.reload", detail=detail)
        except Exception:  # auditing must not stop reloading other tenants
            log.exception("could not audit a policy reload")

    # -- hot reload

    def start(self) -> None:
        self._watch.start()

    def stop(self) -> None:
        self._watch.stop()


@lru_cache(maxsize=4096)
def _default_policy(tenant: str) -> Policy:
    return Policy(tenant=tenant)
