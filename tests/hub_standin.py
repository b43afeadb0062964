"""A local stand-in for the Hugging Face Hub, reached through the hub client's own HF_ENDPOINT setting.

It serves one repository's files the way huggingface_hub asks for them (the revision API, HEAD for
metadata, GET with Range for bodies), at a set rate, and can drop the connection part-way through a
file. Every request is recorded, so a test can count the fetches and see a resume.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Fetch:
    method: str
    filename: str
    start: int  # the first byte asked for (Range), 0 for a whole file
    sent: int = 0  # body bytes written before the answer ended or the connection was dropped


@dataclass
class HubStandIn:
    repo_id: str
    files: dict[str, bytes]
    bytes_per_s: float = 0.0  # 0 = as fast as it goes
    drop_after: dict[str, int] = field(default_factory=dict)  # filename -> drop a GET after this many body bytes
    drops_left: int = 0  # how many GETs are dropped (then the files are served whole)
    fetches: list[Fetch] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @classmethod
    def of_directory(cls, repo_id: str, directory: Path, **kwargs) -> HubStandIn:
        return cls(repo_id, {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}, **kwargs)

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def body_gets(self, filename: str) -> list[Fetch]:
        return [f for f in self.fetches if f.method == "GET" and f.filename == filename]

    def start(self) -> HubStandIn:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> HubStandIn:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _handler(hub: HubStandIn) -> type[BaseHTTPRequestHandler]:
    api_prefix = f"/api/models/{hub.repo_id}/revision/"
    tree_prefix = f"/api/models/{hub.repo_id}/tree/"
    file_prefix = f"/{hub.repo_id}/resolve/"

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path.startswith(api_prefix):
                self._json(
                    {
                        "id": hub.repo_id,
                        "modelId": hub.repo_id,
                        "sha": COMMIT,
                        "private": False,
                        "siblings": [{"rfilename": name} for name in hub.files],
                    }
                )
            elif path.startswith(tree_prefix):
                self._json(
                    [
                        {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                        for name, data in hub.files.items()
                    ]
                )
            elif path.startswith(file_prefix):
                self._file(path, body=True)
            else:
                self._json({"error": "not found"}, status=404)

        def do_HEAD(self) -> None:
            path = self.path.split("?", 1)[0]
            if path.startswith(file_prefix):
                self._file(path, body=False)
            else:
                self._json({"error": "not found"}, status=404)

        def _json(self, payload: dict | list, status: int = 200) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _file(self, path: str, body: bool) -> None:
            filename = path[len(file_prefix) :].split("/", 1)[-1]
            data = hub.files.get(filename)
            if data is None:
                self._json({"error": "entry not found"}, status=404)
                return
            start = 0
            ranged = self.headers.get("Range", "")
            if ranged.startswith("bytes="):
                start = int(ranged[len("bytes=") :].split("-", 1)[0] or 0)
            fetch = Fetch("GET" if body else "HEAD", filename, start)
            hub.fetches.append(fetch)
            part = data[start:]
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("Content-Length", str(len(part)))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if not body:
                return
            drop_at = hub.drop_after.get(filename) if hub.drops_left > 0 else None
            if drop_at is not None:
                hub.drops_left -= 1
            chunk = 16 * 1024
            for offset in range(0, len(part), chunk):
                piece = part[offset : offset + chunk]
                if drop_at is not None and start + offset + len(piece) > drop_at:
                    piece = piece[: max(0, drop_at - start - offset)]
                    self.wfile.write(piece)
                    fetch.sent += len(piece)
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.close()  # the connection drops mid-file
                    return
                self.wfile.write(piece)
                fetch.sent += len(piece)
                if hub.bytes_per_s:
                    time.sleep(len(piece) / hub.bytes_per_s)

    return Handler
