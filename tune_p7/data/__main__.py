"""``python -m tune_p7.data inspect FILE``: the command lives in tune_p7.inspection, which
reads datasets through this package (so the package itself never imports it)."""

import sys

from tune_p7.inspection import main

sys.exit(main(sys.argv[1:]))
