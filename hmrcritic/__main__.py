"""``python -m hmrcritic``: the same command line as the ``hmrcritic`` script.

For installs where the script's folder is not on PATH (``pip install --user``, a venv that is not activated,
a CI runner), which is where a non-developer usually is when the first command fails.
"""

import sys

from hmrcritic.cli import main

if __name__ == "__main__":
    sys.exit(main())
