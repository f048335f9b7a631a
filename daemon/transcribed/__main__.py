from transcribed.cli import main
import sys

sys.exit(main())
