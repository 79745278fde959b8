"""HCCL rank tables: MindFormers' own files (tests/fixtures/ranktables/) are the reference."""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import pytest

from mftasks.errors import ConfigError, MftasksError, OutputExistsError
from mftasks.ranktable import (
    RankTable, RankTableError, ServerSpec, add_commands, devices_of, generate, generate_cluster, load, merge,
    parse_device_range, read_hccn_conf, show, validate, world_size, write,
)

FIXTURES = Path(__file__).parent / "fixtures" / "ranktables"
HCCL_8P = FIXTURES / "hccl_8p_01234567_10.0.0.1.json"     # written by hccl_tools.py
HCCL_2S = FIXTURES / "hccl_2s_12p.json"                   # written by merge_hccl.py


def ips(last: int, n: int) -> list[str]:
    """The device IPs of the fixtures: device d of a host is 192.<d+1>.27.<last>."""
    return [f"192.{d + 1}.27.{last}" for d in range(n)]


def raw(path: Path = HCCL_2S) -> dict:
    return json.loads(path.read_text())


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    args = parser.parse_args(["ranktable", *argv])
    return args.func(args)


# --- MindFormers' files --------------------------------------------------------------------------

@pytest.mark.parametrize("path", [HCCL_8P, HCCL_2S], ids=lambda p: p.name)
def test_fixtures_validate_and_round_trip_byte_for_byte(path):
    assert validate(raw(path)) == []
    assert load(path).to_text() == path.read_text()


def test_generate_writes_what_hccl_tools_writes():
    table = generate("10.0.0.1", parse_device_range("[0,8)"), device_ips=ips(6, 8), hccn_conf=None)
    assert table.to_text() == HCCL_8P.read_text()


def test_merge_of_two_generated_tables_is_what_merge_hccl_writes():
    a = generate("10.0.0.1", list(range(8)), device_ips=ips(6, 8), hccn_conf=None)
    b = generate("10.0.0.2", list(range(4)), device_ips=ips(7, 4), hccn_conf=None)
    assert [d.rank_id for d in b.servers[0].devices] == [0, 1, 2, 3]
    merged = merge([a, b])
    assert merged.to_text() == HCCL_2S.read_text()
    assert world_size(merged) == 12 and [d.rank_id for d in devices_of(merged, 1)] == [8, 9, 10, 11]
    assert [d.rank_id for d in a.servers[0].devices] == list(range(8))  # inputs untouched


def test_merging_a_table_with_itself_names_the_duplicate_server():
    with pytest.raises(RankTableError) as e:
        merge([load(HCCL_8P), load(HCCL_8P)])
    assert e.value.problems == ["server_list[1].server_id: '10.0.0.1' is also server_list[0]; each server "
                                "must appear once (was the same table merged twice?)"]


# --- device ranges and hccn.conf ---------------------------------------------------------------------

@pytest.mark.parametrize("text, ids", [
    ("[0,8)", list(range(8))), ("[0,1)", [0]), ("[4,8)", [4, 5, 6, 7]), ("[10,16)", list(range(10, 16))),
    ("[8,16)", list(range(8, 16))), (" [ 0 , 4 ) ", [0, 1, 2, 3]),
    ("[0,4]", [0, 1, 2, 3]),  # run_distribute.sh loops i < END whatever the bracket
])
def test_device_range(text, ids):
    assert parse_device_range(text) == ids


@pytest.mark.parametrize("text, says", [
    ("0-8", 'is not a device range; write "[a,b)"'), ("[0,8", "is not a device range"),
    ("(0,8)", "is not a device range"), ("[a,b)", "is not a device range"), ("", "is not a device range"),
    ("[0;8)", "is not a device range"), ("[-1,4)", "is not a device range"),
    ("[8,0)", "holds no device: the start (8) must be below the end (0)"), ("[4,4)", "holds no device"),
    ("[0,17)", "ends at 17, past the last device"),
])
def test_bad_device_range_says_what_and_where(text, says):
    with pytest.raises(ConfigError) as e:
        parse_device_range(text, where="--device-range")
    assert says in str(e.value) and repr(text) in str(e.value) and "--device-range" in str(e.value)


