"""Configs: defaults are valid, unknown keys and bad values name the key, overrides apply."""
import pytest

from rayiqa.config import ConfigError, ScoreConfig, load_config


def test_defaults_are_a_valid_offline_config():
    cfg = load_config(ScoreConfig)
    assert cfg.input.uri == "builtin:samples" and cfg.mllms[0].preset == "tiny"
    assert cfg.method.levels == 7 and cfg.method.standard == "word"


def test_unknown_key_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("method:\n  levls: 5\n")
    with pytest.raises(ConfigError, match=r"method\.levls: unknown key"):
        load_config(ScoreConfig, p)


def test_bad_value_lists_allowed_values(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("method:\n  standard: emoji\nmllms:\n  - engine: onnx\n")
    with pytest.raises(ConfigError) as e:
        load_config(ScoreConfig, p)
    msg = str(e.value)
    assert "method.standard" in msg and "'word', 'number' or 'sentence'" in msg
    assert "mllms.0.engine" in msg and "'transformers' or 'vllm'" in msg


def test_overrides_and_concurrency_shorthand(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("score:\n  concurrency: 2\n")
    cfg = load_config(ScoreConfig, p, ["method.levels=5", "input.uri=s3://b/x", "score.batch_size=3"])
    assert cfg.method.levels == 5 and cfg.input.uri == "s3://b/x"
    assert cfg.score.concurrency == (2, 2) and cfg.score.batch_size == 3
    with pytest.raises(ConfigError, match="concurrency"):
        load_config(ScoreConfig, None, ["score.concurrency=[3, 1]"])
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(ScoreConfig, None, ["method.levels"])


def test_unreadable_or_non_mapping_config(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(ScoreConfig, tmp_path / "missing.yaml")
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(ScoreConfig, p)


def test_environment_references_expand_and_unset_ones_name_the_key(tmp_path, monkeypatch):
    p = tmp_path / "c.yaml"
    p.write_text("input:\n  uri: s3://${TEST_RAYIQA_BUCKET}/images\n"
                 "mllms:\n  - preset: ${TEST_RAYIQA_MODEL:-Qwen/Qwen2.5-VL-7B-Instruct}\n")
    monkeypatch.setenv("TEST_RAYIQA_BUCKET", "b1")
    monkeypatch.delenv("TEST_RAYIQA_MODEL", raising=False)
    cfg = load_config(ScoreConfig, p, ["output.uri=s3://${TEST_RAYIQA_BUCKET}/scores"])
    assert (cfg.input.uri, cfg.output.uri) == ("s3://b1/images", "s3://b1/scores")
    assert cfg.mllms[0].preset == "Qwen/Qwen2.5-VL-7B-Instruct"  # the default after :-
    monkeypatch.setenv("TEST_RAYIQA_MODEL", "org/model")
    assert load_config(ScoreConfig, p).mllms[0].preset == "org/model"
    monkeypatch.setenv("TEST_RAYIQA_BUCKET", "")
    with pytest.raises(ConfigError, match=r"input\.uri: environment variable TEST_RAYIQA_BUCKET is not set"):
        load_config(ScoreConfig, p)
