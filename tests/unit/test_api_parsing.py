"""Pure parsing functions of the API layer: query values, filters, times, versions, bodies."""

from __future__ import annotations

import asyncio

import pytest

from silobox.api.app import check_api_version, parse_api_version, requested_api_version
from silobox.api.routers import (check_fields, check_content_type, complete, decode_json_object,
                                 parse_bool, parse_csv, parse_filters, parse_int, parse_tail,
                                 parse_timestamp, parse_uint32)
from silobox.api.routers.containers import (CREATE_BODY, validate_container_name,
                                            validate_platform, validate_wait_condition)
from silobox.api.routers.exec import validate_console_size, validate_exec_create
from silobox.errors import InvalidArgument


# --- booleans and integers -----------------------------------------------------------------

@pytest.mark.parametrize("raw", ["1", "true", "True", "TRUE", "yes", "on", "t", " 1 "])
def test_bool_true(raw: str) -> None:
    assert parse_bool("all", raw) is True


@pytest.mark.parametrize("raw", ["", "0", "false", "False", "no", "none", "off", "f"])
def test_bool_false(raw: str) -> None:
    assert parse_bool("all", raw, default=True) is False


def test_bool_absent_uses_default() -> None:
    assert parse_bool("stream", None, default=True) is True
    assert parse_bool("stream", None) is False


def test_bool_rejects_garbage_naming_the_parameter() -> None:
    with pytest.raises(InvalidArgument, match=r"'all'.*'banana'"):
        parse_bool("all", "banana")


@pytest.mark.parametrize("raw, expected", [("10", 10), ("-1", -1), ("+3", 3), ("0", 0)])
def test_int(raw: str, expected: int) -> None:
    assert parse_int("t", raw) == expected


def test_int_absent_or_empty_is_default() -> None:
    assert parse_int("t", None) is None
    assert parse_int("t", "", default=5) == 5


@pytest.mark.parametrize("raw", ["1.5", "ten", "0x10", "1e3", " 1"])
def test_int_rejects(raw: str) -> None:
    with pytest.raises(InvalidArgument, match="'t'"):
        parse_int("t", raw)


def test_uint32() -> None:
    assert parse_uint32("h", "24") == 24
    assert parse_uint32("h", str(2**32 - 1)) == 2**32 - 1
    for bad in [None, "", "-1", "+1", "abc", str(2**32)]:
        with pytest.raises(InvalidArgument, match="'h'"):
            parse_uint32("h", bad)


# --- filters -------------------------------------------------------------------------------

def test_filters_list_form() -> None:
    assert parse_filters('{"status": ["running", "paused"]}') == {"status": ["running", "paused"]}


def test_filters_map_form_keeps_true_entries() -> None:
    raw = '{"status": {"running": true, "exited": false}, "label": {"a=b": true}}'
    assert parse_filters(raw) == {"status": ["running"], "label": ["a=b"]}


def test_filters_empty_and_dedup() -> None:
    assert parse_filters(None) == {}
    assert parse_filters("") == {}
    assert parse_filters("{}") == {}
    assert parse_filters('{"name": ["a", "a", "b"]}') == {"name": ["a", "b"]}


