"""Application services: the workflows under the commands and the library (a run into a results directory,
the gate), so that `sparsebench run`, `sparsebench.benchmark()` and each shard behave alike; the commands keep
their options and their printing."""
