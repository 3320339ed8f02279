"""Small helpers shared by several test files."""


class NoTargetLabels(dict):
    """A target batch that still carries labels: any read of 'label' fails the test."""

    def __getitem__(self, key):
        if key == "label":
            raise AssertionError("a method read target['label']")
        return super().__getitem__(key)

    def get(self, key, default=None):
        if key == "label":
            raise AssertionError("a method read target['label']")
        return super().get(key, default)


def tiny_toml(data, runs, iters: int = 6, log_every: int = 2, checkpoint_every: int = 2,
              train_size: tuple[int, int] = (64, 32), eval_size: tuple[int, int] = (64, 32),
              n_val: int = 3) -> str:
    """A udabench.toml for a tiny generated MiniCity (48x96 images, a handful of each split;
    sizes are (W, H))."""
    tw, th = train_size
    ew, eh = eval_size
    return f"""
[paths]
data_root = "{data}"
output_dir = "{runs}"

[train]
iters = {iters}
batch_size = 2
num_workers = 0
log_every = {log_every}
checkpoint_every = {checkpoint_every}

[benchmarks.minicity-gta2cs]
source_train_size = [{tw}, {th}]
target_train_size = [{tw}, {th}]
eval_input_size = [{ew}, {eh}]
eval_label_size = [96, 48]
minicity = {{ height = 48, width = 96, n_source = 6, n_target_train = 6, n_target_val = {n_val} }}
"""
