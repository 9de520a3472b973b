"""Gate policies: limits per suite, per backbone and per image, read from one TOML or YAML file.

LPIPS distances are not comparable across backbones (vgg runs larger than alex), so a suite may set
limits per net (`nets.alex`) and per net and weights version (`nets."alex@0.1"`); a pair is judged
by the policy of the net that actually scored it. Layers merge field by field, most specific last:

    defaults -> suite.<name> -> suite.<name>.nets.<net> -> suite.<name>.nets."<net>@<version>"

except the limits on the LPIPS scale (max_distance, max_region, max_area): the suite's apply to the
run's own net, and a nets section has only its own, so a pair a fallback backbone scored is judged
on that backbone's scale or not at all (its verdict is then an error). Image rules, in file order,
override fields for the candidates whose path (relative to the candidate folder) matches their glob,
and name what the scores ignore: rectangles [x, y, w, h] and a mask image under the image root.

    [defaults]
    max_sparsity = 0.98

    [suite.render]
    max_distance = 0.10
    max_region = 0.9
    drift = { window = 50 }

    [suite.render.nets.vgg]
    max_distance = 0.18

    [[suite.render.images]]
    glob = "shots/ui_*"
    max_region = 1.5
    ignore = [[0, 0, 320, 48]]
    mask = "masks/ui.png"
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator, model_validator

from gate.vocabulary import AREA_LEVEL, NETS, REGION_PX

if TYPE_CHECKING:
    from gate.store.models import Run

Validated = TypeVar("Validated", bound=BaseModel)
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


# score name -> the Policy field that limits it; "mean" is the LPIPS mean (max_distance)
LIMITS = {"mean": "max_distance", "region": "max_region", "area": "max_area", "fireflies": "max_fireflies",
          "outliers": "max_outliers", "nonfinite": "max_nonfinite", "tone": "max_tone",
          "levels": "max_levels_lost"}
SCALE_FIELDS = ("max_distance", "max_region", "max_area")  # on one backbone's LPIPS scale
RUN_OPTIONS = ("region_px", "area_level")  # what the workers compute with: one value per run, set per suite
PER_SUITE = ("drift", "alert_cooldown_s", *RUN_OPTIONS)  # never per image


class Policy(_Frozen):
    max_distance: float | None = Field(default=None, ge=0)  # a pair fails when its mean LPIPS is above
    max_region: float | None = Field(default=None, ge=0)  # ... or its worst region's mean LPIPS
    max_area: float | None = Field(default=None, ge=0)  # ... or its share of the frame above area_level
    max_fireflies: float | None = Field(default=None, ge=0)  # isolated over-bright candidate pixels
    max_outliers: float | None = Field(default=None, ge=0)  # candidate pixels outside the reference's local range
    max_nonfinite: float | None = Field(default=None, ge=0)  # NaN/Inf candidate pixels (EXR)
    max_tone: float | None = Field(default=None, ge=0)  # a region's mean colour shift, in 8-bit levels
    max_levels_lost: float | None = Field(default=None, ge=0)  # share of a region's distinct levels lost
    fail_flat: bool = True  # a blank or flat candidate of a reference that is not fails
    max_sparsity: float = Field(default=0.98, ge=0, le=1)  # per layer, share of |x| < 1e-6
    min_std: float = Field(default=1e-4, ge=0)  # per layer activation std
    allow_nonfinite: bool = False
    # per layer, the candidate's spatial std over the reference's: a black or flat frame measures
    # 0.02-0.2 on its flattest layer (the padded border keeps it above 0), a re-render 0.7-1.3
    min_spatial_std_ratio: float | None = Field(default=0.25, ge=0)
    max_dead: float | None = Field(default=None, ge=0, le=1)  # per layer, the candidate's share of dead channels
    region_px: int = Field(default=REGION_PX, ge=1)  # run options: the worst region's window in pixels
    area_level: float = Field(default=AREA_LEVEL, gt=0)  # ... and the map level the area score counts above
    drift: DriftPolicy = DriftPolicy()
    alert_cooldown_s: float = Field(default=3600, ge=0)  # an alert opening again sooner at the receiver is held back


Coordinate = Annotated[StrictInt, Field(ge=0)]
Extent = Annotated[StrictInt, Field(ge=1)]
Rect = tuple[Coordinate, Coordinate, Extent, Extent]  # x, y, w, h in the candidate's pixels


class ImageRule(_Frozen):
    """Overrides for the candidates whose path relative to the candidate folder matches `glob`
    (fnmatch, case-sensitive: `*` also crosses `/`), and what their scores ignore: rectangles and a
    mask image (a path under the image root, white = ignored). Limits on the LPIPS scale apply to
    the run's own net only: a fallback backbone has its own scale."""

    glob: str = Field(min_length=1)
    overrides: dict[str, float | bool] = {}
    ignore: tuple[Rect, ...] = ()
    mask: str | None = None

    @field_validator("overrides")
    @classmethod
    def _per_image(cls, overrides: dict[str, float | bool]) -> dict[str, float | bool]:
        unknown = sorted((set(overrides) - set(Policy.model_fields)) | (set(overrides) & set(PER_SUITE)))
        if unknown:
            raise ValueError(f"{unknown[0]}: not a per-image field")
        return overrides

    @field_validator("mask")
    @classmethod
    def _relative(cls, mask: str | None) -> str | None:
        if mask is not None and (not mask or PurePosixPath(mask).is_absolute() or ".." in PurePosixPath(mask).parts):
            raise ValueError(f"{mask!r}: must be a path relative to the image root, without '..'")
        return mask

    def matches(self, image: str) -> bool:
        return fnmatchcase(image, self.glob)


