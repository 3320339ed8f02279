import numpy as np
import pytest

from udabench import taxonomy as T


def test_nineteen_classes_with_consecutive_train_ids():
    assert [c.train_id for c in T.CLASSES] == list(range(19))
    assert len(set(c.label_id for c in T.CLASSES)) == 19


def test_subsets_by_name():
    assert len(T.SUBSETS["19"]) == 19
    assert T.SUBSETS["16"] == (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)
    assert T.SUBSETS["13"] == (0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)
    assert T.CONVENTION_B_IGNORED == (9, 14, 16)


def test_label_id_lut_hand_checked():
    lut = T.LABEL_ID_TO_TRAIN_ID
    assert lut.dtype == np.uint8 and lut.shape == (256,)
    assert lut[7] == 0 and lut[26] == 13 and lut[33] == 18 and lut[31] == 16
    for ignored in (0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30, 34, 255):
        assert lut[ignored] == 255
    assert (lut != 255).sum() == 19


def test_synthia_lut_covers_uint16():
    lut = T.SYNTHIA_TO_TRAIN_ID
    assert lut.shape == (65536,)
    assert lut[3] == 0 and lut[21] == 3 and lut[1] == 10 and lut[11] == 18 and lut[20] == 16
    for ignored in (0, 13, 14, 22, 23, 300, 65535):
        assert lut[ignored] == 255


def test_export_roundtrip_train_to_label_to_train():
    ids = np.arange(19, dtype=np.uint8)
    assert (T.LABEL_ID_TO_TRAIN_ID[T.TRAIN_ID_TO_LABEL_ID[ids]] == ids).all()
    assert T.TRAIN_ID_TO_LABEL_ID[255] == 0


def test_compact16_maps_into_19_space():
    compact = np.arange(16)
    mapped = T.COMPACT16_TO_TRAIN_ID[compact]
    assert list(mapped) == list(T.SUBSETS["16"])
    assert [T.CLASS_NAMES[i] for i in mapped][9] == "sky"


def test_luts_are_read_only():
    with pytest.raises(ValueError):
        T.LABEL_ID_TO_TRAIN_ID[0] = 3


def test_color_to_train_id():
    img = np.zeros((2, 3, 3), dtype=np.uint8)
    img[0, 0] = (128, 64, 128)
    img[0, 1] = (119, 11, 32)
    img[1, 2] = (1, 2, 3)
    out = T.color_to_train_id(img)
    assert out[0, 0] == 0 and out[0, 1] == 18 and out[1, 2] == 255 and out[1, 0] == 255


def test_tables_match_official_cityscapesscripts():
    labels = pytest.importorskip(
        "cityscapesscripts.helpers.labels", reason="cityscapesscripts not installed"
    )
    official = {l.trainId: l for l in labels.labels if 0 <= l.trainId < 19 and not l.ignoreInEval}
    assert sorted(official) == list(range(19))
    for c in T.CLASSES:
        o = official[c.train_id]
        assert (o.name, o.id, tuple(o.color)) == (c.name, c.label_id, c.color)
    for l in labels.labels:
        if 0 <= l.id < 256:
            expected = l.trainId if (0 <= l.trainId < 19 and not l.ignoreInEval) else 255
            assert T.LABEL_ID_TO_TRAIN_ID[l.id] == expected, l.name


def test_label_id_colours_match_official_cityscapesscripts():
    labels = pytest.importorskip("cityscapesscripts.helpers.labels",
                                 reason="cityscapesscripts not installed")
    official = {l.id: tuple(l.color) for l in labels.labels if 0 <= l.id <= 33}
    assert T.LABEL_ID_COLORS == official
