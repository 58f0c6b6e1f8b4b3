"""Container health check: exit 0 when the service answers 200 on /readyz, 1 otherwise.

Images built from a slim Python base have no curl or wget; this uses only the standard library and reads
the same RESNET_SERVE_PORT variable as the server, so a changed port does not break the check.
"""

import os
import sys
import urllib.error
import urllib.request

TIMEOUT_S = 3.0


def main() -> int:
    port = os.environ.get("RESNET_SERVE_PORT", "8000")
    url = f"http://127.0.0.1:{port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"healthcheck: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