def test_read_hccn_conf(tmp_path):
    conf = tmp_path / "hccn.conf"
    conf.write_text("address_0=192.1.27.6\nnetmask_0=255.255.255.0\naddress_10=192.11.27.6\n\n")
    assert read_hccn_conf(conf) == {0: "192.1.27.6", 10: "192.11.27.6"}
    conf.write_text("address_0=192.1.27.6\naddress_0=192.1.27.7\naddress_x=1.2.3.4\naddress_2=192.1.27.300\n")
    with pytest.raises(ConfigError) as e:
        read_hccn_conf(conf)
    assert [p.split(": ", 1)[0] for p in e.value.problems] == [f"{conf}:2", f"{conf}:3", f"{conf}:4"]
    assert "'192.1.27.300' is not a valid IPv4 address" in e.value.problems[2]


def test_generate_reads_hccn_conf_and_adds_pod_ip(tmp_path):
    conf = tmp_path / "hccn.conf"
    conf.write_text("".join(f"address_{d}={ip}\n" for d, ip in enumerate(ips(6, 8))))
    table = generate("10.0.0.1", [4, 5], hccn_conf=conf, pod_ip="172.16.0.5")
    assert table.to_json()["server_list"][0] == {
        "server_id": "10.0.0.1", "pod_ip": "172.16.0.5",
        "device": [{"device_id": "4", "device_ip": "192.5.27.6", "rank_id": "0"},
                   {"device_id": "5", "device_ip": "192.6.27.6", "rank_id": "1"}],
        "host_nic_ip": "reserve"}
    assert validate(table.to_json(), for_dynamic_cluster=True) == []
    with pytest.raises(ConfigError, match=r"no IP for devices 8, 9 in .*hccn.conf"):
        generate("10.0.0.1", [8, 9], hccn_conf=conf)


def test_generate_reports_every_problem_at_once(tmp_path):
    with pytest.raises(ConfigError) as e:
        generate("10.0.0.256", [0, 1], hccn_conf=tmp_path / "missing.conf", pod_ip="pod")
    text = str(e.value)
    assert "3 problems" in text and "server ip: '10.0.0.256' is not a valid IPv4" in text
    assert "pod ip: 'pod'" in text and "missing.conf does not exist" in text and "hccn_tool -i <id> -ip -g" in text
    with pytest.raises(ConfigError, match="2 given for 3 devices"):
        generate("10.0.0.1", [0, 1, 2], device_ips=ips(6, 2))
    with pytest.raises(ConfigError, match="device id 16 is out of range; device ids are 0..15"):
        generate("10.0.0.1", [15, 16], device_ips=ips(6, 2))


def test_generate_cluster_numbers_ranks_across_servers():
    table = generate_cluster([ServerSpec("10.0.0.1", [0, 1], ips(6, 2)),
                              {"server_id": "10.0.0.2", "device_ids": [0, 1], "device_ips": ips(7, 2),
                               "pod_ip": "10.0.0.2"}])
    assert [(d.rank_id, s.server_id, d.device_id) for _, s, d in table.ranks()] == [
        (0, "10.0.0.1", 0), (1, "10.0.0.1", 1), (2, "10.0.0.2", 0), (3, "10.0.0.2", 1)]
    with pytest.raises(ConfigError) as e:
        generate_cluster([{"server_id": "a", "device_ids": [0], "device_ips": []}, {"host": "b"},
                          ServerSpec("10.0.0.3", [0], ["192.1.1.1"])])
    assert "spec[0].device_ips=[]: 0 IPs for 1 device ids" in str(e.value)
    assert "unknown key 'host' at spec[1].host in cluster spec" in str(e.value)
    assert "spec[1]: missing required key(s) server_id, device_ids, device_ips" in str(e.value)


# --- validation of bad tables ---------------------------------------------------------------------

def broken(edit) -> list[str]:
    data = raw()
    edit(data)
    return validate(data)


def dev(data, server, index):
    return data["server_list"][server]["device"][index]


def test_malformed_json_names_file_line_and_column(tmp_path):
    bad = tmp_path / "hccl.json"
    bad.write_text('{\n    "version": "1.0",\n    "server_count": "1"\n    "server_list": []\n}')
    with pytest.raises(RankTableError) as e:
        load(bad)
    assert str(bad) in str(e.value) and "line 4 column 5" in str(e.value)
    with pytest.raises(RankTableError, match="no such file"):
        load(tmp_path / "absent.json")


