"""What a fabric is made of (`LinkSpec`, `FabricSpec`) and how its parts are named and addressed.

Pure: no I/O. Naming scheme (Linux interface names are at most 15 characters):

| object | name | where |
| --- | --- | --- |
| namespace of end e | `qroute-{tag}-{e}` | /run/netns |
| control link, root side | `qf-{tag}-c{e}` | root namespace |
| control link, namespace side | `ctl` | namespace of end e |
| link i (veth or TUN) | `{link.name}` | each namespace (same name at both ends) |
| TUN of link i before it is moved | `qf-{tag}-t{i:x}{e}` | root namespace, for a moment |

Every name that ever appears in the root namespace carries the tag, so fabrics of
concurrent runs never collide there; inside a namespace only this fabric's links exist.

Addresses: link i uses 10.214.i.0/30 (end 0 `.1`, end 1 `.2`); both live only inside
the two namespaces. The control links use one /24 slot `s` of 10.213.0.0/16 in the root
namespace: end e's root side is 10.213.s.(4e+1), its namespace side 10.213.s.(4e+2).
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass

from qroute.errors import QrouteError

KINDS = ("veth", "delay")
MIN_DELAY_US = 100.0  # userspace wake-up jitter is tens of us: shorter delays would be noise
MAX_DELAY_US = 1_000_000.0
MAX_LINKS = 16  # one hex digit in the TUN's temporary root-side name
MAX_IFNAME = 15
RESERVED_NAMES = ("lo", "ctl")
NAMESPACE_PREFIX = "qroute-"
ROOT_IF_PREFIX = "qf-"
CONTROL_IF = "ctl"
LINK_NAME_RE = re.compile(r"[a-z][a-z0-9]*")
TAG_RE = re.compile(r"[a-z0-9]{1,8}")
NAMESPACE_RE = re.compile(r"qroute-([a-z0-9]{1,8})-([01])")
ROOT_IF_RE = re.compile(r"qf-([a-z0-9]{1,8})-(c[01]|t[0-9a-f][01])")
CONTROL_NET = ipaddress.ip_network("10.213.0.0/16")
LINK_NET = ipaddress.ip_network("10.214.0.0/16")
ENDS = (0, 1)


@dataclass(frozen=True)
class LinkSpec:
    """One path between the two ends.

    `kind`: "veth" (kernel veth pair) or "delay" (two TUN devices joined by a userspace
    forwarder that holds every packet `delay_us` before passing it on, in each direction,
    so a round trip gains 2 x delay_us; 0 means "forwarder only", otherwise at least
    100 us). `rate_mbit`: shape each direction with a token bucket (tc tbf) at this many
    Mbit/s, on either kind; None leaves the link unshaped.
    """

    name: str
    kind: str = "veth"
    rate_mbit: float | None = None
    delay_us: float = 0.0

    def __post_init__(self) -> None:
        check_link_name(self.name)
        if self.kind not in KINDS:
            raise QrouteError(f"link {self.name!r}: kind {self.kind!r}: expected one of {', '.join(KINDS)}")
        if self.rate_mbit is not None:
            check_number(f"link {self.name!r}: rate_mbit", self.rate_mbit, low=0.0, strict=True)
        check_number(f"link {self.name!r}: delay_us", self.delay_us, low=0.0, strict=False)
        if self.kind == "veth" and self.delay_us != 0:
            raise QrouteError(f"link {self.name!r}: delay_us={self.delay_us!r} on kind 'veth': "
                              "expected 0 (use kind 'delay' for a delay line)")  # fmt: skip
        if self.kind == "delay" and 0 < self.delay_us < MIN_DELAY_US:
            raise QrouteError(f"link {self.name!r}: delay_us={self.delay_us!r}: expected 0 (forwarder only) "
                              f"or >= {MIN_DELAY_US:g} (shorter delays drown in userspace timer jitter)")  # fmt: skip
        if self.delay_us > MAX_DELAY_US:
            raise QrouteError(f"link {self.name!r}: delay_us={self.delay_us!r}: expected <= {MAX_DELAY_US:g}")


@dataclass(frozen=True)
class FabricSpec:
    """The links between end 0 and end 1; `tag` names this fabric's objects (default: from the pid)."""

    links: tuple[LinkSpec, ...]
    tag: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.links, list):
            object.__setattr__(self, "links", tuple(self.links))
        if not isinstance(self.links, tuple) or not all(isinstance(x, LinkSpec) for x in self.links):
            raise QrouteError(f"links={self.links!r}: expected a tuple of LinkSpec")
        if not 1 <= len(self.links) <= MAX_LINKS:
            raise QrouteError(f"{len(self.links)} links: expected between 1 and {MAX_LINKS}")
        names = [x.name for x in self.links]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise QrouteError(f"link names {', '.join(duplicates)} repeated: expected unique link names")
        if self.tag is not None:
            check_tag(self.tag)

    def link(self, name: str) -> LinkSpec:
        for spec in self.links:
            if spec.name == name:
                return spec
        raise QrouteError(f"link {name!r}: expected one of {', '.join(x.name for x in self.links)}")


