"""The docs match the code: every setting is documented, every deploy variable has an example."""

from __future__ import annotations

import re
from pathlib import Path

from router._config import Settings
from router_service import ServiceLimits

ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_is_in_the_readme_table():
    """GIVEN the Settings model WHEN the README's configuration table is read
    THEN every field's variable (the router's, and the service's door limits) has a row, and no
    row names a variable that does not exist."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", table, re.MULTILINE))
    fields = {name.upper() for name in (*Settings.model_fields, *ServiceLimits.model_fields)}
    assert fields - documented == set()
    assert documented - fields == set()


def test_env_example_defines_every_project_variable():
    """GIVEN project.yml's ${VAR} templates WHEN .env.example is read THEN it defines each one
    (an unresolved variable fails `doctl serverless deploy`)."""
    wanted = set(re.findall(r"\$\{([A-Z_]+)\}", (ROOT / "project.yml").read_text()))
    example = (ROOT / ".env.example").read_text()
    defined = set(re.findall(r"^([A-Z_]+)=", example, re.MULTILINE))
    assert wanted - defined == set()
    assert wanted <= {name.upper() for name in Settings.model_fields}


def test_the_architecture_follows_one_request_in_under_ten_hops_that_exist():
    """GIVEN docs/architecture.md WHEN its path of one request is read THEN it has fewer than
    ten hops, and every file it names exists, with the class and function it names in it (the
    document is walked against the code, not only read)."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## One chat request through the `ask` function", 1)[1]
    section = section.split("\n## ", 1)[0]
    hops = re.findall(r"^\d+\. ", section, re.MULTILINE)
    assert 5 <= len(hops) < 10
    cited = re.findall(r"\*\*`([\w/.]+\.py)`\*\* `(\w+)(?:\.(\w+))?`", section)
    assert len(cited) >= 5
    for path, first, second in cited:
        source = (ROOT / path).read_text()
        if second:
            assert f"class {first}" in source, (path, first)
            assert f"def {second}(" in source, (path, second)
        else:
            assert f"def {first}(" in source or f"class {first}" in source, (path, first)
