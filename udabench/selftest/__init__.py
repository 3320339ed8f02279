"""``udabench selftest``: every method at the real protocols' sizes on generated data, timed.

plan (options -> the plans ``udabench run`` would make) -> tree (the dataset tree in the official
layouts and sizes) -> datacheck (udabench's data tools on it) -> driver (each method through
``udabench run``'s code path, probed) -> measure (the figures) -> report (JSON schema, table).
See docs/selftest.md.
"""
