"""Container health check: exit 0 when `http://127.0.0.1:PORT/PATH` answers 200 within 3 s, else 1.

Used by docker-compose.yml (`python /app/healthcheck.py 6066 /metrics`); stdlib only, so it works in the
slim image without curl.
"""

import sys
import urllib.request


def main(port: str, path: str = "/metrics") -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as response:
            return 0 if response.status == 200 else 1
    except OSError:
        return 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
