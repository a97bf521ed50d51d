"""The batch config: TOML, environment and flag precedence, one message per problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.authoring.loop import model_defaults
from agent.errors import UserError
from agent.sessions.batch import backend_for
from agent.sessions.batch_config import ConfigInvalid, load_batch_config

GOOD = """
ideas = ["flag boxes that are not on a panda", "flag blurry images"]
library = "lib"

[dataset]
annotations = "demo/annotations.json"
errors = "demo/errors.json"
description = "Pandas, bears and foxes"

[model]
backend = "openai"
model = "gpt-4o-mini"

[budgets]
max_repairs = 2
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_a_good_config_resolves_paths_next_to_the_file(tmp_path: Path) -> None:
    config = load_batch_config(write(tmp_path, GOOD), environ={})
    assert config.dataset.annotations == tmp_path.resolve() / "demo/annotations.json"
    assert config.library == tmp_path.resolve() / "lib"
    assert config.model.backend == "openai" and config.budgets.max_repairs == 2 and config.budgets.max_drafts == 2
    assert config.description_text() == "Pandas, bears and foxes"


def test_environment_overrides_the_file_and_flags_override_both(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    environ = {"METRICSMITH_MODEL": "from-env", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    config = load_batch_config(path, environ=environ)
    assert config.model.model == "from-env" and config.model.base_url == "http://127.0.0.1:9/v1"
    config = load_batch_config(path, overrides={("model", "model"): "from-flag"}, environ=environ)
    assert config.model.model == "from-flag"


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = """
brainstorm = 3
ideas = ["x"]
colour = "blue"

[model]
backend = "gpt"
temperature = 5

[budgets]
max_drafts = 0
"""
    with pytest.raises(ConfigInvalid) as caught:
        load_batch_config(write(tmp_path, text), environ={})
    problems = caught.value.problems
    joined = "\n".join(problems)
    for expected in ("dataset: Field required", "colour: Extra inputs", "model.backend:", "model.temperature:",
                     "budgets.max_drafts:"):  # fmt: skip
        assert expected in joined, joined
    assert str(caught.value).startswith(f"{tmp_path / 'config.toml'}: {len(problems)} problems: ")


def test_ideas_xor_brainstorm_and_replay_needs_a_recording(tmp_path: Path) -> None:
    base = '[dataset]\nannotations = "a.json"\n'
    with pytest.raises(ConfigInvalid, match="either ideas"):
        load_batch_config(write(tmp_path, base), environ={})
    with pytest.raises(ConfigInvalid, match="listed twice"):
        load_batch_config(write(tmp_path, 'ideas = ["a", "a"]\n' + base), environ={})
    with pytest.raises(ConfigInvalid, match="needs transcript"):
        load_batch_config(write(tmp_path, 'ideas = ["a"]\n' + base + '[model]\nbackend = "replay"\n'), environ={})


def test_unreadable_files_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such config file"):
        load_batch_config(tmp_path / "missing.toml")
    with pytest.raises(UserError, match="not valid TOML"):
        load_batch_config(write(tmp_path, "ideas = [\n"))
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe bad")  # an internal error (UnicodeDecodeError) before
    with pytest.raises(UserError, match=r"binary.toml: not UTF-8 text \(byte 0 can't be decoded\), so not a TOML file"):
        load_batch_config(binary)


def test_a_table_written_as_a_value_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    # `model = "gpt"` where [model] belongs: setting a key in it from the environment or a flag raised TypeError.
    path = write(tmp_path, 'model = "gpt"\n')
    with pytest.raises(ConfigInvalid, match=r"model: must be a table \(\[model\]\), got 'gpt'"):
        load_batch_config(path, overrides={("model", "backend"): "openai"}, environ={})
    with pytest.raises(ConfigInvalid, match="model: must be a table"):
        load_batch_config(path, environ={"METRICSMITH_MODEL": "m"})


def test_a_description_file_that_is_not_text_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "d.md").write_bytes(b"\xff\xfe")
    config = load_batch_config(
        write(tmp_path, GOOD.replace('description = "Pandas, bears and foxes"', 'description_file = "d.md"')),
        environ={},
    )
    with pytest.raises(UserError, match="cannot read the \\[dataset\\] description_file: not UTF-8 text"):
        config.description_text()


def test_a_base_model_on_a_llama_cpp_server_gets_completion_mode_and_the_grammar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = GOOD.replace('model = "gpt-4o-mini"', 'model = "gemma"\nbase_url = "http://127.0.0.1:9/v1"\n'
                        "completion = true\ngrammar = true")  # fmt: skip
    config = load_batch_config(write(tmp_path, text), environ={})
    backend = backend_for(config)
    assert (backend.name, backend.mode) == ("openai", "completion")
    assert model_defaults(backend, grammar=config.model.grammar)["grammar"] is True
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    plain = backend_for(load_batch_config(write(tmp_path, GOOD), environ={}))
    assert plain.mode == "chat" and model_defaults(plain, grammar=None)["grammar"] is False


def test_the_request_timeout_comes_from_the_config_or_the_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    text = GOOD.replace('model = "gpt-4o-mini"', 'model = "gpt-4o-mini"\nrequest_timeout = 450')
    assert backend_for(load_batch_config(write(tmp_path, text), environ={})).request_timeout_s == 450
    flagged = load_batch_config(write(tmp_path, text), overrides={("model", "request_timeout"): 30.0}, environ={})
    assert backend_for(flagged).request_timeout_s == 30
    # inf (or 1e300) ended the batch in an internal error from the timer that enforces it, a run folder half made.
    for bad in ("0", "inf", "nan", "1e300", "86401"):
        with pytest.raises(UserError, match="request_timeout"):
            load_batch_config(write(tmp_path, text.replace("450", bad)), environ={})


def test_an_idea_may_name_its_targets(tmp_path: Path) -> None:
    text = GOOD.replace(
        'ideas = ["flag boxes that are not on a panda", "flag blurry images"]',
        'ideas = [{ text = "boxes too big for their animal", target = ["shift", "loose"] }, "flag blurry images"]',
    )
    config = load_batch_config(write(tmp_path, text), environ={})
    assert config.idea_entries() == [("boxes too big for their animal", ("shift", "loose")), ("flag blurry images", ())]
    with pytest.raises(ConfigInvalid, match="unknown target 'lose'"):
        load_batch_config(write(tmp_path, text.replace('"loose"', '"lose"')), environ={})


def test_a_bad_value_from_the_environment_is_not_blamed_on_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    with pytest.raises(ConfigInvalid, match=r"model.backend: .* \(set by \$METRICSMITH_BACKEND, not in the file\)"):
        load_batch_config(path, environ={"METRICSMITH_BACKEND": "bogus"})


def test_a_description_file_that_is_not_there_is_a_config_problem(tmp_path: Path) -> None:
    text = GOOD.replace('description = "Pandas, bears and foxes"', 'description_file = "nope.md"')
    with pytest.raises(ConfigInvalid, match=r"dataset.description_file: no such file .*nope.md"):
        load_batch_config(write(tmp_path, text), environ={})


def test_a_bad_model_value_in_the_config_is_blamed_on_its_key_not_on_a_flag(tmp_path: Path) -> None:
    # They read "--base-url '127.0.0.1:8080/v1' is not a server URL" and "--backend openai needs --model NAME".
    no_scheme = GOOD.replace('model = "gpt-4o-mini"', 'model = "gpt-4o-mini"\nbase_url = "127.0.0.1:8080/v1"')
    with pytest.raises(UserError, match=r"model\.base_url.*'127\.0\.0\.1:8080/v1' is not a server URL"):
        load_batch_config(write(tmp_path, no_scheme), environ={})
    no_model = GOOD.replace('model = "gpt-4o-mini"', 'model = ""')
    with pytest.raises(UserError, match=r"backend 'openai' needs model = \"NAME\""):
        load_batch_config(write(tmp_path, no_model), environ={})
