from cram_core.cli import run_main
from cram_core.downstream.cli import main

if __name__ == "__main__":  # not again in the spawned fine-tuning workers
    run_main(main)
