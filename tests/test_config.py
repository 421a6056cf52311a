"""Settings come from flags, SQLFLOW_PLAYGROUND_<FLAG> variables and a YAML file."""
import dataclasses

import pytest

from sqlflow_playground.config import Config, ConfigError, build_parser, load_config
from sqlflow_playground.server import Gateway


def test_defaults_serve_a_laptop():
    c = load_config([], environ={})
    assert (c.port, c.provisioner, c.idle_timeout_s) == (50052, "sqlite", 3600.0)
    assert c.store_url.startswith("sqlite:///") and c.store_url.endswith("store.db")


def test_seed_flag_spelling_is_accepted():
    c = load_config(["--port=50052", "--ca_crt=ca.crt", "--server_key=s.key",
                     "--server_crt=s.crt"], environ={})
    assert (c.ca_crt, c.server_key, c.server_crt, c.tls_enabled) == (
        "ca.crt", "s.key", "s.crt", True)


def test_flag_beats_environment_beats_yaml(tmp_path):
    cfg = tmp_path / "playground.yaml"
    cfg.write_text("port: 1111\nidle_timeout_s: 60\nfrontend_certs: [web, hub]\n"
                   "provisioner: mysql\nmysql_dsn: mysql://root@db:3306\n")
    env = {"SQLFLOW_PLAYGROUND_PORT": "2222", "SQLFLOW_PLAYGROUND_CONFIG": str(cfg),
           "SQLFLOW_PLAYGROUND_INSECURE": "true"}
    c = load_config(["--port", "3333"], environ=env)
    assert c.port == 3333
    assert c.idle_timeout_s == 60.0
    assert c.frontend_certs == ("web", "hub")
    assert c.insecure is True
    assert (c.provisioner, c.mysql_dsn) == ("mysql", "mysql://root@db:3306")
    assert load_config([], environ=env).port == 2222
    assert load_config([f"--config={cfg}"], environ={}).port == 1111


def test_frontend_certs_flag_is_comma_separated():
    assert load_config(["--frontend_certs", "web, hub"], environ={}).frontend_certs == (
        "web", "hub")


@pytest.mark.parametrize("argv,env,yaml_text,needle", [
    ([], {"SQLFLOW_PLAYGROUND_PORT": "http"}, None, "port"),
    ([], {"SQLFLOW_PLAYGROUND_PROVISIONER": "oracle"}, None, "provisioner"),
    ([], {}, "colour: blue\n", "unknown settings colour"),
    ([], {}, "- a list\n", "mapping"),
    ([], {}, "port: [\n", "not valid YAML"),
])
def test_bad_settings_are_refused_with_a_reason(tmp_path, argv, env, yaml_text, needle):
    if yaml_text is not None:
        path = tmp_path / "c.yaml"
        path.write_text(yaml_text)
        argv = argv + ["--config", str(path)]
    with pytest.raises(ConfigError, match=needle):
        load_config(argv, environ=env)


def test_help_documents_every_setting():
    text = build_parser().format_help()
    for f in dataclasses.fields(Config):
        assert f"--{f.name}" in text and f"SQLFLOW_PLAYGROUND_{f.name.upper()}" in text


@pytest.mark.parametrize("settings", [{}, {"ca_crt": "ca.crt"}, {"ca_crt": "a", "insecure": True}])
def test_server_refuses_to_start_without_tls_unless_insecure(tmp_path, settings):
    with pytest.raises(ConfigError, match="--insecure"):
        Gateway(Config(state_dir=str(tmp_path), **settings))
