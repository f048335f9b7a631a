import sys

from transcribed.cli import main

sys.exit(main())
