"""Remote image URLs: refused by address, bounded in bytes, time and redirects (loopback test server)."""

import contextlib
import http.server
import threading
import time

import pytest

from monovl.server.errors import APIError
from monovl.server.remote_images import RemoteImageFetcher
from tests.conftest import png_bytes

PNG = png_bytes(32, 32)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        routes = {
            "/ok.png": (200, {"Content-Type": "image/png"}, PNG),
            "/big.png": (200, {"Content-Type": "image/png"}, b"x" * 5000),
            "/missing.png": (404, {}, b"no"),
            "/hop": (302, {"Location": "/ok.png"}, b""),
            "/loop": (302, {"Location": "/loop"}, b""),
        }
        if self.path == "/slow.png":
            time.sleep(1.5)
        status, headers, body = routes.get(self.path, (200, {}, PNG))
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
            self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def base_url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def fetcher(**kwargs) -> RemoteImageFetcher:
    return RemoteImageFetcher(**{"max_bytes": 4096, "allow_private": True, "timeout": 1.0, **kwargs})


def error_of(call) -> APIError:
    with pytest.raises(APIError) as error:
        call()
    return error.value


def test_fetches_and_follows_a_redirect(base_url):
    assert fetcher().fetch(f"{base_url}/ok.png", "p") == PNG
    assert fetcher().fetch(f"{base_url}/hop", "p") == PNG


def test_limits_on_size_redirects_time_and_status(base_url):
    assert error_of(lambda: fetcher().fetch(f"{base_url}/big.png", "p")).status == 413
    assert "redirects" in error_of(lambda: fetcher().fetch(f"{base_url}/loop", "p")).message
    assert error_of(lambda: fetcher().fetch(f"{base_url}/slow.png", "p")).code == "image_fetch_timeout"
    assert error_of(lambda: fetcher().fetch(f"{base_url}/missing.png", "p")).code == "image_fetch_failed"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/x.png",
        "http://localhost/x.png",
        "http://10.0.0.1/x.png",
        "http://192.168.1.1/x.png",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/x.png",
        "http://0.0.0.0/x.png",
    ],
)
def test_private_loopback_and_link_local_addresses_are_refused(url):
    error = error_of(lambda: RemoteImageFetcher(max_bytes=4096).fetch(url, "messages[0].content[0].image_url"))
    assert error.code == "image_url_refused" and error.param == "messages[0].content[0].image_url"


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x.png", "http:///nohost"])
def test_other_schemes_are_refused(url):
    assert error_of(lambda: RemoteImageFetcher(max_bytes=4096).fetch(url, "p")).code == "invalid_image_url"
