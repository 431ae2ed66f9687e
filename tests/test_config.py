from __future__ import annotations

from pathlib import Path

import pytest

from notifier.config.env import credential_problems, require_credentials
from notifier.config.load import load_config, parse_config
from notifier.config.models import (
    AccountConfig,
    AkSkCredentialsConfig,
    Config,
    FileCredentialsConfig,
    IamCredentialsConfig,
    InstanceConfig,
    InstanceFilter,
    ProjectConfig,
)
from notifier.errors import ConfigError

ISSUE_EXAMPLE = """
cloud: {region: cn-north-4, endpoint: "http://127.0.0.1:8080", project_id: "p1", ak: "${CLOUD_SDK_AK}", sk: "${CLOUD_SDK_SK}"}
instances: [{id: "5560df16-cebf", name: orders-cache, labels: {env: prod}}]
poll: {interval: 30, baseline_grace: 900}
redis: {url: "redis://localhost:6379/0"}
channels:
  oncall: {type: slack, webhook_url: "${SLACK_WEBHOOK_URL}"}
  bot: {type: slack, token: "xoxb-123-secret", channel: "#ops"}
  audit:  {type: webhook, url: "https://audit.example.com/hook", secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", headers: {X-Team: db}}
rules:
  - {name: switchovers, tasks: [masterStandbySwapJob], events: [task.started, task.succeeded, task.failed], channels: [oncall, audit]}
  - {name: everything, tasks: ["*"], channels: [audit]}
"""


def aksk(cfg: Config) -> tuple[str, str]:
    creds = cfg.projects()[0].credentials
    assert isinstance(creds, AkSkCredentialsConfig) and creds.ak is not None and creds.sk is not None
    return creds.ak.get_secret_value(), creds.sk.get_secret_value()


ENV = {
    "CLOUD_SDK_AK": "AKEXAMPLE123",
    "CLOUD_SDK_SK": "SKEXAMPLEsecret456",
    "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/sekrit",
}


def test_issue_example_loads_as_written() -> None:
    cfg = parse_config(ISSUE_EXAMPLE, "config.yaml", ENV)
    assert cfg.projects()[0].endpoint == "http://127.0.0.1:8080"
    assert aksk(cfg) == ("AKEXAMPLE123", "SKEXAMPLEsecret456")
    assert cfg.instances[0].labels == {"env": "prod"}
    assert [r.name for r in cfg.rules] == ["switchovers", "everything"]
    assert cfg.poll.interval == 30 and cfg.poll.baseline_grace == 900
    secrets = cfg.secret_values()
    for s in (
        "AKEXAMPLE123",
        "SKEXAMPLEsecret456",
        "https://hooks.slack.com/services/T0/B0/sekrit",
        "xoxb-123-secret",
    ):
        assert s in secrets
    # No secret in the repr of the whole config.
    text = repr(cfg)
    assert "SKEXAMPLEsecret456" not in text and "sekrit" not in text and "xoxb-123-secret" not in text


def test_endpoint_defaults_from_region_and_credentials_from_env() -> None:
    text = (
        ISSUE_EXAMPLE.replace('endpoint: "http://127.0.0.1:8080", ', "")
        .replace('ak: "${CLOUD_SDK_AK}", sk: "${CLOUD_SDK_SK}"', "region: ap-southeast-1")
        .replace("region: cn-north-4, ", "")
    )
    cfg = parse_config(text, "c.yaml", ENV)
    assert cfg.projects()[0].endpoint == "https://dcs.ap-southeast-1.myhuaweicloud.com"
    assert aksk(cfg) == ("AKEXAMPLE123", "SKEXAMPLEsecret456")


def test_missing_env_var_names_file_and_key() -> None:
    env = {k: v for k, v in ENV.items() if k != "SLACK_WEBHOOK_URL"}
    with pytest.raises(ConfigError) as info:
        parse_config(ISSUE_EXAMPLE, "config.yaml", env)
    assert str(info.value) == (
        "config.yaml: 1 environment variable is not set (export, or write ${VAR:-default} in the file):\n"
        "  SLACK_WEBHOOK_URL: used at channels.oncall.webhook_url"
    )