def test_duplicate_rank_id():
    problems = broken(lambda d: dev(d, 1, 3).update(rank_id="2"))
    assert problems[0] == ("server_list[1].device[3].rank_id: rank 2 is also server_list[0].device[2].rank_id; "
                           "every rank id must appear once")
    assert "rank id 11 missing" in problems[1]


def test_missing_rank_id_gap():
    problems = broken(lambda d: dev(d, 1, 3).update(rank_id="12"))
    assert problems == [
        "server_list[1].device[3].rank_id: rank 12 is out of range: with 12 devices the rank ids must be 0..11",
        "server_list: rank id 11 missing: the 12 devices must have rank ids 0..11, each once "
        "(number them in server order, then device order)"]


def test_duplicate_device_id_on_a_server():
    assert broken(lambda d: dev(d, 1, 2).update(device_id="0")) == [
        "server_list[1].device[2].device_id: device 0 is also server_list[1].device[0] on this server; "
        "list each device once"]


def test_device_id_out_of_range():
    assert broken(lambda d: dev(d, 0, 7).update(device_id="16")) == [
        "server_list[0].device[7].device_id: 16 is out of range; device ids are 0..15 "
        "(a server has at most 16 devices)"]


def test_invalid_ip():
    assert broken(lambda d: dev(d, 1, 3).update(device_ip="10.0.0.300")) == [
        "server_list[1].device[3].device_ip: '10.0.0.300' is not a valid IPv4 address (like 192.168.1.8)"]
    assert broken(lambda d: d["server_list"][1].update(server_id="10.0.0")) == [
        "server_list[1].server_id: '10.0.0' is not a valid IPv4 address (like 192.168.1.8)"]
    assert broken(lambda d: d["server_list"][1].update(server_id="node_1")) == []  # names are fine
    assert "is also server_list[0].device[0].device_ip" in broken(
        lambda d: dev(d, 1, 0).update(device_ip="192.1.27.6"))[0]


def test_server_count_mismatch():
    assert broken(lambda d: d.update(server_count="3")) == [
        'server_count: "3" but server_list has 2 servers; set it to "2"']


def test_values_must_be_strings_and_every_problem_is_reported_at_once():
    def edit(d):
        d.update(version="2.0", status="initializing", server_count=2)
        dev(d, 0, 1)["rank_id"] = 1
        del dev(d, 1, 0)["device_ip"]
    problems = broken(edit)
    assert len(problems) == 5, problems
    assert problems[0].startswith("version: '2.0' is not supported")
    assert problems[1].startswith('server_count: must be a JSON string ("2")')
    assert problems[2].startswith('server_list[0].device[1].rank_id: must be a JSON string ("1")')
    assert problems[3] == 'server_list[1].device[0].device_ip: missing; add "device_ip": "<IPv4 address>"'
    assert problems[4].startswith("status: 'initializing': HCCL only uses a table whose status is \"completed\"")
    assert validate([]) == ["top level: expected a JSON object with version, server_count, server_list and "
                            "status, got list"]
    assert len(validate({})) == 4
    assert "server_list: must be a list of servers, not dict" in validate({"server_list": {}})


def test_load_raises_once_with_every_problem(tmp_path):
    data = raw()
    dev(data, 1, 3)["device_ip"] = "10.0.0.300"
    data["server_count"] = "3"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(RankTableError) as e:
        load(path)
    assert isinstance(e.value, MftasksError) and len(e.value.problems) == 2
    assert str(e.value).startswith(f"rank table {path} has 2 problems:")


def test_dynamic_cluster_needs_pod_ip_everywhere():
    problems = validate(raw(), for_dynamic_cluster=True)
    assert len(problems) == 2 and problems[0].startswith("server_list[0].pod_ip: missing; MindSpore's dynamic-cluster")
    data = raw()
    for i, s in enumerate(data["server_list"]):
        s["pod_ip"] = f"172.16.0.{i + 1}"
    assert validate(data, for_dynamic_cluster=True) == []


