import base64
import errno
import json
import os
import socket
import threading
from datetime import UTC, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from gate.alerts.alertmanager import OutgoingAlert, WebhookError, alertname, send, to_alertmanager

OPENED = datetime(2025, 3, 1, 12, 0, 0, 250_000, tzinfo=UTC)
FIRING = OutgoingAlert(
    "distance",
    {"suite": "render", "net": "alex", "weights_version": "0.1"},
    OPENED,
    annotations={"summary": "b.png -> cand/b.png at 0.15 > 0.1"},
    generator_url="http://gate.local/runs/7",
)
RESOLVED = OutgoingAlert(
    "sparsity",
    {"suite": "render", "layer": "relu1", "side": "cand"},
    OPENED,
    ends_at=datetime(2025, 3, 1, 14, 30, tzinfo=timezone(timedelta(hours=2))),  # 12:30 UTC
)
EXPECTED_BODY = [
    {
        "labels": {"alertname": "LpipsGateDistance", "suite": "render", "net": "alex", "weights_version": "0.1"},
        "annotations": {"summary": "b.png -> cand/b.png at 0.15 > 0.1"},
        "startsAt": "2025-03-01T12:00:00.250Z",
        "generatorURL": "http://gate.local/runs/7",
    },
    {
        "labels": {"alertname": "LpipsGateSparsity", "suite": "render", "layer": "relu1", "side": "cand"},
        "annotations": {},
        "startsAt": "2025-03-01T12:00:00.250Z",
        "endsAt": "2025-03-01T12:30:00.000Z",
    },
]


class _Receiver:
    """A real HTTP server on loopback that records every POST and answers with `status`."""

    def __init__(self, status=200, delay=0.0):
        received = self.received = []
        authorizations = self.authorizations = []
        answer = threading.Event()
        self.release = answer

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((self.path, self.headers["Content-Type"], body))
                authorizations.append(self.headers["Authorization"])
                if delay:
                    answer.wait(delay)
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"bad alert: missing labels" if status >= 400 else b"")

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/api/v2/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def test_payload_is_alertmanager_v2():
    assert to_alertmanager([FIRING, RESOLVED]) == EXPECTED_BODY


def test_send_posts_exactly_that_json():
    with _Receiver() as receiver:
        assert send(receiver.url, to_alertmanager([FIRING, RESOLVED]), timeout=5) == 200
    [(path, content_type, body)] = receiver.received
    assert (path, content_type) == ("/api/v2/alerts", "application/json")
    assert json.loads(body) == EXPECTED_BODY


def test_a_refusal_names_the_url_status_and_reason():
    with _Receiver(status=400) as receiver, pytest.raises(WebhookError) as caught:
        send(receiver.url, [], timeout=5)
    assert str(caught.value) == f"webhook {receiver.url}: HTTP 400 Bad Request: bad alert: missing labels"


def test_credentials_in_the_url_go_as_basic_auth_and_never_into_an_error():
    with _Receiver(status=401) as receiver, pytest.raises(WebhookError) as caught:
        send(receiver.url.replace("http://", "http://gate:s%40cret@"), [], timeout=5)
    assert receiver.authorizations == ["Basic " + base64.b64encode(b"gate:s@cret").decode()]
    shown = receiver.url.replace("http://", "http://gate:***@")
    assert str(caught.value) == f"webhook {shown}: HTTP 401 Unauthorized: bad alert: missing labels"


REFUSED = f"[Errno {errno.ECONNREFUSED}] {os.strerror(errno.ECONNREFUSED)}"  # what the OS says, in its words


def test_an_unreachable_receiver_is_a_clear_error():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again before the send: nothing listens there
    url = f"http://127.0.0.1:{port}/api/v2/alerts"
    with pytest.raises(WebhookError) as caught:
        send(url, [], timeout=5)
    assert str(caught.value) == f"webhook {url}: {REFUSED}"


def test_a_silent_receiver_times_out():
    with _Receiver(delay=5) as receiver, pytest.raises(WebhookError, match=r": no answer within 0.2s$"):
        send(receiver.url, [], timeout=0.2)


@pytest.mark.parametrize(
    "reply, error",
    [
        (b"", "RemoteDisconnected: Remote end closed connection without response"),
        (b"garbage\r\n\r\n", "BadStatusLine: garbage"),
    ],
)
def test_a_receiver_that_hangs_up_or_answers_garbage_is_a_webhook_error(reply, error):
    """What urllib does not wrap in URLError must not escape as another exception: the daemon
    catches WebhookError and carries on."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        url = f"http://127.0.0.1:{server.getsockname()[1]}/api/v2/alerts"
        answer = threading.Thread(target=_answer_once, args=(server, reply))
        answer.start()
        with pytest.raises(WebhookError) as caught:
            send(url, [], timeout=5)
        answer.join(5)
    assert str(caught.value) == f"webhook {url}: {error}"


def _answer_once(server: socket.socket, reply: bytes) -> None:
    """Read the whole request (unread bytes would make the close a reset), then reply and hang up."""
    connection, _ = server.accept()
    with connection, connection.makefile("rb") as request:
        length = 0
        for line in iter(request.readline, b"\r\n"):
            name, _, value = line.decode("latin-1").partition(":")
            length = int(value) if name.lower() == "content-length" else length
        request.read(length)
        connection.sendall(reply)


@pytest.mark.parametrize(
    "alert, message",
    [
        (
            OutgoingAlert("distance", {"alertname": "x"}, OPENED),
            "labels: 'alertname' is set from the rule; do not pass it",
        ),
        (
            OutgoingAlert("distance", {"weights-version": "0.1"}, OPENED),
            "labels: 'weights-version' is not a valid label name ([a-zA-Z_][a-zA-Z0-9_]*)",
        ),
        (OutgoingAlert("distance", {"value": 0.15}, OPENED), "labels: values must be strings, 'value' is not"),
        (
            OutgoingAlert("distance", {}, datetime(2025, 3, 1)),
            "naive datetime 2025-03-01T00:00:00: pass an aware one (UTC)",
        ),
        (
            OutgoingAlert("drift", {}, OPENED, ends_at=OPENED - timedelta(seconds=1)),
            "LpipsGateDrift: ends_at 2025-03-01T11:59:59.250Z is before starts_at",
        ),
    ],
)
def test_bad_alerts_are_refused_before_sending(alert, message):
    with pytest.raises(ValueError) as caught:
        to_alertmanager([alert])
    assert str(caught.value) == message


@pytest.mark.parametrize(
    "url, timeout, message",
    [
        ("ftp://host/alerts", 5, "webhook url: expected http:// or https://, got 'ftp://host/alerts'"),
        ("http://127.0.0.1:9/alerts", 0, "timeout: expected a positive number of seconds, got 0"),
    ],
)
def test_send_validates_its_arguments(url, timeout, message):
    with pytest.raises(ValueError) as caught:
        send(url, [], timeout=timeout)
    assert str(caught.value) == message


def test_alertnames_are_camel_case():
    assert [alertname(rule) for rule in ("distance", "nonfinite", "drift")] == [
        "LpipsGateDistance",
        "LpipsGateNonfinite",
        "LpipsGateDrift",
    ]
