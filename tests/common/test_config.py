"""The one config object (pure): precedence, environment names, validation, secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from narrator.common.config import (
    NarratorConfig,
    env_overrides,
    format_episode_ranges,
    load_config,
    normalize_base_url,
    parse_episode_ranges,
)
from narrator.common.errors import ConfigError


def test_defaults() -> None:
    config = load_config(env={})
    assert config.annotation.modules == ("plan", "interjections", "vqa")
    assert config.jobs_per_worker == 16 and config.workers == 2
    assert config.failed_items_threshold == 0.05 and config.allow_failed_items is False
    assert config.redis_url_value() is None and config.vlm.urls == ()


def test_precedence_defaults_yaml_env_cli(tmp_path: Path) -> None:
    yaml_path = tmp_path / "narrator.yaml"
    yaml_path.write_text("workers: 3\njob_retries: 7\nvlm:\n  timeout_s: 30\n")
    env = {"NARRATOR_WORKERS": "4", "NARRATOR_VLM__TIMEOUT_S": "40"}
    config = load_config({"workers": 5, "job_retries": None}, env=env, yaml_path=yaml_path)
    assert config.workers == 5  # the flag wins
    assert config.vlm.timeout_s == 40  # env over YAML
    assert config.job_retries == 7  # YAML over the default; a None flag is "not given"


def test_environment_names() -> None:
    env = {
        "NARRATOR_REDIS_URL": "redis://h:6379/0",
        "NARRATOR_VLM_URLS": "http://a:8000, http://b:8000/",
        "NARRATOR_MODEL": "m",
        "NARRATOR_ANNOTATION__MODULES": "plan,vqa",
        "NARRATOR_ANNOTATION__VQA__VQA_HZ": "2",
        "NARRATOR_UNRELATED": "ignored",
        "OTHER": "ignored",
        "NARRATOR_JOB_TIMEOUT_S": "",  # empty: not given
    }
    overrides = env_overrides(env)
    assert "unrelated" not in overrides and "job_timeout_s" not in overrides
    config = load_config(env=env)
    assert config.redis_url_value() == "redis://h:6379/0"
    assert config.vlm.urls == ("http://a:8000", "http://b:8000")
    assert config.vlm.model == "m"
    assert config.annotation.modules == ("plan", "vqa")
    assert config.annotation.vqa.vqa_hz == 2.0


def test_every_problem_is_listed_in_one_error() -> None:
    with pytest.raises(ConfigError) as err:
        load_config({"workers": 0, "annotation": {"vqa": {"vqa_hz": -1}}}, env={})
    message = str(err.value)
    assert "workers" in message and "annotation.vqa.vqa_hz" in message


@pytest.mark.parametrize(
    ("cli", "fragment"),
    [
        ({"failed_items_threshold": 1.5}, "failed_items_threshold"),
        ({"annotation": {"modules": ["interjections"]}}, "needs the plan module"),
        ({"annotation": {"vqa": {"question_types": ["colour"]}}}, "question types"),
        ({"no_such_field": 1}, "no_such_field"),
    ],
)
def test_invalid_values_are_refused(cli: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_config(cli, env={})


def test_yaml_problems_are_config_errors(tmp_path: Path) -> None:
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping at top level"):
        load_config(env={}, yaml_path=listing)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(env={}, yaml_path=tmp_path / "missing.yaml")


def test_secrets_never_appear_in_repr() -> None:
    config = load_config(
        {"redis_url": "redis://:hunter2@h:6379/0", "vlm": {"api_key": "sk-secret"}}, env={}
    )
    shown = repr(config) + str(config.model_dump())
    assert "hunter2" not in shown and "sk-secret" not in shown
    assert config.redis_url_value() == "redis://:hunter2@h:6379/0"
    assert isinstance(config, NarratorConfig)


def test_only_episodes_takes_indices_and_ranges_in_every_spelling(tmp_path: Path) -> None:
    flags = load_config({"only_episodes": ["10-20", "7", "3", "8"]}, env={})
    assert flags.only_episodes == ("3", "7-8", "10-20")  # one canonical spelling
    assert flags.episode_selection() == frozenset({3, 7, 8, *range(10, 21)})
    env = load_config(env={"NARRATOR_ONLY_EPISODES": "7,3,8,10-20"})
    yaml_path = tmp_path / "n.yaml"
    yaml_path.write_text("only_episodes: [3, 7, 8, '10-20']\n")
    assert env.only_episodes == flags.only_episodes
    assert load_config(env={}, yaml_path=yaml_path).only_episodes == flags.only_episodes
    assert load_config(env={}).episode_selection() is None  # every episode


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        (["3", "x"], "'x' is not an episode index or range"),
        (["9-4"], "'9-4' is not a range"),
        (["-2"], "is not an episode index or range"),
        (["1.5"], "is not an episode index or range"),
    ],
)
def test_bad_episode_selections_name_the_flag(spec: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({"only_episodes": spec}, env={})
    assert "--only-episodes / NARRATOR_ONLY_EPISODES" in str(caught.value)
    assert fragment in str(caught.value)


@pytest.mark.parametrize("repo", ["nameonly", "a/b/c", "/x", "user/ name"])
def test_hub_repo_ids_are_user_slash_name(repo: str) -> None:
    with pytest.raises(ConfigError, match="write it as USER/NAME"):
        load_config({"hub": {"repo_id": repo}}, env={})
    assert load_config({"hub": {"repo_id": " lerobot/pusht "}}, env={}).hub.repo_id == (
        "lerobot/pusht"
    )


# --- the pure helpers and validators of common/config.py, on their own ---------------------


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("http://h:8000", "http://h:8000"),
        ("http://h:8000/", "http://h:8000"),
        ("http://h:8000/v1", "http://h:8000"),
        (" https://h:8000/v1/ ", "https://h:8000"),
        ("http://proxy/vlm/v1", "http://proxy/vlm"),  # a reverse proxy's prefix is kept
        ("http://proxy/vlm/", "http://proxy/vlm"),
    ],
)
def test_a_replica_url_has_one_spelling(url: str, base: str) -> None:
    assert normalize_base_url(url) == base
    assert normalize_base_url(base) == base  # idempotent


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("h:8000", "must look like http://host:port/v1"),
        ("ftp://h/v1", "must look like http://host:port/v1"),
        ("http://h:port/v1", "is not a valid URL"),
        ("http://h:8000/v1?x=1", "must not have a query or fragment"),
        ("http://h:8000/v1#top", "must not have a query or fragment"),
    ],
)
def test_a_replica_url_that_is_not_one_is_refused(url: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        normalize_base_url(url)


def test_episode_ranges_parse_to_sorted_indices_and_format_back_merged() -> None:
    assert parse_episode_ranges(["10-12", " 3", "4", "3", "11"]) == [3, 4, 10, 11, 12]
    assert parse_episode_ranges(["0-0"]) == [0]
    assert format_episode_ranges([12, 3, 4, 5, 7, 7, 10, 11]) == ("3-5", "7", "10-12")
    assert format_episode_ranges([]) == ()
    for parts in (["0"], ["1", "3", "5"], ["2-9", "11", "20-21"]):
        indices = parse_episode_ranges(parts)
        assert parse_episode_ranges(list(format_episode_ranges(indices))) == indices


@pytest.mark.parametrize(
    ("parts", "fragment"),
    [([], "name at least one episode"), (["0-10000000"], "more than 10 million")],
)
def test_episode_ranges_that_name_nothing_or_too_much_are_refused(
    parts: list[str], fragment: str
) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_episode_ranges(parts)


@pytest.mark.parametrize(
    ("cli", "fragment"),
    [
        ({"redis_url": "http://h:6379"}, "must start with redis://, rediss:// or unix://"),
        ({"redis_url": "redis://h:notaport/0"}, "not a URL Redis understands"),
        ({"redis_url": "redis://h:0/0"}, "the port must be 1-65535"),
        ({"jobs_per_worker": 8, "max_jobs_per_worker": 4}, "must be at least jobs_per_worker"),
        ({"log_level": "loud"}, "use one of debug, info, warning, error"),
        ({"annotation": {"modules": []}}, "give at least one module"),
        ({"annotation": {"modules": ["vqa", "vqa"]}}, "name one module twice"),
        ({"annotation": {"modules": ["motion"]}}, "unknown modules"),
    ],
)
def test_each_validator_refuses_what_it_guards(cli: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_config(cli, env={})


def test_what_the_validators_accept() -> None:
    config = load_config(
        {
            "redis_url": "unix:///run/redis.sock",
            "jobs_per_worker": 4,
            "max_jobs_per_worker": 4,
            "log_level": " WARNING ",
            "annotation": {"modules": ["vqa"]},
        },
        env={},
    )
    assert config.redis_url_value() == "unix:///run/redis.sock"
    assert config.max_jobs_per_worker == config.jobs_per_worker == 4
    assert config.log_level == "warning"
    assert config.annotation.modules == ("vqa",)
    assert load_config({"redis_url": "rediss://h:6380/1"}, env={}).redis_url_value() == (
        "rediss://h:6380/1"
    )