def test_version_1_2_superpod_table():
    data = raw()
    data["version"] = "1.2"
    for s in data["server_list"]:
        for d in s["device"]:
            d["super_device_id"] = str(100 + int(d["rank_id"]))
        s["host_ip"] = s["server_id"]
    data["super_pod_list"] = [{"super_pod_id": "0", "server_list": [{"server_id": "10.0.0.1"},
                                                                    {"server_id": "10.0.0.2"}]}]
    assert validate(data) == []
    table = RankTable.from_json(data)
    assert table.servers[1].extra == {"host_ip": "10.0.0.2"} and table.servers[0].devices[1].super_device_id == "101"
    assert json.loads(table.to_text()) == data
    assert merge([table]).super_pods == table.super_pods
    bad = copy.deepcopy(data)
    bad["super_pod_list"][0]["server_list"].append({"server_id": "10.0.0.9"})
    dev(bad, 0, 0)["super_device_id"] = "x"
    assert validate(bad) == [
        'server_list[0].device[0].super_device_id: "x" is not a non-negative integer in a string, like "0"',
        "super_pod_list[0].server_list[2].server_id: '10.0.0.9' is not a server of server_list"]


# --- files, text -------------------------------------------------------------------------------------

def test_write_is_idempotent_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "sub" / "hccl.json"
    table = load(HCCL_8P)
    assert write(table, out) is True and out.read_bytes() == HCCL_8P.read_bytes()
    assert write(table, out) is False
    other = load(HCCL_2S)
    with pytest.raises(OutputExistsError, match="holds a different rank table; pass --force"):
        write(other, out)
    assert out.read_bytes() == HCCL_8P.read_bytes()
    assert write(other, out, force=True) is True and out.read_bytes() == HCCL_2S.read_bytes()
    assert [p.name for p in out.parent.iterdir()] == ["hccl.json"]  # no temporary left behind


def test_show_world_size_devices_of():
    table = load(HCCL_2S)
    lines = show(table).splitlines()
    assert lines[0] == "rank table version 1.0: 2 servers, 12 ranks"
    assert lines[1].split() == ["rank", "server", "device", "device_ip"]
    assert lines[-1].split() == ["11", "10.0.0.2", "3", "192.4.27.7"] and len(lines) == 14
    assert world_size(table) == 12 and [d.device_id for d in devices_of(table, 1)] == [0, 1, 2, 3]
    with pytest.raises(RankTableError, match=r"server index 2 is out of range; the table has 2 servers \(indexes"):
        devices_of(table, 2)


# --- command line -----------------------------------------------------------------------------------

def test_cli_generate_merge_show_validate(tmp_path, capsys):
    a, b, m = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "m.json"
    assert run_cli("generate", "--device-range", "[0,8)", "--server-ip", "10.0.0.1",
                   "--device-ips", ",".join(ips(6, 8)), "--output", str(a)) == 0
    assert a.read_bytes() == HCCL_8P.read_bytes()
    assert run_cli("generate", "--device-range", "[0,4)", "--server-ip", "10.0.0.2",
                   "--device-ips", ",".join(ips(7, 4)), "--output", str(b)) == 0
    assert run_cli("merge", str(a), str(b), "--output", str(m)) == 0
    assert m.read_bytes() == HCCL_2S.read_bytes()
    assert "wrote: " in capsys.readouterr().out
    assert run_cli("show", str(m)) == 0 and "11    10.0.0.2  3       192.4.27.7" in capsys.readouterr().out
    assert run_cli("validate", str(a), str(m)) == 0
    assert capsys.readouterr().out.splitlines()[1] == f"{m}: ok, 2 servers, 12 ranks (version 1.0)"
    assert run_cli("validate", "--dynamic-cluster", str(m)) == 1
    assert "server_list[1].pod_ip: missing" in capsys.readouterr().out


