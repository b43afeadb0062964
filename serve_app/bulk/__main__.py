"""`python -m serve_app.bulk ...` is the same as `mt5-bulk ...`."""

import sys

from serve_app.bulk.cli import main

sys.exit(main())
