"""The one alert fingerprint: the identity of an alert in the store over its lifetime."""

from gate.alerts.store import alert_fingerprint


def test_fingerprint_is_sha256_of_rule_suite_and_sorted_labels():
    # sha256 of '["distance","render",{"net":"alex"}]'
    expected = "ff3ee5aaca69bffc4745dd3a24d4294b00db495f977d49c0ecd0b206eaa91810"
    assert alert_fingerprint(rule="distance", suite_name="render", labels={"net": "alex"}) == expected


def test_fingerprint_ignores_label_order_and_tells_rules_and_suites_apart():
    labels = {"net": "alex", "layer": "relu1"}
    one = alert_fingerprint(rule="sparsity", suite_name="render", labels=labels)
    assert one == alert_fingerprint(rule="sparsity", suite_name="render", labels=dict(reversed(labels.items())))
    assert one != alert_fingerprint(rule="variance", suite_name="render", labels=labels)
    assert one != alert_fingerprint(rule="sparsity", suite_name="other", labels=labels)
