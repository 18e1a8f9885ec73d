"""Per-slot environment: a stable slot index, and with ``ports_per_slot`` a block of ports
per slot from ``port_base`` that no other slot of the pool shares; ``run`` exports them and
``allocate --json`` gives them; values that would put a port past 65535 are refused."""


def test_run_exports_the_slot_index_and_its_ports(cli, root, upstream, tmp_path):
    made = cli("create", "web", upstream, "-n", "3", "--ports-per-slot", "4",
               "--port-base", "30000", "--json")
    assert made.code == 0, made
    assert (made.json()["ports_per_slot"], made.json()["port_base"]) == (4, 30000)
    held = cli("allocate", "web", "--json").json()  # web-1: the run gets web-2
    assert (held["slot_index"], held["port"], held["ports"]) == \
        (1, 30000, [30000, 30001, 30002, 30003])
    seen = tmp_path / "env"
    ran = cli("run", "web", "--", "sh", "-c",
              f'printf "%s|%s|%s|%s\\n" "$NECROPOOL_SLOT_ID" "$NECROPOOL_SLOT_INDEX" '
              f'"$NECROPOOL_PORT" "$NECROPOOL_PORTS" >"{seen}"')
    assert ran.code == 0, ran
    assert seen.read_text() == "web-2|2|30004|30004 30005 30006 30007\n"


def test_port_blocks_never_overlap_and_follow_the_slot(cli, root, upstream):
    assert cli("create", "web", upstream, "-n", "3", "--ports-per-slot", "3").code == 0
    assert cli("add", "web").code == 0
    slots = cli("status", "web", "--json").json()["slots"]
    blocks = {s["slot_index"]: s["ports"] for s in slots}
    assert blocks == {k: list(range(20000 + (k - 1) * 3, 20000 + k * 3)) for k in (1, 2, 3, 4)}
    every = [p for ports in blocks.values() for p in ports]
    assert len(every) == len(set(every))
    assert cli("remove", "web-2").code == 0
    assert cli("add", "web").code == 0  # the number comes back, and its ports with it
    again = {s["slot_index"]: s["ports"] for s in cli("status", "web", "--json").json()["slots"]}
    assert again == blocks


def test_without_ports_run_gives_the_index_alone(cli, pool, tmp_path):
    held = cli("allocate", "web", "--json").json()
    assert (held["slot_index"], held["port"], held["ports"]) == (1, None, [])
    seen = tmp_path / "env"
    ran = cli("run", "web", "--", "sh", "-c",
              f'echo "$NECROPOOL_SLOT_INDEX ${{NECROPOOL_PORT-unset}}" >"{seen}"')
    assert ran.code == 0, ran
    assert seen.read_text() == "2 unset\n"


def test_ports_past_65535_or_bad_values_are_refused(cli, root, upstream, tmp_path):
    for args in (["--ports-per-slot", "0"], ["--ports-per-slot", "-3"],
                 ["--port-base", "0"], ["--port-base", "70000"],
                 ["--ports-per-slot", "10", "--port-base", "65530"]):
        bad = cli("create", "web", upstream, "-n", "2", *args)
        assert bad.code == 2, (args, bad)
        assert len(bad.stderr.strip().splitlines()) == 1
        assert not (root / "pools/web").exists()
    edge = cli("create", "web", upstream, "-n", "2", "--ports-per-slot", "10",
               "--port-base", "65516")  # slot 2: 65526-65535
    assert edge.code == 0, edge
    grown = cli("add", "web")
    assert grown.code == 2 and "65535" in grown.stderr, grown
    assert len(cli("status", "web", "--json").json()["slots"]) == 2
    assert not [p for p in (root / "pools").iterdir() if p.name.startswith(".")]

    config = tmp_path / "config.toml"
    config.write_text(f'[pools.api]\nurl = "{upstream}"\nnum_slots = 2\nports_per_slot = 40000\n')
    wrong = cli("sync", "--config", config)
    assert wrong.code == 2 and "pools.api.ports_per_slot" in wrong.stderr, wrong
    config.write_text(f'[pools.api]\nurl = "{upstream}"\nnum_slots = 2\nport_base = "x"\n')
    assert cli("sync", "--config", config).code == 2
    assert not (root / "pools/api").exists()
    # an existing pool's new setting is checked against its slots
    config.write_text(f'[pools.web]\nurl = "{upstream}"\nnum_slots = 2\n'
                      f'port_base = 65520\n')
    refused = cli("sync", "--config", config, "--json")
    assert refused.code == 3 and "65535" in refused.stdout, refused
    assert cli("status", "web", "--json").json()["port_base"] == 65516


def test_sync_sets_the_ports_from_the_config(cli, root, upstream, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(f'[pools.web]\nurl = "{upstream}"\nnum_slots = 2\n'
                      f'ports_per_slot = 5\nport_base = 40000\n')
    assert cli("sync", "--config", config).code == 0
    pool = cli("status", "web", "--json").json()
    assert [s["ports"][0] for s in pool["slots"]] == [40000, 40005]
    config.write_text(f'[pools.web]\nurl = "{upstream}"\nnum_slots = 2\nports_per_slot = 2\n')
    synced = cli("sync", "--config", config, "--json")
    assert synced.code == 0, synced
    [action] = synced.json()["actions"]
    assert action["changed"] == {"ports_per_slot": [5, 2]}
    assert cli("status", "web-2", "--json").json()["ports"] == [40002, 40003]
    assert "ports_per_slot = 2" in (root / "pools/web/pool.toml").read_text()
