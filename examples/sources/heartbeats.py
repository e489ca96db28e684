#!/usr/bin/env python3
"""A stand-in for Knative's heartbeats sample (eventing/cmd/heartbeats): every
--period seconds it POSTs a heartbeat CloudEvent to $K_SINK, with the extensions of
$K_CE_OVERRIDES. Type dev.knative.eventing.samples.heartbeat, source
https://knative.dev/eventing/cmd/heartbeats/#{POD_NAMESPACE}/{POD_NAME}, data
{"id": N, "label": LABEL}, extensions the=42, heart=yes, beats=true.

Run by cemesh as a ContainerSource (images: in the server config) or as a services:
command a SinkBinding binds; when cemesh gives it $PORT it answers 200 there, so a
services: pool sees it ready. Python's standard library only.
"""
import argparse
import http.server
import json
import os
import threading
import time
import urllib.request
import uuid


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--period", type=float, default=5, help="seconds between heartbeats")
    p.add_argument("--label", default="", help="a special label")
    p.add_argument("--eventType", default="dev.knative.eventing.samples.heartbeat")
    p.add_argument("--eventSource", default="")
    args = p.parse_args()
    if "PORT" in os.environ:
        srv = http.server.HTTPServer(
            ("127.0.0.1", int(os.environ["PORT"])), http.server.BaseHTTPRequestHandler
        )
        srv.RequestHandlerClass.do_GET = lambda h: (h.send_response(200), h.end_headers())
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    source = args.eventSource or "https://knative.dev/eventing/cmd/heartbeats/#%s/%s" % (
        os.environ.get("POD_NAMESPACE", ""),
        os.environ.get("POD_NAME", ""),
    )
    overrides = json.loads(os.environ.get("K_CE_OVERRIDES") or "{}").get("extensions", {})
    parent = os.getppid()
    n = 0
    while os.getppid() == parent:  # ends once cemesh is gone
        n += 1
        sink = os.environ.get("K_SINK")
        if sink:
            headers = {
                "ce-specversion": "1.0",
                "ce-id": str(uuid.uuid4()),
                "ce-source": source,
                "ce-type": args.eventType,
                "ce-the": "42",
                "ce-heart": "yes",
                "ce-beats": "true",
                "content-type": "application/json",
            }
            for k, v in overrides.items():
                headers["ce-" + k] = v
            body = json.dumps({"id": n, "label": args.label}).encode()
            try:
                urllib.request.urlopen(urllib.request.Request(sink, data=body, headers=headers)).read()
            except Exception as e:  # the sink may not be up yet
                print("heartbeat %d not sent: %s" % (n, e), flush=True)
        time.sleep(args.period)


if __name__ == "__main__":
    main()
