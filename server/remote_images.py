"""Fetch an `http(s)` image URL safely: off unless enabled, public addresses only, bounded.

Each hop resolves the host once, refuses it unless every address is globally routable (no
loopback, private, link-local or reserved ranges), then connects to that very address (so DNS
cannot change between the check and the connection), with limits on bytes, time and redirects.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from urllib.parse import urljoin, urlsplit

from monovl.server.errors import APIError, bad_request

REDIRECTS = (301, 302, 303, 307, 308)


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self.address = address

    def connect(self) -> None:
        raw = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(raw, server_hostname=self.host)


class RemoteImageFetcher:
    def __init__(
        self, max_bytes: int, timeout: float = 10.0, max_redirects: int = 3, allow_private: bool = False
    ) -> None:
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.max_redirects = max_redirects
        self.allow_private = allow_private  # for tests against a loopback server only

    def fetch(self, url: str, param: str) -> bytes:
        deadline = time.monotonic() + self.timeout
        for _ in range(self.max_redirects + 1):
            response = self._get(url, param, deadline)
            if response.status in REDIRECTS and response.getheader("Location"):
                url = urljoin(url, response.getheader("Location"))
                continue
            if response.status != 200:
                raise bad_request(f"fetching the image gave HTTP {response.status}", param, "image_fetch_failed")
            return self._read(response, param)
        raise bad_request(f"more than {self.max_redirects} redirects", param, "image_fetch_failed")

    def _get(self, url: str, param: str, deadline: float) -> http.client.HTTPResponse:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise bad_request("image URLs must be http(s) or data:", param, "invalid_image_url")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        address = self._public_address(parts.hostname, port, param)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise bad_request("fetching the image took too long", param, "image_fetch_timeout")
        kind = _PinnedHTTPSConnection if parts.scheme == "https" else _PinnedHTTPConnection
        connection = kind(parts.hostname, port, address, remaining)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            connection.request("GET", target, headers={"User-Agent": "monovl", "Accept": "image/*"})
            return connection.getresponse()
        except TimeoutError:
            raise bad_request("fetching the image took too long", param, "image_fetch_timeout") from None
        except (OSError, http.client.HTTPException) as e:
            raise bad_request(f"could not fetch the image ({type(e).__name__})", param, "image_fetch_failed") from None

    def _public_address(self, host: str, port: int, param: str) -> str:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror:
            raise bad_request("the image URL's host does not resolve", param, "image_fetch_failed") from None
        addresses = [info[4][0] for info in infos]
        if not self.allow_private and not all(ipaddress.ip_address(a).is_global for a in addresses):
            raise bad_request(
                "image URLs to private, loopback or link-local addresses are refused", param, "image_url_refused"
            )
        return addresses[0]

    def _read(self, response: http.client.HTTPResponse, param: str) -> bytes:
        length = response.getheader("Content-Length")
        if length and length.isdigit() and int(length) > self.max_bytes:
            raise APIError(413, f"image is larger than {self.max_bytes} bytes", param=param, code="image_too_large")
        try:
            data = response.read(self.max_bytes + 1)
        except TimeoutError:
            raise bad_request("fetching the image took too long", param, "image_fetch_timeout") from None
        if len(data) > self.max_bytes:
            raise APIError(413, f"image is larger than {self.max_bytes} bytes", param=param, code="image_too_large")
        return data
