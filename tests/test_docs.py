"""The configuration examples in the README and config.example.yaml load as written."""

from __future__ import annotations

import re
from pathlib import Path

from notifier.config.models import FileCredentials, IamCredentials, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent
ENV = {
    "CLOUD_SDK_AK": "AKEXAMPLE",
    "CLOUD_SDK_SK": "SKEXAMPLE",
    "PROD_AK": "AKPROD",
    "PROD_SK": "SKPROD",
    "OTHER_AK": "AKOTHER",
    "OTHER_SK": "SKOTHER",
    "IAM_PASSWORD": "pw-EXAMPLE",
    "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/x",
    "AUDIT_WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
}


def yaml_blocks(text: str) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", text, flags=re.S)


def test_readme_fleet_example_loads() -> None:
    [fleet] = [b for b in yaml_blocks((ROOT / "README.md").read_text()) if "discover: true" in b]
    config = parse_config(
        fleet + 'channels: {ops: {type: webhook, url: "https://ops.example.com/h"}}\n', "README", ENV
    )
    specs = config.projects()
    assert [s.account for s in specs] == ["prod", "prod", "staging", "audit"]
    assert specs[1].endpoint == "https://dcs.ap-southeast-1.myhuaweicloud.com"
    assert specs[0].filter.tags == {"env": "prod", "team": "*"}
    assert isinstance(specs[2].credentials, FileCredentials)
    assert not isinstance(specs[3].credentials, IamCredentials)  # the project's own AK/SK win
    assert isinstance(config.cloud[2].credentials, IamCredentials)


def test_readme_single_project_example_loads() -> None:
    [single] = [
        b for b in yaml_blocks((ROOT / "README.md").read_text()) if "project_id:" in b and "discover" not in b
    ]
    single = single.replace('"whsec_..."', '"${AUDIT_WEBHOOK_SECRET}"')  # the README leaves the secret out
    config = parse_config(single, "README", ENV)
    assert [i.name for i in config.instances] == ["orders-cache"]


def test_config_example_loads() -> None:
    config = load_config(ROOT / "config.example.yaml", ENV)
    assert config.projects()
