"""Bad fabric specs fail on construction with a one-line QrouteError; no root needed."""

import pytest

from qroute.errors import QrouteError
from qroute.fabric import Fabric, FabricError, FabricSpec, LinkSpec
from qroute.fabric import spec as names


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda: FabricSpec((LinkSpec("a"), LinkSpec("a", "delay"))), "repeated"),
        (lambda: LinkSpec("a", rate_mbit=-5), "rate_mbit=-5"),
        (lambda: LinkSpec("a", rate_mbit=0), "rate_mbit=0"),
        (lambda: LinkSpec("a", rate_mbit=float("nan")), "rate_mbit=nan"),
        (lambda: LinkSpec("a", delay_us=500), "kind 'veth'"),
        (lambda: LinkSpec("a", "delay", delay_us=-1), "delay_us=-1"),
        (lambda: LinkSpec("a", "delay", delay_us=50), "delay_us=50"),
        (lambda: LinkSpec("a", "wire"), "kind 'wire'"),
        (lambda: LinkSpec("averyveryverylongname"), "at most 15"),
        (lambda: LinkSpec("Bad-Name"), "'Bad-Name'"),
        (lambda: LinkSpec("lo"), "'lo'"),
        (lambda: LinkSpec("ctl"), "'ctl'"),
        (lambda: FabricSpec(()), "0 links"),
        (lambda: FabricSpec(tuple(LinkSpec(f"l{i}") for i in range(17))), "17 links"),
        (lambda: FabricSpec((LinkSpec("a"),), tag="waytoolongtag"), "'waytoolongtag'"),
        (lambda: FabricSpec((LinkSpec("a"),), tag="Up"), "'Up'"),
        (lambda: FabricSpec(("a",)), "LinkSpec"),
    ],
)
def test_bad_specs_raise_one_line(make, needle):
    with pytest.raises(QrouteError) as info:
        make()
    message = str(info.value)
    assert needle in message and "\n" not in message, message


def test_good_spec_and_names_fit_interface_limits():
    spec = FabricSpec([LinkSpec("nvlinkx4fabric1"), LinkSpec("far", "delay", rate_mbit=1000, delay_us=0)])
    assert isinstance(spec.links, tuple) and spec.link("far").kind == "delay"
    longest = "9" * 8
    for end in (0, 1):
        assert len(names.control_root_if(longest, end)) <= names.MAX_IFNAME
        assert len(names.tun_root_if(longest, names.MAX_LINKS - 1, end)) <= names.MAX_IFNAME
        assert names.NAMESPACE_RE.fullmatch(names.namespace_name(longest, end))


def test_addresses_are_distinct_per_link_and_end():
    addresses = {names.link_address(i, e) for i in range(names.MAX_LINKS) for e in (0, 1)}
    addresses |= {a for s in (0, 255) for e in (0, 1) for a in names.control_addresses(s, e)}
    assert len(addresses) == 2 * names.MAX_LINKS + 8


def test_queries_before_building_raise():
    fabric = Fabric([LinkSpec("a")])
    with pytest.raises(FabricError, match="not built yet"):
        fabric.namespace(0)
    with pytest.raises(QrouteError, match="not built yet"):
        fabric.link("a")