def test_every_missing_env_var_is_reported_at_once() -> None:
    """Before: one per run (the first found), so a new user met them one at a time."""
    text = ISSUE_EXAMPLE.replace("xoxb-123-secret", "${SLACK_BOT_TOKEN}").replace(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "${SLACK_WEBHOOK_URL}"
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text, "config.yaml", {"CLOUD_SDK_AK": "AKEXAMPLE123"})
    assert str(info.value) == (
        "config.yaml: 3 environment variables are not set (export, or write ${VAR:-default} in the file):\n"
        "  CLOUD_SDK_SK: used at cloud.sk\n"
        "  SLACK_WEBHOOK_URL: used at channels.oncall.webhook_url, channels.audit.secret\n"
        "  SLACK_BOT_TOKEN: used at channels.bot.token"
    )


def test_default_in_interpolation() -> None:
    text = ISSUE_EXAMPLE.replace("redis://localhost:6379/0", "${REDIS_URL:-redis://127.0.0.1:7000/1}")
    assert parse_config(text, "c", ENV).redis.url.get_secret_value() == "redis://127.0.0.1:7000/1"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("interval: 30", "interval: -1"), r"poll\.interval: Input should be greater than 0"),
        (
            ("channels: [oncall, audit]", "channels: [oncall, nope]"),
            r"rules\.0\.channels: unknown channel 'nope'",
        ),
        (
            ("{type: slack, webhook_url", "{type: carrier-pigeon, webhook_url"),
            r"channels\.oncall\.type: unknown type 'carrier-pigeon' \(known: slack, webhook\)",
        ),
        (('project_id: "p1"', 'project_id: ""'), r"cloud\.project_id"),
        (("poll: {", "poll: {intervall: 3, "), r"unknown key `intervall` in poll; did you mean `interval`\?"),
        (("events: [task.started,", "events: [task.begun,"), r"rules\.0\.events\.0"),
    ],
)
def test_invalid_values_name_the_key(change: tuple[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_config(ISSUE_EXAMPLE.replace(*change), "config.yaml", ENV)
    assert str(info.value).startswith("config.yaml: invalid configuration")
    assert "SKEXAMPLEsecret456" not in str(info.value)


def test_broken_yaml_names_line(tmp_path: Path) -> None:
    p = tmp_path / "broken.yaml"
    p.write_text("cloud: {region: [\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: line \d+, column \d+: not valid YAML"):
        load_config(p, ENV)


def test_missing_file_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file not found .*DCS_NOTIFIER_CONFIG"):
        load_config(tmp_path / "nope.yaml", ENV)


def test_config_path_from_environment(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(ISSUE_EXAMPLE)
    cfg = load_config(None, {**ENV, "DCS_NOTIFIER_CONFIG": str(p)})
    assert cfg.projects()[0].project_id == "p1"


def test_missing_credentials_message() -> None:
    cfg = parse_config(
        ISSUE_EXAMPLE.replace('ak: "${CLOUD_SDK_AK}", sk: "${CLOUD_SDK_SK}"', "ak: AK1"),
        "c",
        {"SLACK_WEBHOOK_URL": ENV["SLACK_WEBHOOK_URL"]},
    )
    with pytest.raises(ConfigError, match=r"cloud\.sk: no credentials.*CLOUD_SDK_SK"):
        require_credentials(cfg)


# --- accounts and projects (the list form) -----------------------------------------------------------------

FLEET = """
cloud:
  - name: prod
    region: cn-north-4
    credentials: {type: iam, domain: acme, user: watcher, password: "${IAM_PASSWORD}", iam_endpoint: "https://iam.example.com/"}
    projects:
      - project_id: p-north
        labels: {env: prod}
        instances: [{id: i-orders, name: orders-cache, labels: {team: payments}}]
      - project_id: p-south
        region: cn-south-1
        discover: true
        filter: {names: ["orders-*"], exclude: ["*-tmp"], statuses: [RUNNING], tags: {team: "*"}}
        credentials: {path: /etc/dcs/south.json}
  - name: lab
    region: ap-southeast-1
    credentials: {ak: AKLAB0000000001, sk: "${LAB_SK}", security_token: "${LAB_TOKEN}"}
    projects:
      - project_id: p-lab
        endpoint: "http://127.0.0.1:8080/"
        instances: [{id: i-lab}]
api: {proxy: "http://squid:proxypass-77@proxy.example.com:3128", rate_limit: 10, min_rate: 1}
health: {after: 120, channels: [ops]}
channels:
  ops: {type: webhook, url: "https://hooks.example.com/ops"}
  audit: {type: webhook, url: "https://hooks.example.com/audit"}
"""
FLEET_ENV = {
    "IAM_PASSWORD": "iam-Passw0rd-secret",
    "LAB_SK": "lab-sk-secret-value",
    "LAB_TOKEN": "lab-sts-token-secret",
}
FLEET_SECRETS = ("iam-Passw0rd-secret", "lab-sk-secret-value", "lab-sts-token-secret", "proxypass-77")


def fleet(text: str = FLEET, env: dict[str, str] | None = None) -> Config:
    return parse_config(text, "fleet.yaml", FLEET_ENV if env is None else env)


def config_error(text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        fleet(text, env)
    return str(info.value)


def one_problem(line: str) -> str:
    return f"fleet.yaml: invalid configuration (1 problem):\n  {line}"


def test_fleet_projects_resolve_region_endpoint_credentials_and_labels() -> None:
    cfg = fleet()
    north, south, lab = cfg.projects()
    assert [(s.account, s.region, s.project_id, s.endpoint, s.where) for s in (north, south, lab)] == [
        ("prod", "cn-north-4", "p-north", "https://dcs.cn-north-4.myhuaweicloud.com", "cloud.0.projects.0"),
        ("prod", "cn-south-1", "p-south", "https://dcs.cn-south-1.myhuaweicloud.com", "cloud.0.projects.1"),
        ("lab", "ap-southeast-1", "p-lab", "http://127.0.0.1:8080", "cloud.1.projects.0"),
    ]
    assert [s.host for s in (north, south, lab)] == [
        "dcs.cn-north-4.myhuaweicloud.com",
        "dcs.cn-south-1.myhuaweicloud.com",
        "127.0.0.1:8080",
    ]
    # type: iam given; {path} inferred as file (a per-project override); {ak, sk, security_token} as aksk.
    assert isinstance(north.credentials, IamCredentialsConfig)
    assert north.credentials.domain == "acme" and north.credentials.user == "watcher"
    assert north.credentials.password.get_secret_value() == "iam-Passw0rd-secret"
    assert north.credentials.iam_endpoint == "https://iam.example.com"
    assert north.credentials.endpoint_for("cn-north-4") == "https://iam.example.com"
    assert south.credentials == FileCredentialsConfig(path=Path("/etc/dcs/south.json"))
    assert isinstance(lab.credentials, AkSkCredentialsConfig)
    assert lab.credentials.ak is not None and lab.credentials.ak.get_secret_value() == "AKLAB0000000001"
    assert lab.credentials.sk is not None and lab.credentials.sk.get_secret_value() == "lab-sk-secret-value"
    token = lab.credentials.security_token
    assert token is not None and token.get_secret_value() == "lab-sts-token-secret"
    # Project labels; discovery and filter settings as written.
    assert north.labels == {"env": "prod"} and south.labels == {} and lab.labels == {}
    assert (north.discover, south.discover, lab.discover) == (False, True, False)
    assert south.filter == InstanceFilter(
        names=["orders-*"], exclude=["*-tmp"], statuses=["RUNNING"], tags={"team": "*"}
    )
    assert north.filter == InstanceFilter()
    assert north.instances == (
        InstanceConfig(id="i-orders", name="orders-cache", labels={"team": "payments"}),
    )
    assert lab.instances[0].name == "i-lab"  # the name defaults to the id
    assert [i.id for i in cfg.instances] == ["i-orders", "i-lab"]
    assert cfg.health.after == 120 and cfg.health.channels == ["ops"]
    assert (cfg.api.rate_limit, cfg.api.min_rate) == (10, 1)


def test_iam_endpoint_defaults_to_the_project_region() -> None:
    cfg = fleet(FLEET.replace(', iam_endpoint: "https://iam.example.com/"', ""))
    north, *_ = cfg.projects()
    assert isinstance(north.credentials, IamCredentialsConfig) and north.credentials.iam_endpoint is None
    assert north.credentials.endpoint_for(north.region) == "https://iam.cn-north-4.myhuaweicloud.com"
    assert north.credentials.endpoint_for("cn-south-1") == "https://iam.cn-south-1.myhuaweicloud.com"


@pytest.mark.parametrize(
    ("credentials", "expected"),
    [
        ({"path": "/run/creds.csv"}, FileCredentialsConfig),
        ({"ak": "A", "sk": "B"}, AkSkCredentialsConfig),
        ({"security_token": "T"}, AkSkCredentialsConfig),
        ({}, AkSkCredentialsConfig),
        ({"domain": "d", "user": "u", "password": "p"}, IamCredentialsConfig),
        ({"type": "file", "path": "/x"}, FileCredentialsConfig),
    ],
)
def test_credentials_type_is_inferred_from_the_keys(credentials: dict[str, str], expected: type) -> None:
    account = AccountConfig.model_validate(
        {"credentials": credentials, "projects": [{"project_id": "p", "discover": True}]}
    )
    assert type(account.credentials) is expected
    project = ProjectConfig.model_validate({"project_id": "p", "discover": True, "credentials": credentials})
    assert type(project.credentials) is expected


def test_account_defaults() -> None:
    account = AccountConfig.model_validate({"projects": [{"project_id": "p", "discover": True}]})
    assert account.name == "default" and account.region == "cn-north-4"
    assert account.credentials == AkSkCredentialsConfig()


def test_cloud_as_one_mapping_with_projects() -> None:
    text = """
cloud:
  name: solo
  region: eu-west-101
  credentials: {ak: AK1, sk: SK1}
  projects: [{project_id: p1, discover: true}]
channels: {ops: {type: webhook, url: "https://hooks.example.com/ops"}}
"""
    cfg = fleet(text, {})
    [spec] = cfg.projects()
    assert (spec.account, spec.region, spec.endpoint, spec.where) == (
        "solo",
        "eu-west-101",
        "https://dcs.eu-west-101.myhuaweicloud.com",
        "cloud.projects.0",  # as written: cloud is the one account
    )
    assert aksk(cfg) == ("AK1", "SK1")


@pytest.mark.parametrize(
    ("change", "line"),
    [
        (
            ("project_id: p-south", 'project_id: ""'),
            "cloud.0.projects.1.project_id: String should have at least 1 character",
        ),
        (
            ("project_id: p-lab", "project_id: p-north"),
            "cloud.1.projects.0.project_id: project p-north is already listed at cloud.0.projects.0",
        ),
        (("name: lab", "name: prod"), "cloud: duplicate account name prod (give each a name)"),
        (("- name: lab\n    region", "- region"), None),  # "default" + "prod": fine
        (
            ("        discover: true\n", ""),
            "cloud.0.projects.1: nothing to watch: list instances, or set discover: true",
        ),
        (
            ("channels: [ops]", "channels: [ops, pager]"),
            "health.channels: unknown channel 'pager' (known: audit, ops)",
        ),
        (("min_rate: 1", "min_rate: 11"), "api: min_rate must not exceed rate_limit"),
        (
            ('"https://iam.example.com/"', "iam.example.com"),
            "cloud.0.credentials.iam_endpoint: must be an http:// or https:// URL, "
            "e.g. https://iam.cn-north-4.myhuaweicloud.com",
        ),
        (
            ('"http://127.0.0.1:8080/"', "127.0.0.1:8080"),
            "cloud.1.projects.0.endpoint: must be an http:// or https:// URL, "
            "e.g. https://dcs.cn-north-4.myhuaweicloud.com",
        ),
        (
            ("{path: /etc/dcs/south.json}", "{type: file}"),
            "cloud.0.projects.1.credentials.path: Field required",
        ),
        (
            ("[{id: i-lab}]", "[{id: i-lab}, {id: i-lab}]"),
            "cloud.1.projects.0.instances: duplicate id i-lab",
        ),
        (("name: lab", "name: lab/2"), "cloud.1.name: String should match pattern '^[A-Za-z0-9_.-]+$'"),
        (
            ("region: cn-south-1", "regio: cn-south-1"),
            "unknown key `regio` in cloud.0.projects.1; did you mean `region`?",
        ),
    ],
)
def test_fleet_errors_name_the_key(change: tuple[str, str], line: str | None) -> None:
    text = FLEET.replace(*change)
    assert text != FLEET
    if line is None:
        fleet(text)
        return
    assert config_error(text) == one_problem(line)


def test_fleet_duplicate_default_account_names() -> None:
    text = FLEET.replace("- name: prod\n    region", "- region").replace(
        "- name: lab\n    region", "- region"
    )
    assert config_error(text) == one_problem("cloud: duplicate account name default (give each a name)")


def test_top_level_instances_with_the_list_form() -> None:
    message = config_error(FLEET + "instances: [{id: i-x}]\n")
    assert message == one_problem(
        "instances: with accounts and projects in cloud, list instances under "
        "cloud.N.projects.N.instances (or use discover: true)"
    )


def test_fleet_errors_carry_no_secret() -> None:
    message = config_error(FLEET.replace("min_rate: 1", "min_rate: 11").replace("after: 120", "after: 0"))
    assert "api: min_rate must not exceed rate_limit" in message
    assert "health.after: Input should be greater than 0" in message
    for secret in FLEET_SECRETS:
        assert secret not in message


# --- the single-project form keeps its own key names ------------------------------------------------------

SINGLE = """
cloud: {region: cn-north-4, project_id: p1, ak: AK1, sk: SK1}
instances: [{id: i1}]
channels: {ops: {type: webhook, url: "https://hooks.example.com/ops"}}
"""


def test_single_project_form_becomes_one_account() -> None:
    cfg = fleet(SINGLE.replace("cn-north-4, ", "cn-north-4, timeout: 7, page_size: 50, "), {})
    [account] = cfg.cloud
    assert account.name == "default" and account.region == "cn-north-4"
    [spec] = cfg.projects()
    assert (spec.project_id, spec.endpoint, spec.where) == (
        "p1",
        "https://dcs.cn-north-4.myhuaweicloud.com",
        "cloud",
    )
    assert aksk(cfg) == ("AK1", "SK1")
    assert (cfg.api.timeout, cfg.api.page_size) == (7, 50)


@pytest.mark.parametrize(
    ("change", "line"),
    [
        (("project_id: p1, ", ""), "cloud.project_id: Field required"),
        (("project_id: p1", 'project_id: ""'), "cloud.project_id: String should have at least 1 character"),
        (("ak: AK1", "ak: 5"), "cloud.ak: Input should be a valid string"),
        (("sk: SK1", "sk: [x]"), "cloud.sk: Input should be a valid string"),
        (("[{id: i1}]", "[{name: x}]"), "instances.0.id: Field required"),
        (("[{id: i1}]", "[{id: i1, nmae: x}]"), "unknown key `nmae` in instances.0; did you mean `name`?"),
        (
            ("instances: [{id: i1}]", "instances: []"),
            "cloud: nothing to watch: list instances, or set discover: true",
        ),
        (("cn-north-4, ", "cn-north-4, timeout: 0, "), "cloud.timeout: Input should be greater than 0"),
        (
            ("cn-north-4, ", "cn-north-4, page_size: 0, "),
            "cloud.page_size: Input should be greater than or equal to 1",
        ),
        (("region: cn-north-4", 'region: ""'), "cloud.region: String should have at least 1 character"),
        (
            ("project_id: p1", "project_id: p1, endpoint: dcs.local"),
            "cloud.endpoint: must be an http:// or https:// URL, e.g. https://dcs.cn-north-4.myhuaweicloud.com",
        ),
        (
            ("sk: SK1", "sk: SK1, colour: blue"),
            "unknown key `colour` in cloud (known: ak, ces_endpoint, credentials, discover, endpoint, filter, "
            "max_concurrency, name, page_size, project_id, region, security_token, sk, timeout)",
        ),
        (
            ("sk: SK1", "sk: SK1, projectid: p2"),
            "unknown key `projectid` in cloud; did you mean `project_id`?",
        ),
        (("sk: SK1", "sk: SK1, credentials: {}"), "cloud.credentials: also given as cloud.ak/sk: keep one"),
    ],
)
def test_single_project_form_errors_keep_its_key_names(change: tuple[str, str], line: str) -> None:
    text = SINGLE.replace(*change)
    assert text != SINGLE
    assert config_error(text, {}) == one_problem(line)


def test_single_project_form_duplicate_instances_name_top_level_instances() -> None:
    text = SINGLE.replace("[{id: i1}]", "[{id: i1}, {id: i1}]")
    assert config_error(text, {}) == one_problem("instances: duplicate id i1")


def test_single_project_form_api_section_errors_keep_api_key() -> None:
    text = SINGLE + "api: {timeout: 0}\n"
    assert config_error(text, {}) == one_problem("api.timeout: Input should be greater than 0")


def test_an_unknown_top_level_key_lists_the_known_ones() -> None:
    message = config_error(FLEET + "single_project_form: true\n")
    assert message == one_problem(
        "unknown key `single_project_form` at the top level (known: api, channels, cloud, cloud_eye, "
        "delivery, digest, discovery, health, http, instances, logging, poll, redis, rules, scaling, "
        "time_intervals, watchdog)"
    )


# --- credentials from the environment, missing credentials, secrets --------------------------------------

ENV_FLEET = """
cloud:
  - name: a
    projects:
      - {project_id: p1, discover: true}
      - {project_id: p2, discover: true, credentials: {ak: AKOWN}}
      - {project_id: p3, discover: true, credentials: {security_token: "sts-token-0001"}}
      - {project_id: p4, discover: true, credentials: {ak: AKP4, sk: SKP4}}
  - name: b
    credentials: {domain: acme, user: u, password: iam-pass-0001}
    projects:
      - {project_id: p5, discover: true}
      - {project_id: p6, discover: true, credentials: {}}
channels: {ops: {type: webhook, url: "https://hooks.example.com/ops"}}
"""


def plain(c: object) -> tuple[str | None, str | None, str | None] | str:
    if not isinstance(c, AkSkCredentialsConfig):
        return type(c).__name__
    return tuple(s.get_secret_value() if s else None for s in (c.ak, c.sk, c.security_token))  # type: ignore[return-value]


def test_env_credentials_fill_every_aksk_entry_that_leaves_them_out() -> None:
    cfg = fleet(ENV_FLEET, {"CLOUD_SDK_AK": "AKENV", "CLOUD_SDK_SK": "SKENV"})
    assert [(s.project_id, plain(s.credentials)) for s in cfg.projects()] == [
        ("p1", ("AKENV", "SKENV", None)),
        ("p2", ("AKOWN", "SKENV", None)),
        ("p3", ("AKENV", "SKENV", "sts-token-0001")),
        ("p4", ("AKP4", "SKP4", None)),
        ("p5", "IamCredentialsConfig"),
        ("p6", ("AKENV", "SKENV", None)),
    ]
    assert credential_problems(cfg) == []
    require_credentials(cfg)


HINT = "set them in the config or the environment variables CLOUD_SDK_AK/CLOUD_SDK_SK"


def test_credential_problems_name_the_account() -> None:
    cfg = fleet(ENV_FLEET, {})
    problems = credential_problems(cfg)
    assert problems[0] == f"cloud.0.credentials.ak/sk: no credentials for project p1; {HINT}"
    assert [p.split(": ")[1] for p in problems] == [
        f"no credentials for project {p}; {HINT}" for p in ("p1", "p2", "p3", "p6")
    ]
    with pytest.raises(ConfigError) as info:
        require_credentials(cfg)
    assert str(info.value).splitlines()[:2] == [
        "fleet.yaml: invalid configuration (4 problems):",
        f"  cloud.0.credentials.ak/sk: no credentials for project p1; {HINT}",
    ]


def test_credential_problems_name_a_project_override() -> None:
    cfg = fleet(ENV_FLEET, {})
    assert credential_problems(cfg) == [
        f"cloud.0.credentials.ak/sk: no credentials for project p1; {HINT}",
        f"cloud.0.projects.1.credentials.sk: no credentials for project p2; {HINT}",
        f"cloud.0.projects.2.credentials.ak/sk: no credentials for project p3; {HINT}",
        f"cloud.1.projects.1.credentials.ak/sk: no credentials for project p6; {HINT}",
    ]


def test_credential_problems_account_level() -> None:
    text = (
        ENV_FLEET.split("      - {project_id: p2")[0]
        + '      - {project_id: p9, discover: true}\nchannels: {ops: {type: webhook, url: "https://h.example.com/x"}}\n'
    )
    cfg = fleet(text.replace("name: a\n", "name: a\n    credentials: {ak: AKA}\n"), {})
    assert credential_problems(cfg) == [
        f"cloud.0.credentials.sk: no credentials for project p1; {HINT}",
        f"cloud.0.credentials.sk: no credentials for project p9; {HINT}",
    ]


def test_credential_problems_single_project_form() -> None:
    cfg = fleet(SINGLE.replace("ak: AK1, sk: SK1", "ak: AK1"), {})
    assert credential_problems(cfg) == [
        "cloud.sk: no credentials for project p1; set them in the config or the environment variables "
        "CLOUD_SDK_AK/CLOUD_SDK_SK"
    ]


def test_secret_values_and_repr() -> None:
    cfg = fleet()
    secrets = cfg.secret_values()
    for secret in (*FLEET_SECRETS[:3], "http://squid:proxypass-77@proxy.example.com:3128", "AKLAB0000000001"):
        assert secret in secrets
    assert "https://hooks.example.com/ops" in secrets  # webhook URLs are secrets too
    text = repr(cfg)
    for secret in FLEET_SECRETS:
        assert secret not in text
    assert "proxy.example.com" not in text
    for spec in cfg.projects():
        for secret in FLEET_SECRETS:
            assert secret not in repr(spec)


def test_one_account_as_a_mapping_keeps_its_key_names_in_errors() -> None:
    text = """
cloud: {credentials: {ak: A, sk: B}, projects: [{project_id: p1, instances: [{id: ""}]}]}
channels: {audit: {type: webhook, url: "https://audit.example.com/h"}}
"""
    with pytest.raises(
        ConfigError, match=r"cloud\.projects\.0\.instances\.0\.id: String should have at least"
    ):
        parse_config(text, "c", {})


def test_single_project_form_setting_a_key_twice_is_an_error() -> None:
    text = ISSUE_EXAMPLE.replace("cloud: {", "api: {timeout: 5}\ncloud: {timeout: 20, ")
    with pytest.raises(ConfigError, match=r"cloud\.timeout and api\.timeout are both set"):
        parse_config(text, "c", ENV)


def test_account_level_discovery_defaults_apply_to_its_projects() -> None:
    text = """
cloud:
  - name: fleet
    credentials: {ak: A, sk: B}
    discover: true
    filter: {tags: {env: prod}}
    projects:
      - {project_id: p1}
      - {project_id: p2, filter: {names: ["orders-*"]}}
      - {project_id: p3, discover: false, instances: [{id: i3}]}
channels: {audit: {type: webhook, url: "https://audit.example.com/h"}}
"""
    p1, p2, p3 = parse_config(text, "c", {}).projects()
    assert (p1.discover, p1.filter.tags) == (True, {"env": "prod"})
    assert (p2.discover, p2.filter.names, p2.filter.tags) == (True, ["orders-*"], {})
    assert (p3.discover, [i.id for i in p3.instances]) == (False, ["i3"])
    with pytest.raises(ConfigError, match=r"cloud\.0\.projects\.0: nothing to watch"):
        parse_config(text.replace("discover: true", "discover: false"), "c", {})


def test_an_empty_environment_variable_is_no_credential() -> None:
    cfg = fleet(SINGLE.replace(", ak: AK1, sk: SK1", ""), {"CLOUD_SDK_AK": "AKENV", "CLOUD_SDK_SK": ""})
    assert credential_problems(cfg) == [f"cloud.sk: no credentials for project p1; {HINT}"]