@pytest.mark.parametrize("raw, message", [
    ("{", "not valid JSON"),
    ("[]", "expected a JSON object, got array"),
    ('"status"', "expected a JSON object, got string"),
    ('{"status": "running"}', "'status'"),
    ('{"status": [1]}', "'status'"),
    ('{"status": {"running": "yes"}}', "'status'"),
])
def test_filters_reject(raw: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_filters(raw)


# --- times, tail, csv ----------------------------------------------------------------------

def test_timestamp_unix_forms() -> None:
    assert parse_timestamp("since", None) == 0
    assert parse_timestamp("since", "") == 0
    assert parse_timestamp("until", "0") == 0
    assert parse_timestamp("since", "1700000000") == 1700000000
    assert parse_timestamp("since", "1700000000.5") == pytest.approx(1700000000.5)
    assert parse_timestamp("since", "1700000000.000000001") == pytest.approx(1700000000.000000001)
    # more than 9 fraction digits are truncated, as Docker does
    assert parse_timestamp("since", "1.1234567899") == pytest.approx(1.123456789)


def test_timestamp_rfc3339() -> None:
    assert parse_timestamp("since", "2023-11-14T22:13:20Z") == 1700000000
    assert parse_timestamp("since", "2023-11-14T23:13:20+01:00") == 1700000000
    assert parse_timestamp("since", "2023-11-14T22:13:20.25Z") == pytest.approx(1700000000.25)


@pytest.mark.parametrize("raw", ["yesterday", "1700000000.x", "2023-11-14", "1.-5", "+5", "12:00"])
def test_timestamp_rejects(raw: str) -> None:
    with pytest.raises(InvalidArgument, match="'since'"):
        parse_timestamp("since", raw)


def test_tail() -> None:
    assert parse_tail(None) == "all"
    assert parse_tail("all") == "all"
    assert parse_tail("10") == "10"
    assert parse_tail("-1") == "all"
    with pytest.raises(InvalidArgument, match="tail"):
        parse_tail("ten")


def test_csv() -> None:
    assert parse_csv(None) is None
    assert parse_csv("") is None
    assert parse_csv("Statistics, ProcessList,") == ["Statistics", "ProcessList"]


# --- API versions --------------------------------------------------------------------------

def test_parse_api_version() -> None:
    assert parse_api_version("1.41") == (1, 41)
    assert parse_api_version("1.41.0") == (1, 41)
    assert parse_api_version("1.4") < parse_api_version("1.24")
    for bad in ["", "1.", ".1", "1..2", "v1.41", "1.x"]:
        with pytest.raises(InvalidArgument):
            parse_api_version(bad)


def test_check_api_version_range() -> None:
    assert check_api_version("1.24") == (1, 24)
    assert check_api_version("1.47") == (1, 47)
    with pytest.raises(InvalidArgument, match="client version 1.12 is too old. Minimum "
                                              "supported API version is 1.24"):
        check_api_version("1.12")
    with pytest.raises(InvalidArgument, match="client version 1.99 is too new. Maximum "
                                              "supported API version is 1.47"):
        check_api_version("1.99")


def test_requested_api_version_from_path() -> None:
    assert requested_api_version("/_ping") == (1, 47)
    assert requested_api_version("/version") == (1, 47)  # "/v" followed by letters: no prefix
    assert requested_api_version("/v1.41/containers/json") == (1, 41)
    assert requested_api_version("/v1.41") == (1, 41)
    with pytest.raises(InvalidArgument):
        requested_api_version("/v1.12/")


# --- bodies --------------------------------------------------------------------------------

def test_decode_json_object() -> None:
    assert decode_json_object(b'{"Image": "busybox"}', required=True) == {"Image": "busybox"}
    assert decode_json_object(b"", required=False) == {}
    with pytest.raises(InvalidArgument, match="got EOF"):
        decode_json_object(b"  ", required=True)
    with pytest.raises(InvalidArgument, match="invalid JSON"):
        decode_json_object(b'{"Image": ', required=True)
    with pytest.raises(InvalidArgument, match="expected an object, got array"):
        decode_json_object(b"[1]", required=True)
    with pytest.raises(InvalidArgument, match="invalid JSON"):
        decode_json_object(b'{"Memory": NaN}', required=True)
    with pytest.raises(InvalidArgument, match="not UTF-8"):
        decode_json_object(b'{"Image": "\xff"}', required=True)


def test_content_type() -> None:
    check_content_type("application/json", True)
    check_content_type("application/json; charset=utf-8", True)
    check_content_type(None, False)
    with pytest.raises(InvalidArgument, match="must be 'application/json'"):
        check_content_type("text/plain", True)
    with pytest.raises(InvalidArgument, match="must be 'application/json'"):
        check_content_type(None, True)


def test_check_fields_create_body() -> None:
    check_fields({"Image": "busybox", "Cmd": ["sh"], "Tty": True, "Env": None,
                  "HostConfig": {"Memory": 1 << 20, "PortBindings": {"80/tcp": [
                      {"HostIp": "127.0.0.1", "HostPort": "8080"}]}},
                  "Unknown": {"ignored": 1}}, CREATE_BODY)
    check_fields({"Cmd": "echo hi", "Entrypoint": ""}, CREATE_BODY)  # StrSlice accepts strings


@pytest.mark.parametrize("body, field, expected", [
    ({"Tty": "yes"}, "Tty", "a boolean, not string"),
    ({"Env": "A=1"}, "Env", "an array, not string"),
    ({"Env": ["A=1", 2]}, r"Env\[1\]", "a string, not integer"),
    ({"HostConfig": {"Memory": 1.5}}, "HostConfig.Memory", "an integer, not number"),
    ({"HostConfig": {"Memory": True}}, "HostConfig.Memory", "an integer, not boolean"),
    ({"HostConfig": []}, "HostConfig", "an object, not array"),
    ({"Labels": {"a": 1}}, "Labels.a", "a string, not integer"),
    ({"Cmd": [1]}, "Cmd", "a string or an array of strings"),
    ({"HostConfig": {"PortBindings": {"80/tcp": [{"HostPort": 8080}]}}},
     r"HostConfig.PortBindings.80/tcp\[0\].HostPort", "a string, not integer"),
])
def test_check_fields_names_the_field(body: dict, field: str, expected: str) -> None:
    with pytest.raises(InvalidArgument, match=f"'{field}' must be {expected}"):
        check_fields(body, CREATE_BODY)


def test_container_name() -> None:
    for good in ["web", "/web", "a1", "my_app.v2-1"]:
        validate_container_name(good)
    for bad in ["a", "-web", "we b", "web/1", "web\n", "wéb", "/"]:
        with pytest.raises(InvalidArgument, match=r"(?s)Invalid container name \(.*\), only "
                                                  r"\[a-zA-Z0-9\]\[a-zA-Z0-9_.-\] are allowed"):
            validate_container_name(bad)


def test_platform_and_wait_condition() -> None:
    validate_platform("linux")
    validate_platform("linux/amd64")
    validate_platform("linux/arm/v7")
    for bad in ["", "linux/", "a/b/c/d", "linux amd64"]:
        with pytest.raises(InvalidArgument):
            validate_platform(bad)
    assert validate_wait_condition(None) == "not-running"
    assert validate_wait_condition("") == "not-running"
    assert validate_wait_condition("removed") == "removed"
    with pytest.raises(InvalidArgument, match="invalid condition"):
        validate_wait_condition("exited")


def test_exec_create_body() -> None:
    validate_exec_create({"Cmd": ["cat"], "AttachStdin": True, "ConsoleSize": [24, 80]})
    for body, message in [({}, "No exec command specified"),
                          ({"Cmd": []}, "No exec command specified"),
                          ({"Cmd": None}, "No exec command specified"),
                          ({"Cmd": "ls"}, "'Cmd' must be an array"),
                          ({"Cmd": ["ls", 1]}, r"'Cmd\[1\]' must be a string"),
                          ({"Cmd": ["ls"], "Tty": 1}, "'Tty' must be a boolean"),
                          ({"Cmd": ["ls"], "DetachKeys": "ctrl-"}, "Invalid detach keys"),
                          ({"Cmd": ["ls"], "ConsoleSize": [1]}, "ConsoleSize")]:
        with pytest.raises(InvalidArgument, match=message):
            validate_exec_create(body)


def test_console_size() -> None:
    assert validate_console_size(None) is None
    assert validate_console_size([24, 80]) == (24, 80)
    for bad in [[24], [24, -1], [24, 80, 1], ["24", 80], [True, 80], "24x80"]:
        with pytest.raises(InvalidArgument):
            validate_console_size(bad)


# --- backend calls -------------------------------------------------------------------------

def test_complete_finishes_the_call_when_the_request_is_cancelled() -> None:
    async def scenario() -> None:
        finished = asyncio.Event()

        async def stop_container() -> str:
            await asyncio.sleep(0.02)
            finished.set()
            return "stopped"

        handler = asyncio.create_task(complete(stop_container()))
        await asyncio.sleep(0)
        handler.cancel()                       # the client went away
        with pytest.raises(asyncio.CancelledError):
            await handler
        await asyncio.wait_for(finished.wait(), 1)
        assert await complete(stop_container()) == "stopped"

    asyncio.run(scenario())
