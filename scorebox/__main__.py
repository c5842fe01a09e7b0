"""`python -m scorebox`: the scorebox CLI, which lives a floor above the core (scorebox_cli).

The core imports nothing above it, so this hands the arguments over to `python -m scorebox_cli`
in the same process slot (exec), as the `scorebox` console script does.
"""

import os
import sys

os.execv(sys.executable, [sys.executable, "-m", "scorebox_cli", *sys.argv[1:]])
