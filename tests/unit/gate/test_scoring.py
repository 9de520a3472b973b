"""The scoring options a run carries: defaults, validation, and which mask rules reach a candidate."""

from __future__ import annotations

import pytest

from gate.scoring import AREA_LEVEL, REGION_PX, MaskRule, ScoreOptions, glob_matches


def test_a_run_without_scoring_options_gets_the_defaults():
    assert ScoreOptions.from_options({"maps": False}) == ScoreOptions(region_px=32, area_level=1.0, masks=())
    assert (REGION_PX, AREA_LEVEL) == (32, 1.0)


def test_options_are_read_with_their_mask_rules():
    options = ScoreOptions.from_options({
        "region_px": 48, "area_level": 0.5,
        "masks": [{"glob": "shots/ui_*", "rects": [[0, 0, 200, 40], [10, 900, 64, 64]], "mask": None},
                  {"glob": "*.png", "mask": "masks/logo.png"}],
    })
    assert options == ScoreOptions(48, 0.5, (MaskRule("shots/ui_*", ((0, 0, 200, 40), (10, 900, 64, 64))),
                                             MaskRule("*.png", (), "masks/logo.png")))
    assert [rule.glob for rule in options.masks_for("cand/shots/ui_title.png")] == ["shots/ui_*", "*.png"]
    assert [rule.glob for rule in options.masks_for("cand/shots/hero.png")] == ["*.png"]
    assert options.masks_for("cand/shots/ui_title.exr") == (MaskRule("shots/ui_*", ((0, 0, 200, 40),
                                                                                   (10, 900, 64, 64))),)


@pytest.mark.parametrize("glob, path, matches", [
    ("shots/ui_*", "cand/shots/ui_title.png", True),
    ("shots/ui_*", "shots/ui_title.png", True),
    ("shots/ui_*", "cand/other/ui_title.png", False),
    ("ui_*", "cand/shots/ui_title.png", True),  # matched from the right end
    ("*", "cand/shots/ui_title.png", True),
    ("cand/*.png", "cand/shots/ui_title.png", False),  # "*" never crosses "/"
])
def test_globs_match_stored_paths_from_their_right_end(glob, path, matches):
    assert glob_matches(glob, path) is matches


@pytest.mark.parametrize("options, message", [
    ({"region_px": 0}, "region_px: expected an integer >= 1, got 0"),
    ({"region_px": 8.5}, "region_px: expected an integer >= 1, got 8.5"),
    ({"area_level": -1}, "area_level: expected a finite number >= 0, got -1"),
    ({"area_level": float("nan")}, "area_level: expected a finite number >= 0, got nan"),
    ({"masks": {"glob": "*"}}, "masks: expected a list of mask rules, got {'glob': '*'}"),
    ({"masks": [{"rects": []}]}, "masks[0]: expected {'glob': str, 'rects': [...], 'mask': path or null}, "
                                 "got {'rects': []}"),
    ({"masks": [{"glob": "*", "rects": [[0, 0, 0, 4]]}]},
     "masks[0].rects[0]: expected [x, y, width, height] as integers, width and height >= 1, got [0, 0, 0, 4]"),
    ({"masks": [{"glob": "*", "mask": ""}]}, "masks[0].mask: expected a path or null, got ''"),
])
def test_malformed_options_are_named(options, message):
    with pytest.raises(ValueError) as caught:
        ScoreOptions.from_options(options)
    assert str(caught.value) == message