def test_cli_errors(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert run_cli("validate", str(bad), str(HCCL_8P)) == 1
    out = capsys.readouterr().out
    assert f"{bad}: 1 problem\n  - not valid JSON" in out and f"{HCCL_8P}: ok" in out
    with pytest.raises(RankTableError, match="not valid JSON"):
        run_cli("merge", str(bad), "--output", str(tmp_path / "m.json"))
    with pytest.raises(ConfigError, match="--device-range"):
        run_cli("generate", "--device-range", "0-8", "--server-ip", "10.0.0.1", "--output", str(tmp_path / "x"))
    out = tmp_path / "hccl.json"
    write(load(HCCL_2S), out)
    with pytest.raises(OutputExistsError, match="holds a different rank table; pass --force"):
        run_cli("generate", "--server-ip", "10.0.0.1", "--device-ips", ",".join(ips(6, 8)), "--output", str(out))
    assert run_cli("generate", "--server-ip", "10.0.0.1", "--device-ips", ",".join(ips(6, 8)),
                   "--output", str(out), "--force") == 0
    assert out.read_bytes() == HCCL_8P.read_bytes()
    assert run_cli() == 2 and "generate" in capsys.readouterr().out


# --- issue 11: messages instead of tracebacks, unknown keys, --force never destroys ------------------

def test_deeply_nested_json_is_a_message_naming_the_file(tmp_path, capsys):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)  # json.loads: RecursionError
    assert run_cli("validate", str(deep)) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"{deep}: 1 problem",
        "  - nests lists or objects too deeply to be read (a rank table is four levels deep); is this really "
        "a rank table? Generate it again"]
    with pytest.raises(RankTableError, match=rf"^rank table {deep}: nests lists or objects too deeply"):
        run_cli("show", str(deep))
    # nested just below the parser's limit: no recursion in the messages either
    data = raw()
    data["server_list"][0]["device"][0]["device_ip"] = json.loads("[" * 900 + "]" * 900)
    assert validate(data) == ["server_list[0].device[0].device_ip: a JSON list is not a JSON string holding an "
                              "IP address"]


def test_binary_hccn_conf_is_a_message_naming_the_file(tmp_path):
    conf = tmp_path / "hccn.bin"
    conf.write_bytes(b"\x7fELF\x02\x01\x01\x00\x00\xff\xfe" * 50)
    with pytest.raises(ConfigError) as e:
        run_cli("generate", "--device-range", "[0,2)", "--server-ip", "10.0.0.1", "--hccn-conf", str(conf),
                "--output", str(tmp_path / "out.json"))
    assert str(e.value) == (
        f"invalid configuration in {conf}: not a text file (byte 7 is b'\\x00'), so not an hccn.conf, which "
        "holds address_<device id>=<ip> lines; pass the device IPs explicitly (--device-ips) or point "
        "--hccn-conf at the host's hccn.conf")
    conf.write_bytes(b"address_0=192.1.27.6\n\xff\xfe\n")  # not UTF-8, no NUL
    with pytest.raises(ConfigError, match=r"not a text file \(byte 21 is b'\\xff'\)"):
        read_hccn_conf(conf)
    assert not (tmp_path / "out.json").exists()


def test_unknown_keys_are_listed_all_at_once():
    data = raw()
    dev(data, 0, 1)["devcie_ip"] = dev(data, 0, 1).pop("device_ip")
    data["server_list"][1]["hostip"] = "10.0.0.2"
    data["server_list"][1]["device"][0]["comment"] = {"why": "x"}
    data["sever_count"] = "2"
    problems = validate(data)
    known_dev = ("backup_device_ip, backup_device_port, device_id, device_ip, device_logical_id, device_port, "
                 "host_port, rank_id, super_device_id")
    assert problems == [
        'server_list[0].device[1].device_ip: missing; add "device_ip": "<IPv4 address>"',
        f'server_list[0].device[1].devcie_ip: unknown key; did you mean "device_ip"? known keys here: {known_dev} '
        "(HCCL ignores any other key: fix the spelling or remove it)",
        'server_list[1].hostip: unknown key; did you mean "host_ip"? known keys here: container_ip, device, '
        "hardware_type, host_ip, host_nic_ip, pod_ip, server_id, server_ip (HCCL ignores any other key: fix the "
        "spelling or remove it)",
        f"server_list[1].device[0].comment: unknown key; known keys here: {known_dev} (HCCL ignores any other "
        "key: fix the spelling or remove it)",
        'sever_count: unknown key; did you mean "server_count"? known keys here: server_count, server_list, '
        "status, super_pod_list, version (HCCL ignores any other key: fix the spelling or remove it)"]
    with pytest.raises(RankTableError, match="has 5 problems"):
        RankTable.from_json(data, where="t.json")


