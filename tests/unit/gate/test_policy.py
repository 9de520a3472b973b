import hashlib
import json
import re
import textwrap

import pytest
from pydantic import ValidationError

from gate.judging.policy import (
    DriftPolicy,
    Policy,
    PolicyError,
    PolicySet,
    SuitePolicies,
    load_policies,
    policy_for,
    policy_hash,
    suite_policy,
    with_overrides,
)

LAYERED_TOML = """
[defaults]
max_sparsity = 0.9
alert_cooldown_s = 600

[suite.render]
max_distance = 0.10
drift = { window = 40, min_samples = 25 }

[suite.render.nets.vgg]
max_distance = 0.18
drift = { psi_threshold = 0.4 }

[suite.render.nets."vgg@0.1"]
min_std = 0.001

[suite.render.nets."squeeze@0.0"]
max_distance = 0.05
"""

LAYERED_YAML = """
defaults:
  max_sparsity: 0.9
  alert_cooldown_s: 600
suite:
  render:
    max_distance: 0.10
    drift: {window: 40, min_samples: 25}
    nets:
      vgg: {max_distance: 0.18, drift: {psi_threshold: 0.4}}
      "vgg@0.1": {min_std: 0.001}
      "squeeze@0.0": {max_distance: 0.05}
"""


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.fixture(params=[("policies.toml", LAYERED_TOML), ("policies.yaml", LAYERED_YAML)], ids=["toml", "yaml"])
def layered(request, tmp_path):
    return load_policies(_write(tmp_path, *request.param))


def test_defaults_match_the_documented_values():
    policy = Policy()
    assert (policy.max_distance, policy.max_sparsity, policy.min_std) == (None, 0.98, 1e-4)
    assert (policy.allow_nonfinite, policy.alert_cooldown_s) == (False, 3600)
    limits = (policy.max_region, policy.max_area, policy.max_fireflies, policy.max_outliers, policy.max_nonfinite)
    assert limits == (None,) * 5  # not judged until declared (or calibrated)
    assert (policy.fail_flat, policy.min_spatial_std_ratio, policy.max_dead) == (True, 0.25, None)
    assert (policy.region_px, policy.area_level) == (32, 1.0)
    drift = policy.drift
    assert (drift.baseline, drift.pinned_run, drift.window, drift.baseline_size) == ("trailing", None, 50, 200)
    assert (drift.min_samples, drift.ks_threshold, drift.psi_threshold) == (30, 0.001, 0.25)
    assert (drift.psi_bins, drift.wasserstein_threshold) == (5, None)


def test_suite_layer_merges_over_defaults_field_by_field(layered):
    alex = policy_for(layered, suite="render", net="alex", weights_version="0.1")
    assert (alex.max_distance, alex.max_sparsity, alex.alert_cooldown_s) == (0.10, 0.9, 600)
    assert (alex.drift.window, alex.drift.min_samples, alex.drift.baseline_size) == (40, 25, 200)


def test_a_fallback_backbone_gets_its_own_thresholds_not_alex(layered):
    vgg = policy_for(layered, suite="render", net="vgg", weights_version="0.0")
    assert vgg.max_distance == 0.18
    assert (vgg.drift.window, vgg.drift.psi_threshold) == (40, 0.4)  # the suite's window is kept
    assert vgg.min_std == 1e-4


def test_a_version_override_builds_on_its_net(layered):
    vgg01 = policy_for(layered, suite="render", net="vgg", weights_version="0.1")
    assert (vgg01.max_distance, vgg01.min_std, vgg01.drift.psi_threshold) == (0.18, 0.001, 0.4)


def test_a_version_override_without_a_net_layer_builds_on_the_suite(layered):
    assert policy_for(layered, suite="render", net="squeeze", weights_version="0.0").max_distance == 0.05
    other = policy_for(layered, suite="render", net="squeeze", weights_version="0.1")
    assert (other.max_distance, other.drift.window) == (0.10, 40)


def test_an_unknown_suite_gets_the_defaults(layered):
    policy = policy_for(layered, suite="new-suite", net="alex", weights_version="0.1")
    assert policy == Policy(max_sparsity=0.9, alert_cooldown_s=600)


def test_policy_for_rejects_an_unknown_net(layered):
    with pytest.raises(ValueError, match=r"^net: unknown net 'resnet' \(expected alex, squeeze, vgg\)$"):
        policy_for(layered, suite="render", net="resnet", weights_version="0.1")


def test_policies_are_frozen():
    with pytest.raises(ValidationError) as caught:
        Policy().max_distance = 0.3
    assert [error["type"] for error in caught.value.errors()] == ["frozen_instance"]


def test_an_empty_file_is_all_defaults(tmp_path):
    assert load_policies(_write(tmp_path, "empty.yml", "")) == PolicySet()


