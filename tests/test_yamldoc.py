"""Hostile or careless YAML: refused with its line, in bounded time, by validate, ingest and the configuration."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import yaml

from builders import AUTHOR
from zarrchive.config import load_settings
from zarrchive.errors import ConfigError
from zarrchive.tasks.intake import check_folder
from zarrchive.yamldoc import YAMLRefused, load

CHECKS = load_settings().submission

HEAD = ("title: A test submission of microscopy images\ndescription: YAML tests.\nrelease_date: 2026-01-01\n"
        f"authors: [{{name: {AUTHOR['name']}}}]\nfiles: [{{path: a.txt, kind: attachment}}]\n")


def alias_bomb(levels: int = 9) -> str:
    """The 'billion laughs': each level lists the previous one nine times."""
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


HOSTILE = {
    "alias bomb": (alias_bomb(), "anchor (&a0)"),
    "alias": ("license: CC0-1.0\nx: &x [1]\ny: *x\n", "anchor (&x)"),
    "duplicate licence": ("license: CC-BY-NC-4.0\n" + HEAD + "license: CC0-1.0\n", "'license' is given twice"),
    "duplicate nested key": ("license: CC0-1.0\n" + HEAD.replace("files:", "organism: {scientific_name: a, "
                                                                          "scientific_name: b}\nfiles:"),
                             "'scientific_name' is given twice"),
    "merge key": ("license: CC0-1.0\n" + HEAD + "publication:\n  <<: {doi: 10.1/x}\n", "merge key (<<)"),
    "python tag": ("license: !!python/object/apply:os.system [id]\n" + HEAD, "tag"),
    "plain tag": ("license: !!str CC0-1.0\n" + HEAD, "tag"),
    "second document": ("license: CC0-1.0\n" + HEAD + "---\nlicense: CC0-1.0\n", "a second document"),
    "deep nesting": ("license: CC0-1.0\n" + HEAD + "x: " + "[" * 5000 + "]" * 5000 + "\n", "nested more than"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_yaml_is_refused_quickly_with_its_reason(tmp_path, case):
    text, words = HOSTILE[case]
    (tmp_path / "submission.yaml").write_text(text)
    (tmp_path / "a.txt").write_text("x")
    found: list = []
    worker = threading.Thread(target=lambda: found.append(check_folder(str(tmp_path), CHECKS)), daemon=True)
    worker.start()
    worker.join(20)
    assert found, f"{case}: checking did not finish"
    doc, _sha, findings = found[0]
    assert doc is None
    [finding] = findings
    assert finding.field == "submission.yaml" and finding.severity == "error" and words in finding.message, finding


def test_a_duplicate_key_names_both_lines():
    with pytest.raises(YAMLRefused, match=r"line 3: 'license' is given twice \(first on line 1\)"):
        load("license: CC-BY-NC-4.0\ntitle: x\nlicense: CC0-1.0\n")


def test_plain_yaml_loads_as_safe_load_does():
    text = yaml.safe_dump({"a": [1, 2.5, "x", None, True], "b": {"c": "2026-01-01"}, "d": "2026-01-01"})
    assert load(text) == yaml.safe_load(text)


def test_an_oversized_submission_yaml_is_refused_before_it_is_parsed(tmp_path):
    body = HEAD.replace("description: YAML tests.", "description: '" + "x" * (5 << 20) + "'")
    (tmp_path / "submission.yaml").write_text("license: CC0-1.0\n" + body)
    doc, _sha, [finding] = check_folder(str(tmp_path), CHECKS)
    assert doc is None and "larger than 4,194,304 bytes" in finding.message


def test_a_value_longer_than_the_limit_is_named(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    body = HEAD.replace("description: YAML tests.", "description: '" + "x" * 70000 + "'")
    (tmp_path / "submission.yaml").write_text("license: CC0-1.0\n" + body)
    doc, _sha, [finding] = check_folder(str(tmp_path), CHECKS)
    assert doc is None and finding.field == "description" and "70,000 characters" in finding.message


def test_more_files_than_the_limit_are_refused(tmp_path):
    checks = CHECKS.model_copy(update={"limits": CHECKS.limits.model_copy(update={"files": 3})})
    files = ", ".join(f"{{path: f{i}.txt}}" for i in range(4))
    (tmp_path / "submission.yaml").write_text("license: CC0-1.0\n" + HEAD.replace(
        "files: [{path: a.txt, kind: attachment}]", f"files: [{files}]"))
    doc, _sha, [finding] = check_folder(str(tmp_path), checks)
    assert doc is None and finding.field == "files" and "lists 4 files, more than" in finding.message


def test_a_configuration_with_a_duplicate_key_is_a_configuration_error(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("publish:\n  on_image_error: skip_image\n  on_image_error: block_submission\n")
    with pytest.raises(ConfigError, match="'on_image_error' is given twice"):
        load_settings(str(path))


def test_yaml_that_is_not_yaml_is_refused(tmp_path: Path):
    with pytest.raises(YAMLRefused, match="not valid YAML"):
        load("a: [1, 2\n")
