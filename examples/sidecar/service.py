#!/usr/bin/env python3
"""An "existing" order service that knows nothing of CloudEvents, retries or outages.

It only speaks plain HTTP and JSON, on localhost, to its cemesh sidecar:

* it publishes: every few seconds it POSTs a JSON order to the sidecar's
  ``/publish/com.example.order.created`` (the sidecar makes a CloudEvent of it, stores
  it durably and forwards it to the mesh), with the customer as ``X-Partition-Key`` so
  one customer's orders stay in order;
* it receives: the sidecar relays the mesh's ``com.example.order.created`` events to
  ``POST /events`` as plain JSON (``--app-protocol plain``), and whatever JSON the
  service answers becomes a ``com.example.order.checked`` reply event
  (``--reply-type``);
* it tells the sidecar when it is ready: ``GET /healthz`` answers 200.

Standard library only: ``python3 service.py [--port 8000] [--sidecar URL] [--every S]``.
"""

import argparse
import http.server
import itertools
import json
import sys
import threading
import time
import urllib.error
import urllib.request


def publish_orders(sidecar: str, every: float) -> None:
    customers = itertools.cycle(["alice", "bob", "carol"])
    for n in itertools.count(1):
        customer = next(customers)
        order = {"order": n, "customer": customer, "amount": 10 * n}
        req = urllib.request.Request(
            f"{sidecar}/publish/com.example.order.created",
            data=json.dumps(order).encode(),
            headers={"Content-Type": "application/json", "X-Partition-Key": customer},
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                print(f"published order {n} -> {resp.status} id={resp.headers.get('ce-id')}", flush=True)
        except urllib.error.HTTPError as e:
            # 503 + Retry-After: the sidecar's outbox is full (the mesh is down for long).
            print(f"order {n} not accepted: {e.code} {e.read().decode(errors='replace')}", flush=True)
        except OSError as e:
            print(f"sidecar unreachable: {e}", flush=True)
        time.sleep(every)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._answer(200, b"ok", "text/plain")
        else:
            self._answer(404, b"not found", "text/plain")

    def do_POST(self) -> None:
        if self.path != "/events":
            self._answer(404, b"not found", "text/plain")
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        try:
            order = json.loads(body or b"{}")
        except json.JSONDecodeError:
            self._answer(400, b'{"error": "expected JSON"}', "application/json")
            return
        # The ce- headers are there too (ce-id, ce-type, ...); this service ignores them.
        print(f"received order {order.get('order')} for {order.get('customer')}", flush=True)
        verdict = {"order": order.get("order"), "approved": order.get("amount", 0) <= 100}
        self._answer(200, json.dumps(verdict).encode(), "application/json")

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # quieter than the default access log
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--sidecar", default="http://127.0.0.1:3500")
    parser.add_argument("--every", type=float, default=2.0, help="seconds between orders")
    args = parser.parse_args()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    threading.Thread(target=publish_orders, args=(args.sidecar, args.every), daemon=True).start()
    print(f"order service on http://127.0.0.1:{args.port}, publishing to {args.sidecar}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
