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
