"""What the tests and the benchmarks share: ``hpo`` child processes (``processes``), servers on a
free port waited on until ready (``servers``), SQLite and PostgreSQL databases (``databases``),
a tiny spec and hand-written trials (``studies``), and what to do when a service is missing
(``services``). Imported as ``tests.support.*`` with the repository root on ``sys.path`` (pytest's
``pythonpath``; the benchmarks run as ``python -m bench.NAME`` from the root)."""