def test_with_overrides_replaces_given_values_and_keeps_unset_flags():
    policy = Policy(max_distance=0.1, min_std=0.01)
    assert with_overrides(policy, max_distance=0.25) == Policy(max_distance=0.25, min_std=0.01)
    assert with_overrides(policy, max_distance=None) == policy
    assert with_overrides(policy, drift={"window": 80}).drift == DriftPolicy(window=80)


def test_with_overrides_validates():
    with pytest.raises(PolicyError, match=r"^command line: override\.max_distance: .+$"):  # then pydantic's words
        with_overrides(Policy(), max_distance=-0.1)


@pytest.mark.parametrize(
    "name, text, message",
    [
        (
            "p.toml",
            "[suite.render]\nmax_distance = -1\n",
            "p.toml: suite.render.max_distance: Input should be greater than or equal to 0",
        ),
        (
            "p.toml",
            "[suite.render]\nmax_distanse = 0.1\n",
            "p.toml: suite.render.max_distanse: Extra inputs are not permitted",
        ),
        (
            "p.toml",
            "[suite.render.nets.vgg]\nmax_sparsity = 1.5\n",
            "p.toml: suite.render.nets.vgg.max_sparsity: Input should be less than or equal to 1",
        ),
        (
            "p.toml",
            "[suite.render.nets.alx]\nmax_distance = 0.1\n",
            "p.toml: suite.render.nets.alx: unknown net 'alx' (expected alex, squeeze, vgg)",
        ),
        (
            "p.toml",
            '[suite.render.nets."alex@"]\nmax_distance = 0.1\n',
            "p.toml: suite.render.nets.alex@: empty weights version after '@'",
        ),
        (
            "p.toml",
            "[suite.render.drift]\nbaseline = 'pinned'\n",
            "p.toml: suite.render.drift: pinned_run is required with baseline 'pinned' and only allowed with it",
        ),
        (
            "p.toml",
            "[defaults.drift]\nwindow = 20\n",
            (
                "p.toml: defaults.drift: min_samples (30) exceeds window (20) or baseline_size (200): "
                "drift could never be checked"
            ),
        ),
        (
            "p.toml",
            "[defaults.drift]\npsi_bins = 10\n",
            "p.toml: defaults.drift: psi_bins (10) leaves fewer than 5 samples a bin at min_samples (30)",
        ),
        (
            "p.yaml",
            "suite:\n  render:\n    max_distance: .inf\n",
            "p.yaml: suite.render.max_distance: Input should be a finite number",
        ),
        (
            "p.toml",
            "[defaults.nets.vgg]\nmax_distance = 0.1\n",
            "p.toml: defaults.nets: per-net thresholds belong to a suite",
        ),
        ("p.toml", "[suites.render]\n", "p.toml: suites: unknown section (expected 'defaults' or 'suite')"),
        ("p.yaml", "suite:\n  render: 0.1\n", "p.yaml: suite.render: expected a table, got float"),
        ("p.yaml", "- 1\n", "p.yaml: (top level): expected a table, got list"),
        (
            "p.yaml",
            "suite:\n  render:\n    nets: {vgg: {}}\n  2024: {}\n",
            "p.yaml: suite: key 2024 must be text (quote it)",
        ),
        ("p.json", "{}", "p.json: unsupported policy file type '.json' (use .toml, .yaml or .yml)"),
    ],
)
def test_invalid_files_name_the_file_and_the_key(tmp_path, name, text, message):
    path = _write(tmp_path, name, text)
    with pytest.raises(PolicyError) as caught:
        load_policies(path)
    assert str(caught.value) == f"{tmp_path}/{message}"


def test_syntax_errors_name_the_file(tmp_path):
    """What is wrong is the parser's to say (its words are not pinned); the file, and where, are ours."""
    folder = re.escape(str(tmp_path))
    with pytest.raises(PolicyError, match=rf"^{folder}/p\.toml: invalid TOML: .+$"):
        load_policies(_write(tmp_path, "p.toml", "b c\n"))
    with pytest.raises(PolicyError, match=rf"^{folder}/p\.yaml: invalid YAML: .+ \(at line 2, column 1\)$"):
        load_policies(_write(tmp_path, "p.yaml", "suite: {render: [\n"))


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(PolicyError) as caught:
        load_policies(tmp_path / "absent.toml")
    assert str(caught.value) == f"{tmp_path}/absent.toml: no such policy file"


# --- the policy of a run and its hash ----------------------------------------------------------