class SuitePolicies(_Frozen):
    """A suite's fully merged policies: `base`, one per `net` or `net@version` key, and its image
    rules in file order. What judges a run, and what a run records (as JSON) when its submitter gives
    a policy."""

    base: Policy
    nets: dict[str, Policy] = {}
    images: tuple[ImageRule, ...] = ()

    def policy_for(self, net: str, weights_version: str, image: str = "", *, primary: str | None = None) -> Policy:
        """The policy for a pair scored by `net` at `weights_version`, its candidate at `image`
        (relative to the candidate folder; every matching image rule applies, later ones win).
        `primary` is the run's own net (None: `net` is). The run's own net gets the suite's LPIPS
        limits where its section sets none; another net only those of its own section, so a pair a
        fallback scored is never judged on the primary's scale."""
        if net not in NETS:
            raise ValueError(f"net: unknown net {net!r} (expected {', '.join(sorted(NETS))})")
        own = primary is None or net == primary
        section = next((self.nets[key] for key in (f"{net}@{weights_version}", net) if key in self.nets), None)
        update: dict[str, Any] = {}
        if section is not None and own:
            update = {field: getattr(self.base, field) for field in SCALE_FIELDS if getattr(section, field) is None}
        elif section is None and not own:
            update = dict.fromkeys(SCALE_FIELDS)
        for rule in self.images:
            if rule.matches(image):
                update.update({key: value for key, value in rule.overrides.items() if own or key not in SCALE_FIELDS})
        policy = self.base if section is None else section
        return policy.model_copy(update=update) if update else policy


class PolicySet(_Frozen):
    defaults: Policy = Policy()
    suites: dict[str, SuitePolicies] = {}


def policy_for(policyset: PolicySet, *, suite: str, net: str, weights_version: str) -> Policy:
    """The most specific policy for a pair scored by `net` at `weights_version`; unknown suites get the defaults."""
    return _own(policyset, suite).policy_for(net, weights_version)


def suite_policy(policyset: PolicySet, *, suite: str, threshold: float | None = None,
                 net: str | None = None) -> SuitePolicies:
    """The policies that judge a run of `suite` (the defaults for a suite the set does not name); a
    threshold given with the run becomes the max_distance of the run's own net `net`: the suite's and
    that net's sections (a fallback backbone keeps its own scale)."""
    own = _own(policyset, suite)
    if threshold is None:
        return own
    nets = {key: with_overrides(policy, max_distance=threshold) if key.partition("@")[0] == net else policy
            for key, policy in own.nets.items()}
    return own.model_copy(update={"base": with_overrides(own.base, max_distance=threshold), "nets": nets})


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
    return suite_policy(fallback, suite=run.suite.name, threshold=run.threshold, net=run.net)


