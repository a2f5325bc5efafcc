"""The fake Platform (``tests/platform_fake.py``) over real HTTP, for tests on 127.0.0.1.

Usage: platform_server.py  (prints ``port N`` once it listens; stops on SIGTERM)

Besides the Platform API it answers ``GET /_state`` (what landed, and the headers every
request came with) and ``POST /_control`` (``{"down": true}`` answers 503 to every
request until ``{"down": false}``; ``{"cancel": true}`` says cancelled).
"""

import hashlib
import json
import sys
import tempfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from hubfsm.transport import FilePart, Request, Response
from tests.platform_fake import PLATFORM_KEY, FakePlatform

FAKE = FakePlatform()
DOWN = {"on": False}
HEADERS: list[dict[str, str]] = []
SPOOL = Path(tempfile.mkdtemp(prefix="platform-spool-"))


def state():
    return {
        "models": {
            model.id: {
                "project": model.project,
                "name": model.name,
                "runs": {
                    str(run.id): {
                        "epochs": run.epochs,
                        "events": run.events,
                        "promoted": run.promoted,
                        "complete": run.complete,
                    }
                    for run in model.runs.values()
                },
            }
            for model in FAKE.models.values()
        },
        "storage": {path: hashlib.sha256(data).hexdigest() for path, data in FAKE.storage.items()},
        "foreign": len(FAKE.foreign),
        "headers": HEADERS,
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _reply(self, response: Response):
        content = json.dumps(dict(response.body)).encode() if response.body else b""
        self.send_response(response.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def do_GET(self):
        if self.path == "/_state":
            self._reply(Response(200, state()))
        else:
            self._reply(Response(404, {"error": "no such page"}))

    def do_POST(self):
        body = self._body()
        if self.path == "/_control":
            control = json.loads(body)
            DOWN["on"] = control.get("down", DOWN["on"])
            FAKE.cancel = control.get("cancel", FAKE.cancel)
            self._reply(Response(200, {"ok": True}))
            return
        HEADERS.append({"method": "POST", **{k.lower(): v for k, v in self.headers.items()}})
        if DOWN["on"]:
            self._reply(Response(503, {"error": "down"}))
            return
        if self.headers.get("Authorization") != f"Bearer {PLATFORM_KEY}":
            self._reply(Response(401, {"error": "Invalid API key"}))
            return
        self._reply(FAKE(Request("POST", self.path, json=json.loads(body))))

    def do_PUT(self):
        data = self._body()
        HEADERS.append({"method": "PUT", **{k.lower(): v for k, v in self.headers.items()}})
        if DOWN["on"]:
            self._reply(Response(503, {}))
            return
        spooled = SPOOL / hashlib.sha256(data).hexdigest()
        spooled.write_bytes(data)
        part = FilePart("upload", str(spooled), len(data), hashlib.sha256(data).hexdigest())
        url = f"{FAKE.storage_root.rsplit('/storage', 1)[0]}{self.path}"
        self._reply(FAKE(Request("PUT", url, file=part)))


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    FAKE.storage_root = f"http://127.0.0.1:{port}/storage"
    print(f"port {port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
