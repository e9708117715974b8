from cram_core.cli import run_main
from cram_core.train import main

run_main(main)
