"""What a utility VM's configuration tells the guest and leaves for the silod that adopts it."""

from __future__ import annotations

from silobox.compute.uvm.vm import NetworkAdapter, VMConfig, _config_from, _config_json


def test_network_card_on_the_kernel_command_line() -> None:
    v4 = NetworkAdapter(tap="sbxv1", switch_netns="/run/x/vswitch", mac="00:15:5d:00:00:02",
                        address="10.0.0.2/24", gateway="10.0.0.1")
    assert v4.kernel_arg() == "sbx.nic=00:15:5d:00:00:02,eth0,10.0.0.2/24,10.0.0.1,0"
    v6 = NetworkAdapter(tap="sbxv2", switch_netns="/run/x/vswitch", mac="00:15:5d:00:00:03",
                        ifname="eth1", address="10.1.0.2/24", mtu=1450,
                        address6="fd00::2/64")
    assert v6.kernel_arg() == \
        "sbx.nic=00:15:5d:00:00:03,eth1,10.1.0.2/24,-,1450,fd00::2/64,-"


def test_config_round_trips_through_owner_json() -> None:
    config = VMConfig(memory_mib=640, cpus=2, shares={"usr": "/usr"}, writable={"/a": "/a"},
                      nics=[NetworkAdapter(tap="t", switch_netns="/n", mac="m",
                                           address="10.0.0.2/24")],
                      dns={"Namespace": "/n", "Address": "127.0.0.1", "Port": 5353},
                      outlives_owner=True, owner_ref="/run/c/x")
    again = _config_from(_config_json(config))
    assert again == config and isinstance(again.nics[0], NetworkAdapter)
    assert _config_from({**_config_json(config), "from_a_newer_silod": 1}) == config
