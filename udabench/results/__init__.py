"""Results: the run store (SQLite index of finished runs), aggregation over seeds, paired bootstrap
comparisons, published reference numbers, and table rendering for ``runs``/``leaderboard``/``compare``."""
from udabench.results.store import IndexSummary, index_run, load_records, reindex, store_path

__all__ = ["IndexSummary", "index_run", "load_records", "reindex", "store_path"]
