"""Container health check: exit 0 when the service answers 200 on /readyz, 1 otherwise.

Images built from a slim Python base have no curl or wget; this uses only the standard library and reads
the same RESNET_SERVE_PORT variable as the server, so a changed port does not break the check. With TLS on
(RESNET_SERVE_SSL_CERTFILE set) it asks over HTTPS without verifying the certificate, as the kubelet's probes do (it
talks to its own container); when the server requires client certificates (RESNET_SERVE_SSL_CA_CERTS), it presents
the one in HEALTHCHECK_CLIENT_CERT and HEALTHCHECK_CLIENT_KEY.
"""

import os
import ssl
import sys
import urllib.error
import urllib.request

TIMEOUT_S = 3.0


def main() -> int:
    port = os.environ.get("RESNET_SERVE_PORT", "8000")
    context = None
    scheme = "http"
    if os.environ.get("RESNET_SERVE_SSL_CERTFILE"):
        scheme = "https"
        context = ssl._create_unverified_context()
        if os.environ.get("HEALTHCHECK_CLIENT_CERT"):
            context.load_cert_chain(os.environ["HEALTHCHECK_CLIENT_CERT"], os.environ.get("HEALTHCHECK_CLIENT_KEY"))
    url = f"{scheme}://127.0.0.1:{port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S, context=context) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"healthcheck: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
