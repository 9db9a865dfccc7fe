"""The benchmark scripts, as one package so they import each other (`from benchmarks import common`) and
the tests import them, with no sys.path edits anywhere. Run each from the repository root as a module:
`python -m benchmarks.speed`, `python -m benchmarks.run_all` (what `make bench` runs)."""
