"""One schema for flags, EDGERANK_* variables and the TOML file; precedence and typos."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from edgerank.errors import SettingsError
from edgerank.server.settings import Settings, click_options, load, read_file

EXAMPLE = Path(__file__).resolve().parents[2] / "systemd" / "edgerank.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edgerank.toml"
    path.write_text(text)
    return path


def test_defaults_without_any_source(tmp_path):
    s = load({}, env={}, config=write(tmp_path, ""))
    assert s == Settings()


def test_precedence_flags_over_env_over_file_over_defaults(tmp_path):
    cfg = write(tmp_path, 'max_batch_tokens = 1000\nthreads = 3\nmodel = "from-file"\n')
    env = {"EDGERANK_MAX_BATCH_TOKENS": "2000", "EDGERANK_MODEL": "from-env"}
    s = load({"max_batch_tokens": 3000, "model": None}, env=env, config=cfg)
    assert s.max_batch_tokens == 3000  # flag
    assert s.model == "from-env"  # env (the flag was not given)
    assert s.threads == 3  # file
    assert s.max_documents == Settings().max_documents  # default


def test_config_path_from_flag_or_env(tmp_path):
    cfg = write(tmp_path, "max_documents = 7\n")
    assert load({"config": str(cfg)}, env={}).max_documents == 7
    assert load({}, env={"EDGERANK_CONFIG": str(cfg)}).max_documents == 7


def test_a_typo_in_the_file_is_an_error_with_a_suggestion(tmp_path):
    cfg = write(tmp_path, "max_batch_token = 1000\n")
    with pytest.raises(SettingsError, match="unknown setting 'max_batch_token'.*max_batch_tokens"):
        load({}, env={}, config=cfg)


def test_wrong_types_name_their_source(tmp_path):
    with pytest.raises(SettingsError, match="EDGERANK_THREADS.*int"):
        load({}, env={"EDGERANK_THREADS": "four"}, config=write(tmp_path, ""))
    with pytest.raises(SettingsError, match="edgerank.toml.*max_documents"):
        load({}, env={}, config=write(tmp_path, 'max_documents = "many"\n'))
    with pytest.raises(SettingsError, match="max_batch_tokens"):
        load({}, env={}, config=write(tmp_path, "max_batch_tokens = 1.5\n"))


def test_broken_toml_and_missing_file(tmp_path):
    with pytest.raises(SettingsError):
        load({}, env={}, config=write(tmp_path, "max_documents = \n"))
    with pytest.raises(SettingsError, match="cannot read"):
        load({}, env={}, config=tmp_path / "absent.toml")


@pytest.mark.parametrize(
    "flags, message",
    [
        ({"max_queue_pairs": 0}, "max_queue_pairs must be > 0"),
        ({"threads": -1}, "threads must be >= 0"),
        ({"backend": "tensorflow"}, "backend must be one of"),
        ({"listen": "", "socket": ""}, "nothing to listen on"),
        ({"listen": "unix:/run/x.sock"}, "use socket for Unix"),
        ({"tls_cert": "/c.pem"}, "both tls_cert and tls_key"),
        ({"token": "a", "token_file": "/t"}, "not both"),
        ({"listen": "127.0.0.1:99999"}, "listen: port 99999 is out of range"),
        ({"listen": "127.0.0.1:-1"}, "listen: port -1 is out of range"),
        ({"http": "65536"}, "http: port 65536 is out of range"),
        ({"backend": "gguf"}, "backend gguf needs a model"),
        ({"read_timeout_s": 0}, "read_timeout_s must be > 0"),
        ({"max_batch_tokens": -1}, "max_batch_tokens must be >= 0"),
        ({"max_batch_pairs": -2}, "max_batch_pairs must be >= 0"),
        ({"request_shape": "32 passages"}, "request shape '32 passages': write PASSAGESx"),
    ],
)
def test_out_of_range_values_are_refused(tmp_path, flags, message):
    with pytest.raises(SettingsError, match=message):
        load(flags, env={}, config=write(tmp_path, ""))


def test_batch_settings_default_to_the_planners_shape_and_an_explicit_value_wins(tmp_path):
    s = load({}, env={}, config=write(tmp_path, ""))
    assert (s.max_batch_tokens, s.max_batch_pairs) == (0, 0)  # auto
    assert s.engine().batch_shape((4096, 8)) == (4096, 8)
    assert s.engine().batch_shape((2048, None)) == (2048, None)
    env = {"EDGERANK_MAX_BATCH_PAIRS": "16"}
    s = load({"max_batch_tokens": 1024}, env=env, config=write(tmp_path, ""))
    assert s.engine().batch_shape((4096, 8)) == (1024, 16)
    assert s.engine().batch_shape((4096, None)) == (1024, 16)


def test_token_file_and_hidden_token(tmp_path):
    (tmp_path / "token").write_text("s3cret\n")
    s = load({"token_file": str(tmp_path / "token")}, env={}, config=write(tmp_path, ""))
    assert s.bearer_token() == "s3cret"
    s = load({"token": "visible?"}, env={}, config=write(tmp_path, ""))
    assert "visible?" not in repr(s)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ("   \n\t\n", "is empty"),
        ("abc\ndef\n", "holds '\\n' at character 3"),
        ("abc def", "holds ' ' at character 3"),
        ("t\u00f6ken", "holds '\u00f6' at character 1"),
    ],
)
def test_a_token_no_client_can_send_is_refused(tmp_path, content, message):
    """Before: an empty token file served TCP with no authentication at all, silently."""
    (tmp_path / "token").write_text(content)
    s = load({"token_file": str(tmp_path / "token")}, env={}, config=write(tmp_path, ""))
    with pytest.raises(SettingsError, match=re.escape(message)):
        s.bearer_token()
    if content:  # the same token as a flag (not stripped: its whitespace is its own)
        with pytest.raises(SettingsError, match=r"^token (is empty|holds)"):
            load({"token": content}, env={}, config=write(tmp_path, "")).bearer_token()


def test_an_empty_token_flag_is_refused_but_the_files_empty_default_is_unset(tmp_path):
    with pytest.raises(SettingsError, match="--token is empty"):
        load({"token": ""}, env={}, config=write(tmp_path, ""))
    assert load({}, env={}, config=write(tmp_path, 'token = ""\n')).bearer_token() == ""


def test_an_empty_token_file_stops_the_daemon_at_start_up(tmp_path, tiny_onnx_dir):
    from tests.server.test_transport import error_lines, second_daemon

    (tmp_path / "token").write_text("\n")
    flags = ("--listen", "127.0.0.1:0", "--socket", "", "--token-file", str(tmp_path / "token"))
    done = second_daemon(tiny_onnx_dir, *flags)
    assert done.returncode == 1, done.stderr
    (line,) = error_lines(done.stderr)
    assert f"token_file {tmp_path / 'token'} is empty" in line


def test_served_names_are_listed_once(tmp_path):
    s = load({"served_model_name": "ce, ce,x,ce"}, env={}, config=write(tmp_path, ""))
    assert s.served_names() == ["ce", "x"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"listen": "127.0.0.1:8080", "http": "8080"}, "name the same address"),
        ({"listen": "0.0.0.0:8080", "http": "127.0.0.1:8080"}, "name the same address"),
        ({"socket": "/run/e.sock", "http_socket": "/run/./e.sock"}, "name the same path"),
    ],
)
def test_two_listeners_on_one_address_are_named_not_blamed_on_another_daemon(
    tmp_path, flags, message
):
    with pytest.raises(SettingsError, match=message):
        load(flags, env={}, config=write(tmp_path, ""))
    fine = load({"listen": "127.0.0.1:0", "http": "127.0.0.1:0"}, env={}, config="/dev/null")
    assert fine.http == "127.0.0.1:0"  # two port-0 listeners get a port each


def test_the_shipped_example_file_is_valid_and_complete():
    values = read_file(EXAMPLE)
    assert set(values) == {f for f in Settings.__dataclass_fields__}  # documents every key
    s = load({}, env={}, config=EXAMPLE)
    assert s.socket == "/run/edgerank/edgerank.sock"
    assert (s.max_batch_tokens, s.max_batch_pairs) == (0, 0)  # the planner's shape, as unset


def test_click_options_share_the_schema(tmp_path):
    seen = {}

    @click.command()
    @click_options
    def serve(**flags):
        seen["settings"] = load(flags, env={"EDGERANK_MODEL": "env-model"})

    cfg = write(tmp_path, "max_documents = 9\n")
    result = CliRunner().invoke(
        serve, ["--config", str(cfg), "--max-batch-tokens", "512", "--batch-wait-ms", "0.5"]
    )
    assert result.exit_code == 0, result.output
    s = seen["settings"]
    assert (s.max_batch_tokens, s.batch_wait_ms, s.max_documents) == (512, 0.5, 9)
    assert s.model == "env-model"
    help_text = CliRunner().invoke(serve, ["--help"]).output
    for name in Settings.__dataclass_fields__:
        assert "--" + name.replace("_", "-") in help_text
    assert "EDGERANK_MAX_QUEUE_PAIRS" in help_text
