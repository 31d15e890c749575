"""The endpoint's remote image fetches (s3:// and http(s)://): bounded in time and size, never internal.

- http(s): the host is resolved and each of its addresses must be global: loopback, private,
  link-local (cloud metadata at 169.254.169.254), shared, multicast and reserved ranges are refused,
  unless the host is listed in `fetch.allow_hosts` (a deployment's own image server). The connection
  goes to the address that was checked (TLS still verifies the host name), so DNS cannot answer
  differently in between; redirects are followed one at a time and each target is checked again.
- s3: only buckets in `fetch.allow_buckets` when that list is set; each request bounded by
  `limits.fetch_timeout_s`.
- A refused or failed fetch answers 400 naming the image and the reason, never the fetched bytes.
The caller bounds the whole fetch by `limits.fetch_timeout_s` and runs S3 reads on a thread pool of
their own, so slow stores cannot hold the threads that decode images for other requests.
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urljoin, urlsplit

from fastapi import HTTPException

from rayiqa.config.serve import FetchConfig, LimitsConfig

MAX_REDIRECTS = 5
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})


def refused(index: int, reason: str) -> HTTPException:
    return HTTPException(status_code=400, detail=f"image {index}: {reason}")


def is_public(address: str) -> bool:
    """Whether an IP address is globally routable (IPv4-mapped IPv6 judged as its IPv4 address)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


async def checked_address(url: str, index: int, fetch: FetchConfig) -> str:
    """The IP address to connect to for `url`, after the host and every address it resolves to passed
    the checks; 400 otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise refused(index, f"uri must be s3:// or http(s)://host/..., got {url!r}")
    host = parts.hostname
    allowed = fetch.allow_hosts is not None and host in fetch.allow_hosts
    if fetch.allow_hosts is not None and not allowed:
        raise refused(index, f"host {host!r} is not in fetch.allow_hosts")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise refused(index, f"cannot resolve host {host!r}: {e}") from None
    addresses = sorted({info[4][0] for info in infos})
    if not allowed and not all(is_public(a) for a in addresses):
        raise refused(index, f"host {host!r} resolves to a non-public address; internal addresses are not fetched")
    return addresses[0]


def _netloc(host: str, port: int | None) -> str:
    literal = f"[{host}]" if ":" in host else host
    return f"{literal}:{port}" if port else literal


async def read_http(url: str, index: int, limits: LimitsConfig, fetch: FetchConfig) -> bytes:
    """GET an http(s) image, checking the host of the URL and of each redirect, up to max_bytes."""
    import httpx

    async with httpx.AsyncClient(timeout=limits.fetch_timeout_s, follow_redirects=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            address = await checked_address(url, index, fetch)
            parts = urlsplit(url)
            pinned = parts._replace(netloc=_netloc(address, parts.port)).geturl()
            request = client.build_request("GET", pinned, headers={"Host": _netloc(parts.hostname, parts.port)},
                                           extensions={"sni_hostname": parts.hostname})
            try:
                resp = await client.send(request, stream=True)
            except httpx.HTTPError as e:
                raise refused(index, f"cannot fetch {url}: {type(e).__name__}") from None
            try:
                if resp.status_code in REDIRECT_CODES and "location" in resp.headers:
                    url = urljoin(url, resp.headers["location"])
                    continue
                if resp.status_code != 200:
                    raise refused(index, f"GET {url} answered {resp.status_code}")
                chunks, size = [], 0
                async for chunk in resp.aiter_bytes():
                    size += len(chunk)
                    if size > limits.max_bytes:
                        raise HTTPException(413, f"image {index}: {url} is larger than max_bytes {limits.max_bytes}")
                    chunks.append(chunk)
                return b"".join(chunks)
            except httpx.HTTPError as e:
                raise refused(index, f"cannot fetch {url}: {type(e).__name__}") from None
            finally:
                await resp.aclose()
    raise refused(index, f"more than {MAX_REDIRECTS} redirects from {url}")


def check_bucket(uri: str, index: int, fetch: FetchConfig) -> None:
    """400 unless the s3:// URI's bucket is allowed (any bucket when fetch.allow_buckets is null)."""
    bucket = uri.partition("://")[2].split("/", 1)[0]
    if fetch.allow_buckets is not None and bucket not in fetch.allow_buckets:
        raise refused(index, f"bucket {bucket!r} is not in fetch.allow_buckets")
