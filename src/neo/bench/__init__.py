"""``neo bench``: constrained-decoding throughput of neo against the decoders people would use otherwise.

:mod:`~neo.bench.workload` (the synthetic catalog, rows, timer), :mod:`~neo.bench.providers` (neo and its
peers, each checked against an oracle), :mod:`~neo.bench.harness` (:func:`run_bench`, the end-to-end
``generate`` comparison, budgets) and :mod:`~neo.bench.report` (tables and plot).
"""

from .harness import run_bench
from .providers import (
    NeoCpuProvider,
    NeoDeviceProvider,
    Provider,
    PythonTrie,
    PythonTrieHFProvider,
    TorchSearchsortedProvider,
    llguidance_grammar,
    xgrammar_grammar,
)
from .report import format_table, write_plot
from .workload import (
    BUDGET_KEYS,
    CJK_BASE,
    E2E_KEYS,
    E2E_RUN_KEYS,
    PEER_KEYS,
    PEERS,
    RESULT_KEYS,
    SCHEMA,
    TOP_KEYS,
    RowStates,
    SyntheticCatalog,
)

__all__ = [
    "SCHEMA",
    "RESULT_KEYS",
    "TOP_KEYS",
    "E2E_KEYS",
    "E2E_RUN_KEYS",
    "BUDGET_KEYS",
    "PEER_KEYS",
    "PEERS",
    "CJK_BASE",
    "SyntheticCatalog",
    "RowStates",
    "Provider",
    "NeoCpuProvider",
    "NeoDeviceProvider",
    "PythonTrie",
    "PythonTrieHFProvider",
    "TorchSearchsortedProvider",
    "xgrammar_grammar",
    "llguidance_grammar",
    "run_bench",
    "format_table",
    "write_plot",
]