def test_a_suite_policy_with_a_threshold_sets_the_max_distance_of_the_runs_own_net(layered):
    """A fallback backbone keeps its own scale: the threshold is on the run's net's."""
    backbones = (("alex", "0.1"), ("vgg", "0.0"), ("vgg", "0.1"), ("squeeze", "0.0"))
    render = suite_policy(layered, suite="render", threshold=0.3, net="vgg")
    assert [render.policy_for(net, version).max_distance for net, version in backbones] == [0.3, 0.3, 0.3, 0.05]
    assert render.policy_for("vgg", "0.1").min_std == 0.001  # the rest of each layer stays
    alex = suite_policy(layered, suite="render", threshold=0.3, net="alex")
    assert [alex.policy_for(net, version).max_distance for net, version in backbones] == [0.3, 0.18, 0.18, 0.05]
    assert suite_policy(layered, suite="render") == layered.suites["render"]
    unknown = suite_policy(layered, suite="new-suite", threshold=0.2)
    assert (unknown.nets, unknown.base) == ({}, with_overrides(layered.defaults, max_distance=0.2))


def test_the_policy_hash_is_stable_for_the_same_policy(tmp_path, layered):
    written = _write(tmp_path, "same.toml", """
        [defaults]
        max_sparsity = 0.9
        alert_cooldown_s = 600.0

        [suite.render.nets."squeeze@0.0"]
        max_distance = 0.05

        [suite.render.nets."vgg@0.1"]
        min_std = 0.001

        [suite.render.nets.vgg]
        drift = { psi_threshold = 0.4 }
        max_distance = 0.18

        [suite.render]
        drift = { min_samples = 25, window = 40 }
        max_distance = 0.1
    """)  # the same policy: keys in another order, 600.0 for 600, 0.1 for 0.10
    render = suite_policy(layered, suite="render")
    expected = policy_hash(render)
    canonical = json.dumps(render.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    assert expected == hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    assert policy_hash(suite_policy(load_policies(written), suite="render")) == expected
    recorded = SuitePolicies.model_validate_json(render.model_dump_json())  # as a run records it
    assert policy_hash(recorded) == expected
    assert policy_hash(suite_policy(PolicySet(), suite="a", threshold=1)) == policy_hash(
        SuitePolicies(base=Policy(max_distance=1.0))
    )


def test_the_policy_hash_differs_for_another_policy(layered):
    render = suite_policy(layered, suite="render")
    others = [
        suite_policy(layered, suite="render", threshold=0.1, net="vgg"),  # vgg's 0.18 becomes 0.1
        suite_policy(layered, suite="other"),
        SuitePolicies(base=render.base, nets={**render.nets, "alex": render.base}),
        SuitePolicies(base=with_overrides(render.base, drift={"window": 41}), nets=render.nets),
    ]
    hashes = {policy_hash(policy) for policy in [render, *others]}
    assert len(hashes) == 5


# --- LPIPS limits of a fallback backbone, image rules and masks ---------------------------------------

IMAGES_TOML = """
[suite.render]
max_distance = 0.10
max_region = 0.9
max_fireflies = 3

[suite.render.nets.vgg]
max_sparsity = 0.95

[[suite.render.images]]
glob = "shots/ui_*"
max_region = 1.5
max_fireflies = 10
fail_flat = false
ignore = [[0, 0, 320, 48], [600, 0, 40, 40]]
mask = "masks/ui.png"

[[suite.render.images]]
glob = "shots/ui_menu*"
max_region = 2
"""

IMAGES_YAML = """
suite:
  render:
    max_distance: 0.10
    max_region: 0.9
    max_fireflies: 3
    nets:
      vgg: {max_sparsity: 0.95}
    images:
      - glob: "shots/ui_*"
        max_region: 1.5
        max_fireflies: 10
        fail_flat: false
        ignore: [[0, 0, 320, 48], [600, 0, 40, 40]]
        mask: masks/ui.png
      - {glob: "shots/ui_menu*", max_region: 2.0}
"""


@pytest.fixture(params=[("images.toml", IMAGES_TOML), ("images.yaml", IMAGES_YAML)], ids=["toml", "yaml"])
def with_images(request, tmp_path):
    return load_policies(_write(tmp_path, *request.param)).suites["render"]


def test_image_rules_load_in_order_with_their_overrides_rectangles_and_mask(with_images):
    ui, menu = with_images.images
    assert (ui.glob, ui.overrides, ui.ignore, ui.mask) == (
        "shots/ui_*", {"max_region": 1.5, "max_fireflies": 10.0, "fail_flat": False},
        ((0, 0, 320, 48), (600, 0, 40, 40)), "masks/ui.png",
    )
    assert (menu.glob, menu.overrides, menu.ignore, menu.mask) == ("shots/ui_menu*", {"max_region": 2.0}, (), None)


def test_every_matching_image_rule_applies_later_ones_winning(with_images):
    def limits(image):
        policy = with_images.policy_for("alex", "0.1", image)
        return policy.max_distance, policy.max_region, policy.max_fireflies, policy.fail_flat

    assert limits("shots/hero.png") == (0.10, 0.9, 3, True)
    assert limits("shots/ui_login.png") == (0.10, 1.5, 10, False)
    assert limits("shots/ui_menu/main.png") == (0.10, 2.0, 10, False)  # fnmatch: * crosses folders
    assert limits("Shots/ui_login.png") == (0.10, 0.9, 3, True)  # case-sensitive on every system


def test_a_net_section_has_its_own_lpips_limits_only(with_images):
    """The suite's LPIPS limits are on the run's own net's scale: vgg's section inherits the rest."""
    vgg = with_images.nets["vgg"]
    assert (vgg.max_distance, vgg.max_region, vgg.max_fireflies, vgg.max_sparsity) == (None, None, 3, 0.95)
    own = with_images.policy_for("vgg", "0.1", "shots/hero.png", primary="vgg")  # a vgg run: the suite's apply
    assert (own.max_distance, own.max_region, own.max_sparsity) == (0.10, 0.9, 0.95)
    fallback = with_images.policy_for("vgg", "0.1", "shots/ui_login.png", primary="alex")
    assert (fallback.max_distance, fallback.max_region, fallback.max_fireflies) == (None, None, 10)
    squeeze = with_images.policy_for("squeeze", "0.1", "shots/hero.png", primary="alex")  # no section at all
    assert (squeeze.max_distance, squeeze.max_region, squeeze.max_fireflies) == (None, None, 3)


def test_image_rules_change_the_policy_hash_and_survive_the_round_trip(with_images):
    recorded = SuitePolicies.model_validate_json(with_images.model_dump_json())
    assert (recorded, policy_hash(recorded)) == (with_images, policy_hash(with_images))
    assert policy_hash(with_images.model_copy(update={"images": with_images.images[:1]})) != policy_hash(with_images)


@pytest.mark.parametrize(
    "text, message",
    [
        ("[[suite.r.images]]\nmax_region = 1\n", "suite.r.images.0.glob: Field required"),
        ("[[suite.r.images]]\nglob = 'a*'\nmax_region = -1\n",
         "suite.r.images.0.max_region: Input should be greater than or equal to 0"),
        ("[[suite.r.images]]\nglob = 'a*'\nmax_regoin = 1\n",
         "suite.r.images.0.max_regoin: Extra inputs are not permitted"),
        ("[[suite.r.images]]\nglob = 'a*'\nregion_px = 64\n",
         "suite.r.images.0.region_px: set per suite, not per image"),
        ("[[suite.r.images]]\nglob = 'a*'\ndrift = { window = 60 }\n",
         "suite.r.images.0.drift: set per suite, not per image"),
        ("[[suite.r.images]]\nglob = 'a*'\nignore = [[0, -1, 10, 10]]\n",
         "suite.r.images.0.ignore.0.1: Input should be greater than or equal to 0"),
        ("[[suite.r.images]]\nglob = 'a*'\nignore = [[0, 0, 0, 10]]\n",
         "suite.r.images.0.ignore.0.2: Input should be greater than or equal to 1"),
        ("[[suite.r.images]]\nglob = 'a*'\nignore = [[0, 0, 2.5, 10]]\n",
         "suite.r.images.0.ignore.0.2: Input should be a valid integer"),
        ("[[suite.r.images]]\nglob = 'a*'\nignore = [[0, 0, 10]]\n",
         "suite.r.images.0.ignore.0.3: Field required"),
        ("[[suite.r.images]]\nglob = 'a*'\nmask = '/etc/ui.png'\n",
         "suite.r.images.0.mask: '/etc/ui.png': must be a path relative to the image root, without '..'"),
        ("[[suite.r.images]]\nglob = 'a*'\nmask = '../ui.png'\n",
         "suite.r.images.0.mask: '../ui.png': must be a path relative to the image root, without '..'"),
        ("[suite.r]\nimages = 'a*'\n", "suite.r.images: expected a list of tables ([[suite.r.images]]), got str"),
        ("[[defaults.images]]\nglob = 'a*'\n", "defaults.images: image rules belong to a suite"),
        ("[suite.r.nets.vgg]\narea_level = 0.5\n", "suite.r.nets.vgg.area_level: set per suite, not per net"),
        ("[suite.r]\nregion_px = 0\n", "suite.r.region_px: Input should be greater than or equal to 1"),
        ("[suite.r]\nmax_area = -0.5\n", "suite.r.max_area: Input should be greater than or equal to 0"),
    ],
)
def test_invalid_image_rules_and_scores_name_the_key(tmp_path, text, message):
    path = _write(tmp_path, "p.toml", text)
    with pytest.raises(PolicyError) as caught:
        load_policies(path)
    assert str(caught.value) == f"{path}: {message}"
