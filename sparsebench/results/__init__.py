"""Results: the versioned CSV schema and meta.json (schema.py), what a sound results file is (check.py), where
a result set named on the command line lies (dirs.py), a result set read once (resultset.py), how a row reads
to people (labels.py). Import from here: `from sparsebench.results import ...`."""

from sparsebench.results.dirs import RESULTS_NAME as RESULTS_NAME
from sparsebench.results.dirs import results_file as results_file
from sparsebench.results.resultset import Meta as Meta
from sparsebench.results.resultset import ResultSet as ResultSet
from sparsebench.results.schema import *  # noqa: F403  (every public name of the schema, as before the move)
from sparsebench.results.spec import Params as Params
from sparsebench.results.spec import PatternSpec as PatternSpec
from sparsebench.results.spec import canonical_params as canonical_params
