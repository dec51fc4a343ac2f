"""IP address validation for the admin commands, with jambonz's rules (SPEC 5.1, SPEC 6 items 5-6)."""

from __future__ import annotations

import ipaddress
import re

# jambonz's isValidIPv4: four dot-separated decimal octets 0-255 (a leading zero is tolerated, as in
# `192.168.001.1`); nothing else around them: no spaces, port, mask, or trailing dot.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)"
_IPV4 = re.compile(rf"(?:{_OCTET}\.){{3}}{_OCTET}")


def is_valid_ipv4(text: object) -> bool:
    return isinstance(text, str) and _IPV4.fullmatch(text) is not None


def is_valid_ipv6(text: object) -> bool:
    """Any RFC 4291 spelling (full, compressed, `::1`, `::`, IPv4-suffixed); no zone index."""
    if not isinstance(text, str) or "%" in text or not text.isascii():
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def is_valid_ip(text: object) -> bool:
    return is_valid_ipv4(text) or is_valid_ipv6(text)


def canonical_ip(text: str) -> str:
    """One spelling per address, the one the heartbeat compares source IPs in: IPv4 without
    leading zeros, IPv6 compressed and lower-case. `text` must be a valid IP."""
    if is_valid_ipv4(text):
        return ".".join(str(int(octet)) for octet in text.split("."))
    return ipaddress.IPv6Address(text).compressed
