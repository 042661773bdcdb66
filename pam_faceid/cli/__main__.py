"""python -m pam_faceid.cli == faceid."""

import sys

from pam_faceid.cli import main

sys.exit(main())
