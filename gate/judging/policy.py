"""Gate policies: thresholds per suite, optionally per backbone, read from one TOML or YAML file.

LPIPS distances are not comparable across backbones (vgg runs larger than alex), so a suite may set
thresholds per net (`nets.alex`) and per net and weights version (`nets."alex@0.1"`); a pair is judged
by the policy of the net that actually scored it, so a fallback backbone never borrows another's
thresholds. Layers merge field by field, most specific last:

    defaults -> suite.<name> -> suite.<name>.nets.<net> -> suite.<name>.nets."<net>@<version>"

    [defaults]
    max_sparsity = 0.98

    [suite.render]
    max_distance = 0.10
    drift = { window = 50 }

    [suite.render.nets.vgg]
    max_distance = 0.18
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gate.vocabulary import NETS

if TYPE_CHECKING:
    from gate.store.models import Run

MIN_PER_BIN = 5  # the usual chi-square rule: sparser PSI bins are dominated by empty-bin noise


class PolicyError(ValueError):
    """An invalid policy file or override; the message names the file and the key."""


class _Frozen(BaseModel):
    """Defaults are validated too, so 3600 and 3600.0 are one value and a policy hashes the same
    before and after its round trip through the store."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, validate_default=True)


class DriftPolicy(_Frozen):
    baseline: Literal["trailing", "pinned"] = "trailing"
    pinned_run: int | None = Field(default=None, ge=1)
    window: int = Field(default=50, ge=2)  # most recent distances judged
    baseline_size: int = Field(default=200, ge=2)
    min_samples: int = Field(default=30, ge=2)  # below this on either side: no verdict
    ks_threshold: float = Field(default=0.001, gt=0, lt=1)  # alarm when the KS p-value is below (and PSI's level)
    psi_threshold: float = Field(default=0.25, gt=0)  # alarm when PSI is above
    psi_bins: int = Field(default=5, ge=2)  # few bins: 50 samples spread over 10 make PSI mostly noise
    wasserstein_threshold: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> DriftPolicy:
        if (self.baseline == "pinned") != (self.pinned_run is not None):
            raise ValueError("pinned_run is required with baseline 'pinned' and only allowed with it")
        if self.min_samples > min(self.window, self.baseline_size):
            raise ValueError(
                f"min_samples ({self.min_samples}) exceeds window ({self.window}) "
                f"or baseline_size ({self.baseline_size}): drift could never be checked"
            )
        if self.psi_bins * MIN_PER_BIN > self.min_samples:
            raise ValueError(
                f"psi_bins ({self.psi_bins}) leaves fewer than {MIN_PER_BIN} samples a bin "
                f"at min_samples ({self.min_samples})"
            )
        return self


class Policy(_Frozen):
    max_distance: float | None = Field(default=None, ge=0)  # a pair fails above it
    max_sparsity: float = Field(default=0.98, ge=0, le=1)  # per layer, share of |x| < 1e-6
    min_std: float = Field(default=1e-4, ge=0)  # per layer activation std
    allow_nonfinite: bool = False
    drift: DriftPolicy = DriftPolicy()
    alert_cooldown_s: float = Field(default=3600, ge=0)  # an alert opening again sooner at the receiver is held back


class SuitePolicies(_Frozen):
    """A suite's fully merged policies: `base`, and one per `net` or `net@version` key. What judges a
    run, and what a run records (as JSON) when its submitter gives a policy."""

    base: Policy
    nets: dict[str, Policy] = {}

    def policy_for(self, net: str, weights_version: str) -> Policy:
        """The most specific policy for a pair scored by `net` at `weights_version`."""
        if net not in NETS:
            raise ValueError(f"net: unknown net {net!r} (expected {', '.join(sorted(NETS))})")
        for key in (f"{net}@{weights_version}", net):
            if key in self.nets:
                return self.nets[key]
        return self.base


class PolicySet(_Frozen):
    defaults: Policy = Policy()
    suites: dict[str, SuitePolicies] = {}


def policy_for(policyset: PolicySet, *, suite: str, net: str, weights_version: str) -> Policy:
    """The most specific policy for a pair scored by `net` at `weights_version`; unknown suites get the defaults."""
    return _own(policyset, suite).policy_for(net, weights_version)


def suite_policy(policyset: PolicySet, *, suite: str, threshold: float | None = None) -> SuitePolicies:
    """The policies that judge a run of `suite` (the defaults for a suite the set does not name); a
    threshold given with the run becomes every max_distance."""
    own = _own(policyset, suite)
    if threshold is None:
        return own
    return SuitePolicies(
        base=with_overrides(own.base, max_distance=threshold),
        nets={key: with_overrides(policy, max_distance=threshold) for key, policy in own.nets.items()},
    )


