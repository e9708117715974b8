from cram_core.cli import run_main
from cram_core.downstream.cli import main

run_main(main)
