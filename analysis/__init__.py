"""Read the results store and say what worked: tables, loss curves, and a note on the Optuna dashboard.

Read-only over our tables: ``load`` (store -> pandas), ``stats`` (t intervals, Welch tests), ``tables``
(``sweep_table``, the function the sweep runner calls), ``plots`` (PNG + SVG), ``dashboard`` (study notes),
``cli`` (``python -m analysis table|plot|summary``).
"""
