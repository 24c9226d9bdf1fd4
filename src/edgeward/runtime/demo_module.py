"""The demo module `edgeward demo` deploys: a stdlib-only program (any python3 runs it) that does what an IoT Edge
module does at start-up through the workload API — trust bundle, identity certificate, server certificate, a SAS
token signed with its module key — and reports each answer on stdout, one JSON line each."""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import time
import urllib.parse
from collections.abc import Mapping

API = "2019-01-30"


class _Workload(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost")
        self.socket_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(self.socket_path)


def _call(conn: _Workload, method: str, path: str, body: Mapping[str, object] | None = None) -> dict[str, object]:
    payload = json.dumps(body) if body is not None else None
    conn.request(method, f"{path}?api-version={API}", body=payload,
                 headers={"Content-Type": "application/json"} if payload else {})
    resp = conn.getresponse()
    raw = resp.read()
    return {"status": resp.status, "body": json.loads(raw) if raw else None}


def main() -> None:
    env = os.environ
    name = env["IOTEDGE_MODULEID"]
    gen = env["IOTEDGE_MODULEGENERATIONID"]
    conn = _Workload(urllib.parse.urlparse(env["IOTEDGE_WORKLOADURI"]).path)
    quoted = urllib.parse.quote(name, safe="")
    resource = urllib.parse.quote(f"{env['IOTEDGE_IOTHUBHOSTNAME']}/devices/{env['IOTEDGE_DEVICEID']}/modules/{name}",
                                  safe="")
    expiry = str(int(time.time()) + 3600)
    steps = [
        ("trust bundle", "GET", "/trust-bundle", None),
        ("identity certificate", "POST", f"/modules/{quoted}/certificate/identity", {}),
        ("server certificate", "POST", f"/modules/{quoted}/genid/{gen}/certificate/server",
         {"commonName": name}),
        ("SAS token signature", "POST", f"/modules/{quoted}/genid/{gen}/sign",
         {"keyId": "primary", "algo": "HMACSHA256",
          "data": base64.b64encode(f"{resource}\n{expiry}".encode()).decode()}),
    ]
    for label, method, path, body in steps:
        result = _call(conn, method, path, body)
        result["step"] = label
        if label == "SAS token signature":
            result["token"] = {"sr": resource, "se": expiry}
        print("DEMO " + json.dumps(result), flush=True)
    print("DEMO-DONE", flush=True)
    while True:  # a module runs until it is stopped
        time.sleep(3600)


if __name__ == "__main__":
    main()
