"""Docker HEALTHCHECK: exit 0 when the worker's /healthz says its stores are reachable.

Standard library only, so the check works in the slim image without curl.
"""

import os
import sys
import urllib.request

port = os.environ.get("MNEMO_HTTP_PORT", "8080")
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        sys.exit(0 if response.status == 200 else 1)
except Exception as exc:  # noqa: BLE001 - any failure is "unhealthy"
    print(f"unhealthy: {exc}", file=sys.stderr)
    sys.exit(1)
