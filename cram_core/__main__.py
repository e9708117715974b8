import sys

from cram_core.train import main

sys.exit(main())