def policy_hash(policy: SuitePolicies) -> str:
    """sha256 (hex) of the policy's canonical JSON (sorted keys, no spaces): names the policy that
    produced a verdict; equal policies hash alike however they were written."""
    canonical = json.dumps(policy.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def with_overrides(policy: Policy, **overrides: Any) -> Policy:
    """Apply command-line overrides; a None value means 'not given', so unset flags change nothing."""
    given = {key: value for key, value in overrides.items() if value is not None}
    return _validated(Policy, _merge(policy.model_dump(), given), "override", Path("command line"))


def load_policies(path: str | Path) -> PolicySet:
    path = Path(path)
    document = _read(path)
    unknown = sorted(set(document) - {"defaults", "suite"})
    if unknown:
        raise PolicyError(f"{path}: {unknown[0]}: unknown section (expected 'defaults' or 'suite')")
    defaults_layer = _table(document.get("defaults", {}), "defaults", path)
    for section, what in (("nets", "per-net thresholds"), ("images", "image rules")):
        if section in defaults_layer:
            raise PolicyError(f"{path}: defaults.{section}: {what} belong to a suite")
    defaults = _validated(Policy, defaults_layer, "defaults", path)
    suites = _table(document.get("suite", {}), "suite", path)
    return PolicySet(
        defaults=defaults,
        suites={name: _suite(defaults, layer, f"suite.{name}", path) for name, layer in suites.items()},
    )


def _suite(defaults: Policy, layer: Any, key: str, path: Path) -> SuitePolicies:
    layer = dict(_table(layer, key, path))
    net_layers = _table(layer.pop("nets", {}), f"{key}.nets", path)
    image_layers = layer.pop("images", [])
    base_fields = _merge(defaults.model_dump(), layer)
    base = _validated(Policy, base_fields, key, path)
    unscaled = {**base_fields, **dict.fromkeys(SCALE_FIELDS)}  # a net's LPIPS limits are its own
    nets: dict[str, Policy] = {}
    for name in sorted(net_layers, key=lambda name: "@" in name):  # plain nets first: versions build on them
        net_key = f"{key}.nets.{name}"
        net = _net_of(name, net_key, path)
        parent = nets[net].model_dump() if "@" in name and net in nets else unscaled
        net_layer = _table(net_layers[name], net_key, path)
        _refuse(net_layer, RUN_OPTIONS, "set per suite, not per net", net_key, path)
        nets[name] = _validated(Policy, _merge(parent, net_layer), net_key, path)
    return SuitePolicies(base=base, nets=nets, images=_images(image_layers, base_fields, f"{key}.images", path))


def _images(value: Any, base_fields: dict[str, Any], key: str, path: Path) -> tuple[ImageRule, ...]:
    """`[[suite.NAME.images]]`: glob, ignore, mask and any per-image policy fields, validated as
    they merge over the suite's; only the fields given are kept, normalised (600 and 600.0 alike)."""
    if not isinstance(value, list):
        raise PolicyError(f"{path}: {key}: expected a list of tables ([[{key}]]), got {type(value).__name__}")
    rules = []
    for index, entry in enumerate(value):
        entry_key = f"{key}.{index}"
        fields = dict(_table(entry, entry_key, path))
        rule: dict[str, Any] = {name: fields.pop(name) for name in ("glob", "ignore", "mask") if name in fields}
        _refuse(fields, PER_SUITE, "set per suite, not per image", entry_key, path)
        policy = _validated(Policy, _merge(base_fields, fields), entry_key, path)
        overrides = {name: getattr(policy, name) for name in fields}
        rules.append(_validated(ImageRule, {**rule, "overrides": overrides}, entry_key, path))
    return tuple(rules)


def _refuse(layer: dict[str, Any], names: tuple[str, ...], why: str, key: str, path: Path) -> None:
    refused = [name for name in names if name in layer]
    if refused:
        raise PolicyError(f"{path}: {key}.{refused[0]}: {why}")


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


def _validated(model: type[Validated], fields: dict[str, Any], key: str, path: Path) -> Validated:
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join([key, *(str(part) for part in error["loc"])])
        message = error["msg"].removeprefix("Value error, ")
        raise PolicyError(f"{path}: {where}: {message}") from None
