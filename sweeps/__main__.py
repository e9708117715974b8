from cram_core.cli import run_main
from sweeps.cli import main

run_main(main)
