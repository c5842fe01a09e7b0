"""`python -m training`: the same as `scorebox train`.

The CLI lives a floor above the components (scorebox_cli), so this hands the arguments over to
`python -m scorebox_cli train` in the same process slot (exec) instead of importing it.
"""

import os
import sys

os.execv(sys.executable, [sys.executable, "-m", "scorebox_cli", "train", *sys.argv[1:]])
