"""The config surface is derived from the config model: every field has a flag (or a stated
reason why not), an env name and a description; the names the docs use keep working; the
child environment of the one-machine runner round-trips the parent's whole config."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from narrator.cli.main import build_parser
from narrator.cli.options import cli_overrides, config_from_args
from narrator.common.config import NarratorConfig, child_env, config_settings, load_config
from narrator.common.config_surface import (
    CONFIG_COMMANDS,
    Setting,
    format_value,
    set_path,
    settings_of,
    value_at,
)
from narrator.common.errors import ConfigError
from narrator.local.run import child_env as runner_child_env

# Flags and variables that README, docs/DEPLOY.md and deploy/ name: they must keep working.
DOCUMENTED_FLAGS = {
    "--redis-url": ("redis_url",),
    "--vlm-url": ("vlm", "urls"),
    "--model": ("vlm", "model"),
    "--vlm-timeout-s": ("vlm", "timeout_s"),
    "--max-in-flight-per-replica": ("vlm", "max_in_flight_per_replica"),
    "--log-level": ("log_level",),
    "--log-format": ("log_format",),
    "--modules": ("annotation", "modules"),
    "--seed": ("annotation", "seed"),
    "--prompt-dir": ("prompt_dir",),
    "--vqa-hz": ("annotation", "vqa", "vqa_hz"),
    "--max-interjections": ("annotation", "interjections", "max_interjections"),
    "--interjection-min-s": ("annotation", "interjections", "interjection_min_s"),
    "--max-subtasks": ("annotation", "plan", "max_subtasks"),
    "--min-subtask-seconds": ("annotation", "plan", "min_subtask_seconds"),
    "--task-aug-count": ("annotation", "plan", "task_aug_count"),
    "--max-pixels": ("annotation", "frames", "max_pixels"),
    "--jpeg-quality": ("annotation", "frames", "jpeg_quality"),
    "--chat-template-kwargs": ("annotation", "chat_template_kwargs"),
    "--job-timeout-s": ("job_timeout_s",),
    "--state-dir": ("state_dir",),
    "--workers": ("workers",),
    "--jobs-per-worker": ("jobs_per_worker",),
    "--metrics-port": ("metrics_port",),
}
DOCUMENTED_ENV = {
    "NARRATOR_REDIS_URL": ("redis_url",),
    "NARRATOR_VLM_URLS": ("vlm", "urls"),
    "NARRATOR_MODEL": ("vlm", "model"),
    "NARRATOR_VLM_API_KEY": ("vlm", "api_key"),
    "NARRATOR_WORKERS": ("workers",),
    "NARRATOR_JOBS_PER_WORKER": ("jobs_per_worker",),
    "NARRATOR_JOB_TIMEOUT_S": ("job_timeout_s",),
    "NARRATOR_PROMPT_DIR": ("prompt_dir",),
    "NARRATOR_STATE_DIR": ("state_dir",),
    "NARRATOR_STAGING_DIR": ("staging_dir",),
    "NARRATOR_METRICS_PORT": ("metrics_port",),
    "NARRATOR_LOG_LEVEL": ("log_level",),
    "NARRATOR_LOG_FORMAT": ("log_format",),
    "NARRATOR_VLM__MAX_IN_FLIGHT_PER_REPLICA": ("vlm", "max_in_flight_per_replica"),
    "NARRATOR_ANNOTATION__VQA__VQA_HZ": ("annotation", "vqa", "vqa_hz"),
}
# Which subcommand took which documented flag before the surface was derived.
FLAGS_OF_COMMAND = {
    "annotate": {"--vlm-url", "--model", "--modules", "--vqa-hz", "--state-dir", "--workers",
                 "--jobs-per-worker", "--redis-url", "--chat-template-kwargs"},
    "enqueue": {"--vlm-url", "--model", "--modules", "--redis-url", "--state-dir"},
    "worker": {"--vlm-url", "--workers", "--jobs-per-worker", "--metrics-port", "--redis-url"},
    "writer": {"--redis-url", "--metrics-port", "--log-level"},
    "status": {"--redis-url", "--log-format"},
    "retry-failed": {"--redis-url", "--log-level"},
}  # fmt: skip

# Values for fields whose automatic non-default value would not be valid.
SPECIAL_VALUES: dict[tuple[str, ...], Any] = {
    ("redis_url",): "redis://user:pw@redis-host:6380/2",
    ("vlm", "urls"): ["http://a:8000/v1", "http://b:8001"],
    ("annotation", "modules"): ["plan", "vqa"],
    ("annotation", "vqa", "question_types"): ["bbox", "count"],
    ("log_level",): "debug",
    ("log_format",): "json",
    ("only_episodes",): ["3-5", "7"],
    ("hub", "repo_id"): "someone/dataset",
    ("hub", "push_repo_id"): "someone/dataset-annotated",
}


def _settings_by_path() -> dict[tuple[str, ...], Setting]:
    return {s.path: s for s in config_settings()}


def test_every_field_has_a_description_an_env_name_and_a_flag_or_a_reason() -> None:
    settings = config_settings()
    leaves = _leaf_paths(NarratorConfig)
    assert {s.path for s in settings} == leaves  # no field is left out of the surface
    for s in settings:
        assert s.description.strip(), f"{s.dotted} has no description= (it is the help text)"
        assert s.env.startswith("NARRATOR_"), s
        assert s.flag is not None or s.no_flag, f"{s.dotted}: give it a flag or say why not"
        assert s.commands <= set(CONFIG_COMMANDS), s
        assert s.commands, f"{s.dotted} reaches no subcommand"
        help_text = s.help()
        assert "default:" in help_text and s.env in help_text
    flags = [n for s in settings for n in (s.flag, *s.flag_aliases) if n]
    envs = [n for s in settings for n in s.env_names]
    assert len(flags) == len(set(flags)) and len(envs) == len(set(envs))


def _leaf_paths(model: type[Any], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    out: set[tuple[str, ...]] = set()
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
            out |= _leaf_paths(annotation, (*prefix, name))
        else:
            out.add((*prefix, name))
    return out


def test_a_duplicate_flag_is_refused_when_the_surface_is_derived() -> None:
    from typing import Annotated

    from pydantic import BaseModel, Field

    from narrator.common.config_surface import Surface

    class Clash(BaseModel):
        a: int = Field(default=1, description="a")
        b: Annotated[int, Surface(flag="--a")] = Field(default=2, description="b")

    with pytest.raises(TypeError, match="--a names both a and b"):
        settings_of(Clash)


def test_documented_flags_and_variables_still_reach_their_fields() -> None:
    by_path = _settings_by_path()
    for flag, path in DOCUMENTED_FLAGS.items():
        assert by_path[path].flag == flag or flag in by_path[path].flag_aliases, flag
    for name, path in DOCUMENTED_ENV.items():
        assert name in by_path[path].env_names, name
    parser = build_parser()
    subparsers = next(
        a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
    ).choices
    for command, flags in FLAGS_OF_COMMAND.items():
        known = {o for a in subparsers[command]._actions for o in a.option_strings}
        assert flags <= known, (command, flags - known)


def test_every_setting_reaches_the_config_through_its_flag_and_its_variable(
    tmp_path: Path,
) -> None:
    wanted = _non_default_config()
    argv = ["annotate", str(tmp_path)]
    for s in config_settings():
        if "annotate" not in s.commands or s.flag is None:
            continue
        value = value_at(wanted, s.path)
        if s.kind == "bool":
            argv.append(s.flag if value else "--no-" + s.flag.removeprefix("--"))
        else:
            argv += [s.flag, str(format_value(s.kind, value))]
    args = build_parser().parse_args(argv)
    from_flags = load_config(cli_overrides(args), env={})
    env_only = {s.path for s in config_settings() if "annotate" not in s.commands or not s.flag}
    for s in config_settings():
        if s.path not in env_only:
            assert value_at(from_flags, s.path) == value_at(wanted, s.path), s.flag

    env = {s.env: str(format_value(s.kind, value_at(wanted, s.path))) for s in config_settings()}
    assert load_config(env=env) == wanted
    # The derived NARRATOR_A__B name of a setting with a documented short name works too.
    aliases = {(s.env_aliases or (s.env,))[0]: env[s.env] for s in config_settings()}
    assert set(aliases) != set(env)
    assert load_config(env=aliases) == wanted


def _non_default_config() -> NarratorConfig:
    """A config in which every setting differs from its default (new fields included)."""
    data: dict[str, Any] = {}
    for s in config_settings():
        value = SPECIAL_VALUES[s.path] if s.path in SPECIAL_VALUES else _other_value(s)
        set_path(data, s.path, value)
    config = NarratorConfig.model_validate(data)
    for s in config_settings():
        assert value_at(config, s.path) != s.default, f"give {s.dotted} a SPECIAL_VALUES entry"
    return config


def _other_value(s: Setting) -> Any:
    d = s.default
    candidates: list[Any]
    if s.kind == "bool":
        candidates = [not d]
    elif s.kind == "int":
        candidates = [7] if d is None else [d + 1, d - 1]
    elif s.kind == "float":
        candidates = [1.5] if d is None else [d + 0.25, d / 2]
    elif s.kind in ("str", "secret"):
        candidates = ["other-" + str(s.path[-1])]
    elif s.kind == "path":
        candidates = [f"/srv/{s.path[-1]}"]
    elif s.kind == "choice":
        candidates = [c for c in s.choices if c != d]
    elif s.kind == "json":
        candidates = [{"enable_thinking": False, "n": 1}]
    else:
        candidates = [list(d[:1]) if d else ["x"]]
    for value in candidates:
        data: dict[str, Any] = {}
        set_path(data, s.path, value)
        try:
            NarratorConfig.model_validate(data)
        except ValidationError:
            continue
        return value
    raise AssertionError(f"no automatic value for {s.dotted}: add it to SPECIAL_VALUES")


def test_child_env_round_trips_the_parents_whole_config(tmp_path: Path) -> None:
    wanted = _non_default_config()
    parent_env = {
        "PATH": "/usr/bin",
        "HOME": "/home/x",
        # Stale settings in the parent's environment must not leak into the child.
        "NARRATOR_MODEL": "stale-model",
        "NARRATOR_VLM__MODEL": "stale-too",
        "NARRATOR_ANNOTATION__PLAN__NO_SUCH_FIELD": "1",
        "NARRATOR_DATASET": "compose-variable, not a setting",
    }
    env = child_env(wanted, parent_env)
    assert env["PATH"] == "/usr/bin" and env["HOME"] == "/home/x"
    assert env["NARRATOR_DATASET"] == "compose-variable, not a setting"
    assert load_config(env=env) == wanted


def test_the_runner_gives_its_children_the_config_from_flags_yaml_and_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    yaml_file = tmp_path / "narrator.yaml"
    yaml_file.write_text(
        "annotation:\n  plan:\n    sample_hz: 2.5\n  temperature: 0.7\nvlm:\n  max_attempts: 9\n"
    )
    monkeypatch.setenv("NARRATOR_VLM_API_KEY", "sk-secret")
    monkeypatch.setenv("NARRATOR_VLM__BACKOFF_MAX_S", "3")
    args = build_parser().parse_args(
        ["annotate", str(tmp_path), "--config", str(yaml_file), "--vlm-url", "http://h:1",
         "--vqa-hz", "2", "--modules", "plan,interjections", "--jobs-per-worker", "3"]
    )  # fmt: skip
    parent = config_from_args(args)
    env = runner_child_env(parent, "redis://127.0.0.1:7777/0")
    assert "sk-secret" not in " ".join(args.__dict__.values().__repr__())
    child = load_config(env=env)
    assert child == parent.model_copy(update={"redis_url": SecretStr("redis://127.0.0.1:7777/0")})
    assert child.annotation.plan.sample_hz == 2.5 and child.vlm.max_attempts == 9
    assert child.vlm.api_key is not None and child.vlm.api_key.get_secret_value() == "sk-secret"
    assert child.vlm.backoff_max_s == 3.0 and child.annotation.vqa.vqa_hz == 2.0


def test_precedence_is_flags_then_env_then_yaml(tmp_path: Path) -> None:
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("annotation:\n  seed: 1\n  vqa:\n    vqa_hz: 1.0\nworkers: 5\n")
    env = {"NARRATOR_ANNOTATION__SEED": "2", "NARRATOR_WORKERS": "6"}
    config = load_config({"annotation": {"seed": "3"}}, env=env, yaml_path=yaml_file)
    assert (config.annotation.seed, config.workers, config.annotation.vqa.vqa_hz) == (3, 6, 1.0)


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--vqa-hz", "inf", "--vqa-hz / NARRATOR_ANNOTATION__VQA__VQA_HZ"),
        ("--vqa-hz", "1e9", "less than or equal to 60"),
        ("--modules", ",", "give at least one module"),
        ("--redis-url", "notaurl", "must start with redis://"),
        ("--chat-template-kwargs", "[1]", "must be a JSON object"),
        ("--log-level", "loud", "use one of debug, info, warning, error"),
    ],
)
def test_a_bad_value_is_a_config_error_naming_the_flag(
    tmp_path: Path, flag: str, value: str, says: str
) -> None:
    args = build_parser().parse_args(["annotate", str(tmp_path), flag, value])
    with pytest.raises(ConfigError, match=None) as err:
        config_from_args(args)
    assert says in str(err.value)
    assert "\n" not in str(err.value)


def test_secrets_in_the_child_env_only_never_in_flags() -> None:
    by_path = _settings_by_path()
    assert by_path[("vlm", "api_key")].flag is None
    config = load_config({"vlm": {"api_key": "k-123"}}, env={})
    env = child_env(config, {})
    assert env["NARRATOR_VLM_API_KEY"] == "k-123"
    assert "k-123" not in repr(config)
