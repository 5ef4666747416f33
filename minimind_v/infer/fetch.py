"""Download a remote image for `--allow-remote-images` without letting clients reach what they should not.

A server that fetches URLs for its clients can be pointed at the machines only it can see: its own loopback
services, the private network, the cloud metadata endpoint (169.254.169.254). So the host name is resolved
here, every address it resolves to must be a public one, and the connection goes to that checked address
(with the original host name in the Host header and for TLS) — resolving again at connect time would let a DNS
answer change in between (DNS rebinding). Redirects are not followed (each hop would need the same checks);
the download is bounded in size and in total time, not only per read.
"""
from __future__ import annotations

import ipaddress
import socket
import time
from typing import Callable
from urllib.parse import urlsplit, urlunsplit

from .images import ImageError, ImageLimits

Resolver = Callable[[str, int], list[str]]


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [info[4][0] for info in infos]


def is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, trusted: tuple[str, ...] = ()) -> bool:
    """True for addresses on the public internet (or inside one of the `trusted` networks)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:  # ::ffff:127.0.0.1 is loopback
        ip = ip.ipv4_mapped
    if any(ip in ipaddress.ip_network(net, strict=False) for net in trusted):
        return True
    # is_global is False for loopback, private, link-local (the metadata endpoint), shared (100.64/10),
    # documentation and reserved ranges; multicast is refused separately since some of it counts as global.
    return ip.is_global and not ip.is_multicast


def checked_address(url: str, limits: ImageLimits, resolve: Resolver = system_resolver) -> tuple[str, str, int]:
    """(host, address, port) of `url`, the address checked to be public; ImageError otherwise."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError as e:
        raise ImageError(f"malformed image URL: {e}", "invalid_image_url") from None
    if not host:
        raise ImageError("image URL has no host", "invalid_image_url")
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            addresses = [ipaddress.ip_address(a.split("%")[0]) for a in resolve(host, port)]
        except (OSError, UnicodeError, ValueError) as e:
            raise ImageError(f"could not resolve the image host {host[:60]!r}: {e}", "image_fetch_failed") from None
    if not addresses:
        raise ImageError(f"the image host {host[:60]!r} has no address", "image_fetch_failed")
    for ip in addresses:  # all of them: a name may resolve to one public and one private address
        if not is_public(ip, limits.trusted_networks):
            raise ImageError(f"the image host {host[:60]!r} resolves to a non-public address ({ip}); this server "
                             "only fetches images from the public internet", "image_url_forbidden")
    return host, str(addresses[0]), port


def fetch_image(url: str, limits: ImageLimits, resolve: Resolver = system_resolver) -> bytes:
    """The bytes at a public http(s) URL, at most limits.max_bytes, within limits.remote_timeout_s."""
    import httpx

    host, address, port = checked_address(url, limits, resolve)
    parts = urlsplit(url)
    netloc = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    target = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    default_port = port == (443 if parts.scheme.lower() == "https" else 80)
    name = f"[{host}]" if ":" in host else host  # an IPv6 literal keeps its brackets in the Host header
    headers = {"Host": name if default_port else f"{name}:{port}"}
    deadline = time.monotonic() + limits.remote_timeout_s
    data = bytearray()
    try:
        # trust_env=False: a proxy from the environment would resolve the name again, on its own.
        with httpx.Client(timeout=limits.remote_timeout_s, follow_redirects=False, trust_env=False) as client, \
                client.stream("GET", target, headers=headers, extensions={"sni_hostname": host}) as r:
            if r.status_code != 200:
                raise ImageError(f"fetching the image gave HTTP {r.status_code}", "image_fetch_failed")
            for chunk in r.iter_bytes():
                data += chunk
                if len(data) > limits.max_bytes:
                    raise ImageError(f"image is over the limit of {limits.max_bytes} bytes", "image_too_large")
                if time.monotonic() > deadline:
                    raise ImageError(f"fetching the image took over {limits.remote_timeout_s:g} s",
                                     "image_fetch_failed")
    except (httpx.HTTPError, httpx.InvalidURL, ValueError, UnicodeError) as e:
        if isinstance(e, ImageError):
            raise
        raise ImageError(f"could not fetch the image: {e}", "image_fetch_failed") from None
    return bytes(data)