def check_link_name(name) -> None:
    if not isinstance(name, str) or not LINK_NAME_RE.fullmatch(name):
        raise QrouteError(f"link name {name!r}: expected lowercase letters and digits, starting with a letter")
    if len(name) > MAX_IFNAME:
        raise QrouteError(f"link name {name!r} has {len(name)} characters: expected at most {MAX_IFNAME} "
                          "(it is the interface name)")  # fmt: skip
    if name in RESERVED_NAMES:
        raise QrouteError(f"link name {name!r}: expected a name other than {', '.join(RESERVED_NAMES)}")


def check_tag(tag) -> None:
    if not isinstance(tag, str) or not TAG_RE.fullmatch(tag):
        raise QrouteError(f"fabric tag {tag!r}: expected 1 to 8 lowercase letters or digits")


def check_number(name: str, value, *, low: float, strict: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (strict and value == low):
        raise QrouteError(f"{name}={value!r}: expected a finite number {'>' if strict else '>='} {low:g}")


def namespace_name(tag: str, end: int) -> str:
    return f"{NAMESPACE_PREFIX}{tag}-{end}"


def control_root_if(tag: str, end: int) -> str:
    return f"{ROOT_IF_PREFIX}{tag}-c{end}"


def tun_root_if(tag: str, index: int, end: int) -> str:
    return f"{ROOT_IF_PREFIX}{tag}-t{index:x}{end}"


def link_address(index: int, end: int) -> str:
    """End `end`'s address on link `index` (inside the namespaces only)."""
    return str(LINK_NET.network_address + 256 * index + 1 + end)


def control_slot_net(slot: int) -> ipaddress.IPv4Network:
    return ipaddress.ip_network(f"{CONTROL_NET.network_address + 256 * slot}/24")


def control_addresses(slot: int, end: int) -> tuple[str, str]:
    """(root side, namespace side) addresses of end `end`'s control link; each pair is a /30."""
    base = CONTROL_NET.network_address + 256 * slot + 4 * end
    return str(base + 1), str(base + 2)


def tbf_params(rate_mbit: float) -> tuple[int, float]:
    """(burst bytes, queue latency ms) for a tbf at `rate_mbit`.

    burst: 1 ms of traffic at the rate, at least two full 1514-byte frames. Small enough
    that a message of a few KiB already sees the rate (what an alpha-beta fit assumes);
    tbf splits the veth's 64 KiB GSO packets when they exceed it. At 200 Mbit/s: 25 kB.
    latency: how long a packet may wait in the queue (limit = rate x latency + burst);
    20 ms keeps a TCP stream from dropping at the bucket, and only bulk load queues.
    """
    bytes_per_ms = rate_mbit * 1e6 / 8 / 1e3
    return max(int(bytes_per_ms), 2 * 1514), 20.0
