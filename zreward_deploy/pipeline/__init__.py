"""The end-to-end pipeline that ``zreward demo`` runs: synthetic data, trainers, export, benchmarks and
the report. It sits above every other layer (core, kernels, export, training, bench) and is imported by
nothing but the command line (docs/design.md §2)."""
