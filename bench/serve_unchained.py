"""MEASUREMENT AID: ``eventhub-log serve`` with the hash chain switched off.

    .venv/bin/python bench/serve_unchained.py serve [serve's options]

Only for ``http_bench.py --chain-compare``, which runs it beside the real
``eventhub-log serve`` to price the chain over HTTP in one run. It is the same
command with ``publish.chain_off()`` in force (see there for what it replaces);
the database it writes holds no valid chain, so throw it away. The library and
the app have no such switch and must not have one.
"""

from __future__ import annotations

import sys

from publish import chain_off

from api.cli import main

if __name__ == "__main__":
    with chain_off():
        sys.exit(main())