def test_documented_keys_still_validate():
    """HCCL's documented 1.2 example (ports, backup IPs, host_ip) and MindCluster's hccl.json keys."""
    data = raw()
    data["version"] = "1.2"
    for s in data["server_list"]:
        s.update(host_ip=s["server_id"], server_ip=s["server_id"], container_ip="172.16.0.9",
                 hardware_type="800I-A2-32G")
        for d in s["device"]:
            r = int(d["rank_id"])
            d.update(super_device_id=str(r), device_port="16666", backup_device_ip=f"192.168.9.{r}",
                     backup_device_port="16667", host_port="16665", device_logical_id=d["device_id"])
    data["super_pod_list"] = [{"super_pod_id": "0", "server_list": [{"server_id": "10.0.0.1"}]}]
    assert validate(data) == []
    assert json.loads(RankTable.from_json(data).to_text()) == data  # kept as read
    dev(data, 0, 0)["device_port"] = 16666
    dev(data, 0, 1)["backup_device_ip"] = "192.168.9"
    data["super_pod_list"][0]["server_list"][0]["sid"] = "x"
    assert validate(data) == [
        'server_list[0].device[0].device_port: must be a JSON string ("16666"), not the number 16666; HCCL reads '
        "every value of a rank table as a string",
        "server_list[0].device[1].backup_device_ip: '192.168.9' is not a valid IPv4 address (like 192.168.1.8)",
        'super_pod_list[0].server_list[0].sid: unknown key; known keys here: server_id (HCCL ignores any other '
        "key: fix the spelling or remove it)"]


@pytest.mark.parametrize("content, says", [
    (b"my notes\n", "is not a rank table (not valid JSON: Expecting value at line 1 column 1)"),
    (b"{}", "is not a valid rank table (version: missing; add \"version\": \"1.0\" and 3 more)"),
    (b"\x00\xff binary", "is not a rank table (is not UTF-8 text"),
    (b'{"version": "1.0", "server_count": "0", "server_list": [], "status": "completed"}',
     "is not a valid rank table (server_list: empty; a rank table needs at least one server)"),
], ids=["text", "empty-object", "binary", "invalid-table"])
def test_force_never_replaces_a_file_that_is_not_a_rank_table(tmp_path, content, says):
    out = tmp_path / "out.json"
    out.write_bytes(content)
    for force in ([], ["--force"]):
        with pytest.raises(OutputExistsError) as e:
            run_cli("generate", "--server-ip", "10.0.0.1", "--device-ips", ",".join(ips(6, 8)),
                    "--output", str(out), *force)
        assert str(e.value).startswith(f"--output {out} already exists and {says}")
        assert str(e.value).endswith("mftasks replaces only a rank table (--force included): move that file "
                                     "away or choose another output file")
        with pytest.raises(OutputExistsError, match="mftasks replaces only a rank table"):
            run_cli("merge", str(HCCL_8P), "--output", str(out), *force)
        with pytest.raises(OutputExistsError, match="mftasks replaces only a rank table"):
            write(load(HCCL_8P), out, force=True)
        assert out.read_bytes() == content
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_output_that_is_an_input_is_refused_whatever_the_flags(tmp_path):
    conf = tmp_path / "hccn.conf"
    conf_text = "".join(f"address_{d}={ip}\n" for d, ip in enumerate(ips(6, 8)))
    conf.write_text(conf_text)
    for out in (conf, tmp_path / "." / "hccn.conf"):
        with pytest.raises(OutputExistsError) as e:
            run_cli("generate", "--server-ip", "10.0.0.1", "--hccn-conf", str(conf), "--output", str(out), "--force")
        assert str(e.value) == (f"--output {out} is the input {conf}; mftasks never writes over its input "
                                "(--force included): choose another output file")
    assert conf.read_text() == conf_text
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    write(load(HCCL_8P), a)
    b.write_text(HCCL_8P.read_text().replace("10.0.0.1", "10.0.0.2").replace(".6\"", ".7\""))
    (tmp_path / "link.json").hardlink_to(b)
    for out in (a, b, tmp_path / "link.json"):
        with pytest.raises(OutputExistsError, match=r"is the input .*; mftasks never writes over its input"):
            run_cli("merge", str(a), str(b), "--output", str(out), "--force")
    assert a.read_bytes() == HCCL_8P.read_bytes()
    assert run_cli("merge", str(a), str(b), "--output", str(tmp_path / "m.json")) == 0
