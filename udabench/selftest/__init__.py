"""``udabench selftest``: every method at the real protocols' sizes on generated data, timed.

tree (the dataset tree in the official layouts and sizes) -> datacheck (udabench's data tools on
it) -> driver (each method through ``udabench run``'s code path, probed) -> measure (figures) ->
report (the JSON schema, the table). See docs/selftest.md.
"""
