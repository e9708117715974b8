from analysis.cli import main
from cram_core.cli import run_main

run_main(main)