def _own(policyset: PolicySet, suite: str) -> SuitePolicies:
    return policyset.suites.get(suite) or SuitePolicies(base=policyset.defaults)


def effective_policy(run: Run, fallback: PolicySet | None) -> SuitePolicies | None:
    """The one place that decides which policy judges `run`: the policy it records (its submitter's,
    or the one written with its verdict), else `fallback` (the gate daemon's) for its suite and
    threshold. None when it records none and there is no fallback: only the daemon judges such runs."""
    if run.policy is not None:
        return SuitePolicies.model_validate(run.policy)
    if fallback is None:
        return None
    return suite_policy(fallback, suite=run.suite.name, threshold=run.threshold)


def policy_hash(policy: SuitePolicies) -> str:
    """sha256 (hex) of the policy's canonical JSON (sorted keys, no spaces): names the policy that
    produced a verdict; equal policies hash alike however they were written."""
    canonical = json.dumps(policy.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def with_overrides(policy: Policy, **overrides: Any) -> Policy:
    """Apply command-line overrides; a None value means 'not given', so unset flags change nothing."""
    given = {key: value for key, value in overrides.items() if value is not None}
    return _validated(_merge(policy.model_dump(), given), "override", Path("command line"))


def load_policies(path: str | Path) -> PolicySet:
    path = Path(path)
    document = _read(path)
    unknown = sorted(set(document) - {"defaults", "suite"})
    if unknown:
        raise PolicyError(f"{path}: {unknown[0]}: unknown section (expected 'defaults' or 'suite')")
    defaults_layer = _table(document.get("defaults", {}), "defaults", path)
    if "nets" in defaults_layer:
        raise PolicyError(f"{path}: defaults.nets: per-net thresholds belong to a suite")
    defaults = _validated(defaults_layer, "defaults", path)
    suites = _table(document.get("suite", {}), "suite", path)
    return PolicySet(
        defaults=defaults,
        suites={name: _suite(defaults, layer, f"suite.{name}", path) for name, layer in suites.items()},
    )


def _suite(defaults: Policy, layer: Any, key: str, path: Path) -> SuitePolicies:
    layer = dict(_table(layer, key, path))
    net_layers = _table(layer.pop("nets", {}), f"{key}.nets", path)
    base_fields = _merge(defaults.model_dump(), layer)
    base = _validated(base_fields, key, path)
    nets: dict[str, Policy] = {}
    for name in sorted(net_layers, key=lambda name: "@" in name):  # plain nets first: versions build on them
        net = _net_of(name, f"{key}.nets.{name}", path)
        parent = nets[net].model_dump() if "@" in name and net in nets else base_fields
        net_layer = _table(net_layers[name], f"{key}.nets.{name}", path)
        nets[name] = _validated(_merge(parent, net_layer), f"{key}.nets.{name}", path)
    return SuitePolicies(base=base, nets=nets)


def _net_of(name: str, key: str, path: Path) -> str:
    net, _, version = str(name).partition("@")
    if net not in NETS:
        raise PolicyError(f"{path}: {key}: unknown net {net!r} (expected {', '.join(sorted(NETS))})")
    if "@" in name and not version:
        raise PolicyError(f"{path}: {key}: empty weights version after '@'")
    return net


def _read(path: Path) -> dict[str, Any]:
    readers = {".toml": _read_toml, ".yaml": _read_yaml, ".yml": _read_yaml}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise PolicyError(f"{path}: unsupported policy file type {path.suffix!r} (use .toml, .yaml or .yml)")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError(f"{path}: no such policy file") from None
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read: {exc.strerror}") from None
    document = reader(text, path)
    return _table({} if document is None else document, "(top level)", path)


def _read_toml(text: str, path: Path) -> Any:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{path}: invalid TOML: {exc}") from None


def _read_yaml(text: str, path: Path) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" (at line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise PolicyError(f"{path}: invalid YAML: {exc.problem}{where}") from None
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path}: invalid YAML: {exc}") from None


def _table(value: Any, key: str, path: Path) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PolicyError(f"{path}: {key}: expected a table, got {type(value).__name__}")
    not_text = [name for name in value if not isinstance(name, str)]
    if not_text:
        raise PolicyError(f"{path}: {key}: key {not_text[0]!r} must be text (quote it)")
    return value


def _merge(base: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    """Field-by-field merge; nested tables (drift) merge too, so a layer may set one drift field."""
    merged = dict(base)
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _validated(fields: dict[str, Any], key: str, path: Path) -> Policy:
    try:
        return Policy.model_validate(fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join([key, *(str(part) for part in error["loc"])])
        message = error["msg"].removeprefix("Value error, ")
        raise PolicyError(f"{path}: {where}: {message}") from None
