"""Settings come from flags, SQLFLOW_PLAYGROUND_<FLAG> variables and a YAML file."""
import asyncio
import dataclasses
import gc
import os
import signal

import pytest

from sqlflow_playground import cli
from sqlflow_playground.config import (Config, ConfigError, build_parser, gc_thresholds,
                                       load_config)
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
    (["--gc_thresholds", "700,10"], {}, None, "three whole numbers"),
    ([], {"SQLFLOW_PLAYGROUND_GC_THRESHOLDS": "a,b,c"}, None, "three whole numbers"),
    ([], {}, "gc_thresholds: 0,10,10\n", "at least 1"),
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


# -- first run (issue 13, item 9) ----------------------------------------------------------

def test_every_flag_states_its_default_once():
    for action in build_parser()._actions:
        if action.dest in ("help", "version"):
            continue
        assert action.help.count("(default") == 1, (action.option_strings, action.help)
        assert "default: None" not in action.help, action.help


def test_help_lists_the_sub_commands_and_version_prints_the_version():
    import subprocess
    import sys
    from sqlflow_playground import __version__
    run = [sys.executable, "-m", "sqlflow_playground"]
    helped = subprocess.run(run + ["--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0
    usage = helped.stdout.split("\n\n", 1)[0]
    for line in ("sqlflow_playground [FLAGS]", "sqlflow_playground demo",
                 "sqlflow_playground client COMMAND"):
        assert line in usage, usage
    commands = helped.stdout.split("\ncommands:\n", 1)[1]
    assert "127.0.0.1" in commands and "client --help" in commands
    version = subprocess.run(run + ["--version"], capture_output=True, text=True, timeout=60)
    assert (version.returncode, version.stdout) == (0, f"sqlflow_playground {__version__}\n")


def test_log_format_is_json_by_default_and_checked():
    assert load_config([], environ={}).log_format == "json"
    assert load_config(["--log_format=text"], environ={}).log_format == "text"
    with pytest.raises(ConfigError, match="log_format"):
        load_config([], environ={"SQLFLOW_PLAYGROUND_LOG_FORMAT": "xml"})


@pytest.mark.parametrize("url, shown", [
    ("mysql://admin:pw@db:3306", "mysql://admin:***@db:3306"),
    ("postgresql://gw:p%40ss@pg/playground?sslmode=require&password=x",
     "postgresql://gw:***@pg/playground?***"),
    ("mysql://root@127.0.0.1:3306/x", "mysql://root@127.0.0.1:3306/x"),
    ("sqlite:////var/lib/s/store.db", "sqlite:////var/lib/s/store.db"),
    ("not a url: pw", "***"),
])
def test_urls_in_the_logged_configuration_hide_their_passwords(url, shown):
    from sqlflow_playground.config import mask_url
    assert mask_url(url) == shown


def test_the_effective_settings_mask_secrets_and_name_files(tmp_path):
    from sqlflow_playground.config import effective_settings
    secret = tmp_path / "dsn"
    secret.write_text("mysql://admin:From-File-1@db:3306\n")
    c = load_config([f"--mysql_dsn_file={secret}"], environ={
        "SQLFLOW_PLAYGROUND_DB_URL": "mysql://gw:From-Env-2@db/state"})
    settings = effective_settings(c)
    assert settings["mysql_dsn"] == "mysql://admin:***@db:3306"
    assert settings["mysql_dsn_file"] == str(secret)
    assert settings["db_url"] == "mysql://gw:***@db/state"
    assert "From-File-1" not in repr(settings) and "From-Env-2" not in repr(settings)
    assert set(settings) == {f.name for f in dataclasses.fields(Config)}


def test_the_server_runs_with_the_garbage_collector_thresholds_it_is_given(tmp_path):
    assert gc_thresholds(load_config([], environ={}).gc_thresholds) == (700, 1000, 10)
    before, seen = gc.get_threshold(), []

    def started(gateway):
        seen.append(gc.get_threshold())
        os.kill(os.getpid(), signal.SIGTERM)  # serve() stops on it, as in production

    config = load_config(["--port=0", "--host=127.0.0.1", "--insecure", "--grpc_port=0",
                          f"--state_dir={tmp_path}", "--gc_thresholds= 900, 50,20"], environ={})
    umask = os.umask(0o022)  # serve() sets the process's umask: given back after
    os.umask(umask)
    try:
        asyncio.run(cli.serve(config, on_started=started))
    finally:
        gc.set_threshold(*before)
        os.umask(umask)
    assert seen == [(900, 50, 20)]
