from __future__ import annotations

from pathlib import Path

import pytest

from relay.settings import (
    Settings,
    SettingsError,
    fields,
    file_variables,
    load,
    to_environ,
)


def test_defaults_and_environment() -> None:
    s = load({"SSEDGE_RING_EVENTS": "500", "SSEDGE_HEARTBEAT_S": "2.5", "OTHER": "x"})
    assert s.ring_events == 500 and s.heartbeat_s == 2.5
    assert s.retry_ms == Settings().retry_ms


def test_flags_override_environment_and_none_means_unset() -> None:
    s = load({"SSEDGE_PORT": "9000"}, port="9001", retry_ms=None)
    assert s.port == 9001 and s.retry_ms == 3000


@pytest.mark.parametrize(("env", "named"), [
    ({"SSEDGE_PORT": "70000"}, "SSEDGE_PORT"),
    ({"SSEDGE_RING_EVENTS": "many"}, "SSEDGE_RING_EVENTS"),
    ({"SSEDGE_HEARTBEAT_S": "0"}, "SSEDGE_HEARTBEAT_S"),
    ({"SSEDGE_REDIS_URL": "localhost:6379"}, "SSEDGE_REDIS_URL"),
    ({"SSEDGE_REDIS_CLUSTER": "redis://10.0.0.1:7000"}, "SSEDGE_REDIS_CLUSTER"),
    ({"SSEDGE_REDIS_CLUSTER": "10.0.0.1"}, "SSEDGE_REDIS_CLUSTER"),
    ({"SSEDGE_PUBLISH_REPLICAS": "-2"}, "SSEDGE_PUBLISH_REPLICAS"),
    ({"SSEDGE_REDIS_READ_URL": "10.0.0.2:6379"}, "SSEDGE_REDIS_READ_URL"),
    ({"SSEDGE_REDIS_READ_URL": "redis://10.0.0.2:6379", "SSEDGE_REDIS_CLUSTER": "10.0.0.1:7000"},
     "SSEDGE_REDIS_READ_URL"),
    ({"SSEDGE_REPLICA_WAIT_S": "-1"}, "SSEDGE_REPLICA_WAIT_S"),
])
def test_bad_value_is_one_line_naming_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError) as info:
        load(env)
    message = str(info.value)
    assert named in message and "\n" not in message


def test_unknown_override_is_refused() -> None:
    with pytest.raises(SettingsError):
        load({}, colour="blue")


def test_round_trip_through_environment() -> None:
    s = load({}, ring_events=123, publish_token="t", node_name="n")
    assert load(to_environ(s)) == s


def test_every_setting_is_documented() -> None:
    assert all(doc for _, _, doc in fields())


def test_a_publish_waits_for_one_replica_by_default_where_the_primary_has_one() -> None:
    assert load({}).replicas(0) == 0
    assert load({}).replicas(2) == 1  # one Redis whose INFO lists connected replicas
    cluster = load({"SSEDGE_REDIS_CLUSTER": "10.0.0.1:7000, redis-b:7001,[::1]:7002"})
    assert cluster.replicas(0) == 1
    assert load({"SSEDGE_REDIS_CLUSTER": "h:7000",
                 "SSEDGE_PUBLISH_REPLICAS": "0"}).replicas(1) == 0
    assert load({"SSEDGE_PUBLISH_REPLICAS": "2"}).replicas(0) == 2


def test_streams_are_read_from_the_replica_when_one_is_named() -> None:
    assert load({"SSEDGE_REDIS_URL": "redis://a:1/0"}).read_url == "redis://a:1/0"
    s = load({"SSEDGE_REDIS_URL": "redis://a:1/0", "SSEDGE_REDIS_READ_URL": "redis://b:2/0"})
    assert s.read_url == "redis://b:2/0" and s.redis_url == "redis://a:1/0"


def test_a_setting_read_from_its_file_holds_the_file_without_its_last_newline(
    tmp_path: Path,
) -> None:
    secret = tmp_path / "jwt-secret"
    secret.write_text("s3cret with spaces\n")
    token = tmp_path / "token"
    token.write_text("t\r\n")
    s = load({"SSEDGE_JWT_SECRET_FILE": str(secret), "SSEDGE_PUBLISH_TOKEN_FILE": str(token)})
    assert s.jwt_secret == "s3cret with spaces" and s.publish_token == "t"
    assert "SSEDGE_JWT_SECRET_FILE" in file_variables()


@pytest.mark.parametrize(("env", "named"), [
    ({"SSEDGE_JWT_SECRET_FILE": "/nonexistent/secret"}, "SSEDGE_JWT_SECRET_FILE"),
    ({"SSEDGE_JWT_SECRET_FILE": "/etc/hostname", "SSEDGE_JWT_SECRET": "x"},
     "SSEDGE_JWT_SECRET_FILE"),
    ({"SSEDGE_LOG_FORMAT": "xml"}, "one of: text, json"),
    ({"SSEDGE_LOG_LEVEL": "loud"}, "SSEDGE_LOG_LEVEL"),
])
def test_a_bad_file_or_choice_is_one_line_naming_it(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError) as info:
        load(env)
    assert named in str(info.value) and "\n" not in str(info.value)
