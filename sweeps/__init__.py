"""Fixed-budget ablation sweeps: definitions, the Ray Tune + Optuna runner, the results store, the CLI."""
