"""Benchmark protocols as data: frozen, versioned, hashed specs registered by name.

Every field that changes numbers is part of ``hash()``; results store it and tables never mix
hashes in one column. Sizes are (W, H) as papers write them (1280x720); the data layer works in
(H, W). udabench never downloads datasets: a missing root raises one DataError saying which tree
is expected and where to obtain the data. MiniCity specs generate their data on first use.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from udabench.data import layouts
from udabench.config import coerce
from udabench.errors import ConfigError, DataError
from udabench.minicity.params import MiniCityParams
from udabench.registry import did_you_mean, register_benchmark
from udabench.settings import Allowed, check_settings, setting, unit_of
from udabench.taxonomy import SUBSETS

if TYPE_CHECKING:
    from udabench.data.datasets import SegmentationDataset
    from udabench.data.transforms import ResizeImage, TrainTransform


def protocol_fields() -> list[dataclasses.Field]:
    """The fields that define a protocol: hashed, and settable in [benchmarks.<name>]."""
    return [f for f in fields(Benchmark) if f.name != "description"
            and f.metadata.get("protocol", True)]

Size = tuple[int, int]  # (W, H)
_SIZE = dict(min_len=2, max_len=2, item=Allowed(ge=1))
INTERPOLATIONS = ("bilinear", "bicubic")


def _hw(size: Size) -> tuple[int, int]:
    return size[1], size[0]


@dataclass(frozen=True)
class RunDefaults:
    """How runs on a benchmark are sized by default: not protocol (not in the spec hash) but
    recorded in every run's config.json, and overridable from udabench.toml / --set. The benchmark
    owns these, so the engine knows no benchmark by name."""

    iters: int
    decay_iters: int
    batch_size: int
    checkpoint_every: int
    model: tuple[tuple[str, Any], ...] = ()  # SegmenterConfig fields
    # Method settings every method on this benchmark starts from ("*": any method whose config has
    # the key), and per method name; applied before udabench.toml and --set.
    method: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    # True on the real protocols: a method's published schedule (iterations, decay horizon,
    # batch) replaces these defaults. False on MiniCity, whose budget is the same for every method.
    published_schedules: bool = True
    # Every learning rate of a method's recipe (``lr``, ``d_lr``) times this factor: a short
    # budget needs larger steps, and one factor for all keeps the recipes' relative rates
    # (backbone vs head, generator vs discriminator, SGD vs AdamW recipes).
    lr_scale: float = 1.0
    # A recipe's full-size network -> the settings of its small stand-in here (MiniCity runs a
    # DAFormer recipe on mit-tiny, as it runs DeepLabV2 recipes on resnet-tiny).
    scaled_networks: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    # A recipe's numbers whose setting declares a unit (udabench.settings.UNITS) are rescaled to
    # this benchmark's size, so each keeps its share of the run and of the image: "iterations" by
    # run iterations / the recipe's published stop (its published_schedule's ``iters``, else
    # ``recipe_stop``), "per_iteration" decays so the decay over the whole run is the recipe's,
    # "pixels" by ``pixel_scale``, "rate" by ``lr_scale``. 0 / 1.0 = recipes run as published (the
    # real protocols).
    recipe_stop: int = 0
    pixel_scale: float = 1.0

    def rescaled(self, recipe: Any, published_stop: int | None, run_iters: int) -> dict[str, tuple[Any, str]]:
        """{setting: (value, why)} for the unit-declared settings of ``recipe`` (a method config
        at its recipe defaults) that this benchmark rescales."""
        stop = published_stop or self.recipe_stop
        ratio = run_iters / stop if self.recipe_stop and stop else 1.0
        out: dict[str, tuple[Any, str]] = {}
        for f in dataclasses.fields(recipe):
            unit, value = unit_of(f), getattr(recipe, f.name)
            if ratio != 1.0 and unit == "iterations" and isinstance(value, int) and value > 0:
                out[f.name] = (max(1, round(value * ratio)),
                               f"recipe's {value} of {stop} iterations, the same share of {run_iters}")
            elif ratio != 1.0 and unit == "per_iteration" and 0 < value < 1:
                out[f.name] = (value ** (1 / ratio), f"recipe's {value:g} per iteration over {stop} "
                                                     f"iterations, the same decay over {run_iters}")
            elif self.pixel_scale != 1.0 and unit == "pixels" and value:
                scaled = [max(1, round(v * self.pixel_scale)) for v in (value if isinstance(value, tuple)
                                                                        else (value,))]
                out[f.name] = (tuple(scaled) if isinstance(value, tuple) else scaled[0],
                               f"recipe's {value} px x {self.pixel_scale:g}, the benchmark's resolution")
            elif self.lr_scale != 1.0 and unit == "rate":
                out[f.name] = (value * self.lr_scale, f"recipe's rate x {self.lr_scale:g}")
        return out

    def model_settings(self) -> dict[str, Any]:
        return dict(self.model)

    def scaled_network(self, backbone: str) -> dict[str, Any]:
        """The stand-in settings for a recipe's ``backbone`` ({} when it runs as it is)."""
        return dict(dict(self.scaled_networks).get(backbone.partition(".")[0], ()))

    def method_settings(self, name: str, keys: set[str]) -> dict[str, Any]:
        """The defaults for method ``name`` (only keys its config has)."""
        out: dict[str, Any] = {}
        for who, values in self.method:
            if who in ("*", name):
                out.update({k: v for k, v in values if k in keys})
        return out


@dataclass(frozen=True)
class Benchmark:
    """A benchmark protocol. Every field but ``description`` and ``run_defaults`` is protocol:
    part of ``hash()``, and overridable in ``[benchmarks.<name>]`` (the hash then changes)."""

    name: str
    version: int = setting(ge=1, doc="bumped whenever the protocol changes")
    description: str = setting(free=True)
    source_kind: str = setting(nonempty=True, doc="a registered dataset (gta5, synthia, ...)")
    source_subdir: str = setting(nonempty=True, doc="folder below the data root")
    target_kind: str = setting(nonempty=True)
    target_subdir: str = setting(nonempty=True)
    subsets: tuple[str, ...] = setting(min_len=1, item=Allowed(choices=tuple(SUBSETS)),
                                       doc="scored class subsets, headline first")
    source_train_size: Size = setting(doc="(W, H) source images are resized to", **_SIZE)
    target_train_size: Size = setting(**_SIZE)
    eval_input_size: Size = setting(doc="(W, H) the network sees at evaluation", **_SIZE)
    eval_label_size: Size = setting(doc="(W, H) of the ground truth logits are upsampled to", **_SIZE)
    num_classes: int = setting(19, choices=(19,))
    convention: str = setting("A", choices=("A", "B"), doc="16-class convention (docs/protocol.md)")
    crop_size: Size | None = setting(None, doc="None = no crop, the classic recipe", **_SIZE)
    scale_range: tuple[float, float] | None = setting(None, min_len=2, max_len=2, item=Allowed(gt=0),
                                                      doc="random scaling of the resized image")
    flip_p: float = setting(0.0, ge=0, le=1, doc="horizontal flip probability in training")
    interpolation: str = setting("bicubic", choices=INTERPOLATIONS, doc="image resizing (labels: nearest)")
    align_corners: bool = setting(False, free=True)
    val_images: int = field(default=0, metadata={
        "allowed": Allowed(ge=0), "legacy": 0,
        "doc": "images the validation set must have (MiniCity: its generated count); 0 = not fixed"})
    minicity: MiniCityParams | None = setting(None, free=True, doc="generated on first use when set")
    run_defaults: RunDefaults | None = field(default=None, compare=False,
                                             metadata={"protocol": False})

    def __post_init__(self) -> None:
        check_settings(self, f"benchmarks.{self.name}")
        for kind in (self.source_kind, self.target_kind):
            layouts.layout(kind)
        if self.scale_range is not None and self.scale_range[0] > self.scale_range[1]:
            raise ConfigError(f"benchmarks.{self.name}.scale_range = {list(self.scale_range)} is not "
                              "allowed: expected [low, high] with low <= high")
        mc = self.minicity
        if mc is not None and tuple(self.eval_label_size) != (mc.width, mc.height):
            raise ConfigError(f"benchmarks.{self.name}.eval_label_size = {list(self.eval_label_size)} "
                              f"is not allowed: it must equal the generated MiniCity size "
                              f"[{mc.width}, {mc.height}]")

    @property
    def expected_val_images(self) -> int:
        """How many validation images an evaluation must cover (0 = not fixed by the protocol)."""
        if self.val_images:
            return self.val_images
        return self.minicity.n_target_val if self.minicity is not None else 0

    @property
    def defaults(self) -> RunDefaults:
        if self.run_defaults is None:
            raise ConfigError(f"benchmark {self.name} declares no run defaults (iters, batch, ...)")
        return self.run_defaults

    # -- identity ---------------------------------------------------------------------------
    def hash(self) -> str:
        """Short sha256 of every field that changes numbers (not the description)."""
        # A field added after version 1 is left out while it holds the value that reproduces the
        # older protocols, so their hashes (and the results filed under them) stay valid.
        payload = {f.name: getattr(self, f.name) for f in protocol_fields()
                   if not ("legacy" in f.metadata and getattr(self, f.name) == f.metadata["legacy"])}
        if self.minicity is not None:
            payload["minicity"] = self.minicity.key()
        blob = json.dumps(payload, sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def with_overrides(self, overrides: dict[str, Any]) -> "Benchmark":
        """A copy with fields replaced (e.g. from ``[benchmarks.<name>]``); the hash follows."""
        names = [f.name for f in protocol_fields()] + ["description"]
        hints = typing.get_type_hints(Benchmark)
        changes: dict[str, Any] = {}
        for key, value in overrides.items():
            where = f"benchmarks.{self.name}.{key}"
            if key not in names or key == "name":
                raise ConfigError(f"{where} is not a benchmark setting{did_you_mean(key, names)}; "
                                  f"known: {', '.join(n for n in names if n != 'name')}")
            if key == "minicity":
                if not isinstance(value, dict):
                    raise ConfigError(f"{where}: expected a table of MiniCity settings, got {value!r}")
                base = dataclasses.asdict(self.minicity or MiniCityParams())
                unknown = [k for k in value if k not in base]
                if unknown:
                    raise ConfigError(f"{where}.{unknown[0]} is not a MiniCity setting"
                                      f"{did_you_mean(unknown[0], list(base))}; known: {', '.join(base)}")
                try:
                    value = MiniCityParams(**{**base, **value})
                except ConfigError as exc:
                    raise ConfigError(f"benchmarks.{self.name}.{exc}") from None
            else:
                value = coerce(value, hints[key], where)
            changes[key] = value
        return dataclasses.replace(self, **changes)

    def summary_row(self) -> tuple[str, str, str, str, str, str]:
        """(name, description, source -> target, scored, train / eval input, spec) for tables."""
        src = layouts.layout(self.source_kind).title
        tgt = layouts.layout(self.target_kind).title
        scored = ", ".join(f"mIoU{s}" for s in self.subsets) + f" (conv. {self.convention})"
        crop = f" crop {self.crop_size[0]}x{self.crop_size[1]}" if self.crop_size else ""
        sizes = (f"{self.source_train_size[0]}x{self.source_train_size[1]}{crop} / "
                 f"{self.eval_input_size[0]}x{self.eval_input_size[1]} -> "
                 f"{self.eval_label_size[0]}x{self.eval_label_size[1]}")
        return (self.name, self.description, f"{src} -> {tgt}", scored, sizes,
                f"v{self.version} {self.hash()}")

    # -- data ---------------------------------------------------------------------------------
    def roots(self, data_root: Path, console: Any = None) -> tuple[Path, Path]:
        """(source root, target root); MiniCity data is generated here when missing.

        A missing real dataset raises ONE DataError with every expected tree and its source.
        """
        data_root = Path(data_root)
        if self.minicity is not None:
            from udabench.minicity import ensure_minicity

            paths = ensure_minicity(data_root, self.minicity, sources=(self.source_kind,),
                                    console=console)
            return getattr(paths, self.source_kind), paths.cityscapes
        src, tgt = data_root / self.source_subdir, data_root / self.target_subdir
        missing = [(k, r) for k, r in ((self.source_kind, src), (self.target_kind, tgt))
                   if not r.is_dir()]
        if missing:
            parts = [f"{layouts.layout(k).title} not found at {r}: {layouts.where_to_get(k, r)}"
                     for k, r in missing]
            raise DataError(f"benchmark {self.name} needs its datasets under {data_root} "
                            f"(set [paths] data_root in udabench.toml or UDABENCH_DATA); "
                            + "; ".join(parts))
        return src, tgt

    def train_transform(self, size: Size) -> "TrainTransform":
        from udabench.data.transforms import TrainTransform

        return TrainTransform(size=_hw(size), scale_range=self.scale_range,
                              crop=_hw(self.crop_size) if self.crop_size else None,
                              flip_p=self.flip_p, interpolation=self.interpolation)

    def eval_transform(self) -> "ResizeImage":
        from udabench.data.transforms import ResizeImage

        return ResizeImage(_hw(self.eval_input_size), self.interpolation)

    def datasets(self, data_root: Path, console: Any = None
                 ) -> tuple["SegmentationDataset", "SegmentationDataset", "SegmentationDataset"]:
        """(source train, target train WITHOUT labels, target val with full-resolution labels)."""
        from udabench.data.datasets import build_dataset

        src, tgt = self.roots(data_root, console)
        # The source is labelled whatever the dataset (a Cityscapes source serves its labels).
        source = build_dataset(self.source_kind, src, "train", with_labels=True,
                               transform=self.train_transform(self.source_train_size),
                               cache_size=self.source_train_size)
        target = build_dataset(self.target_kind, tgt, "train", with_labels=False,
                               transform=self.train_transform(self.target_train_size),
                               cache_size=self.target_train_size)
        val = build_dataset(self.target_kind, tgt, "val", with_labels=True,
                            transform=self.eval_transform())
        return source, target, val

    def target_train_labelled(self, data_root: Path, console: Any = None) -> "SegmentationDataset":
        """The labelled target train split: for the oracle method ONLY (breaks the firewall)."""
        from udabench.data.datasets import build_dataset

        _, tgt = self.roots(data_root, console)
        return build_dataset(self.target_kind, tgt, "train", with_labels=True,
                             transform=self.train_transform(self.target_train_size),
                             cache_size=self.target_train_size)


def register(bench: Benchmark) -> Benchmark:
    """Register a benchmark spec under its name (a plug-in's benchmarks use this too)."""
    return register_benchmark(bench.name, bench.description)(bench)


_register = register


# The classic DeepLabV2 recipe: batch 1 + 1, poly decay over 250k iterations, stop at 120k
# (methods with a published schedule of their own replace these on the real protocols).
REAL_DEFAULTS = RunDefaults(iters=120_000, decay_iters=250_000, batch_size=1, checkpoint_every=5_000)

# MiniCity version 2 mirrors the real protocol where version 1 did not (issue 19), each choice made
# for that reason before any adaptation result was seen:
# - the networks start from MiniCity-pretrained weights (classification on a third procedural
#   domain, docs/minicity_pretraining.md), as real runs start from ImageNet weights;
# - self-training recipes that start from a trained source model (CBST) do so: their methods
#   declare it (warm_start), the runner starts them from the finished source-only run;
# - the data pipeline is the real v2 one: no mirroring, bicubic resizing;
# - the budget stays 300 iterations of batch 8 for every method; every learning rate of a recipe
#   is multiplied by the same factor 40 (v1 set lr = 0.01 for every method: 40 x the classic
#   2.5e-4), so the recipes keep their relative rates (CBST's 5e-5 -> 2e-3, AdamW's 6e-5 ->
#   2.4e-3, the discriminators' 1e-4 -> 4e-3);
# - the networks shrink with the budget: resnet-tiny for DeepLabV2 recipes, mit-tiny with a
#   32-channel fusion head for DAFormer's MiT-B5; discriminators 4x narrower (ndf 16), as the
#   segmenter is (resnet-tiny's stages are 16-128 channels, ResNet-101's 64-512 / 256-2048);
# - DAFormer's rare class sampling threshold scales with the image area: 3000 px of a 1914x1052
#   frame -> 195 px of a 512x256 one.
# Version 3 is version 2 with one change: resnet-tiny's shipped weights come from the dense
# (per-pixel) task on the same third-domain images, learnt in the segmenter's geometry. Version 2's
# classification weights fitted MiniCity's scenes worse than random weights (source fine-tune 39.6
# vs 45.7, oracle 43.8 vs 46.8), which ImageNet weights never do; the dense ones tie random weights
# on the source fine-tune and the linear probe and raise both source-only and the oracle (runs on
# labels only): accepted on those, before any adaptation run with them
# (docs/minicity_pretraining.md). mit-tiny's weights are unchanged.
# Version 4 is version 3 with every recipe number counted in iterations or pixels rescaled to
# MiniCity's size by one rule (each setting declares its unit; RunDefaults.rescaled), as the
# learning-rate horizon and the RCS pixel threshold already were. Versions 2-3 ran them as
# published: DAFormer's 1,500-iteration warm-up never ended in a 300-iteration run, the EMA
# teachers averaged a third or more of the run where the real ones average 0.04-2.5% of it, and the
# 512-px crops of DACS / DAFormer / MIC covered MiniCity's whole 256x128 images where the real ones
# cover half of a 1024x512 one. Now: iteration counts keep their share of the run (1,500 of 40k ->
# 11 of 300), per-iteration decays keep their decay over the run (0.999 over 40k -> 0.875 over
# 300; DACS's 0.99 over 250k -> 2e-4: its teacher is the student, as at the real scale), pixel
# lengths scale with the resolution (256 / 1024: 512-px crops -> 128). Decided from the protocol
# alone, but after versions 2-3's results were seen (docs/minicity.md, "MiniCity version 4").
MINICITY_DEFAULTS = RunDefaults(
    iters=300, decay_iters=300, batch_size=8, checkpoint_every=100,
    model=(("backbone", "resnet-tiny"), ("init", "minicity-pretrained"), ("bn_mode", "frozen_affine")),
    method=(("*", (("ndf", 16),)), ("daformer", (("rcs_min_pixels", 195),))),
    published_schedules=False, lr_scale=40.0,
    recipe_stop=REAL_DEFAULTS.iters, pixel_scale=256 / 1024,
    scaled_networks=tuple((f"mit_b{i}", (("backbone", "mit-tiny"), ("head_channels", 32)))
                          for i in range(6)),
)

# Version 2 of the real protocols is the classic recipe's data pipeline: no mirroring and bicubic
# image resizing (AdaptSegNet, ADVENT, CRST); version 1 flipped with p = 0.5 and resized bilinearly.
# The validation set is all 500 Cityscapes val images, or the run fails before training.
_CS = dict(target_kind="cityscapes", target_subdir="cityscapes", convention="A", flip_p=0.0,
           interpolation="bicubic", val_images=500, run_defaults=REAL_DEFAULTS)

GTA2CS = _register(Benchmark(
    "gta2cs", 2, "GTA5 -> Cityscapes, 19 classes (the classic protocol)",
    "gta5", "gta5", subsets=("19",), source_train_size=(1280, 720), target_train_size=(1024, 512),
    eval_input_size=(1024, 512), eval_label_size=(2048, 1024), **_CS))

SYNTHIA2CS = _register(Benchmark(
    "synthia2cs", 2, "SYNTHIA-RAND-CITYSCAPES -> Cityscapes, 16 and 13 classes",
    "synthia", "synthia", subsets=("16", "13"), source_train_size=(1280, 760),
    target_train_size=(1024, 512), eval_input_size=(1024, 512), eval_label_size=(2048, 1024), **_CS))

# MiniCity mirrors the real protocols at small size: generated at 512x256, trained at 256x128,
# evaluated with 256x128 input and logits upsampled to the 512x256 labels; its validation set is
# complete by construction. Versions 1 (flip 0.5, bilinear, scratch init), 2 (resnet-tiny from
# classification weights) and 3 (recipes' iteration and pixel counts as published) are in docs/minicity.md.
_MINI = dict(source_train_size=(256, 128), target_train_size=(256, 128),
             eval_input_size=(256, 128), eval_label_size=(512, 256), minicity=MiniCityParams(),
             target_kind="cityscapes", target_subdir="cityscapes", convention="A", flip_p=0.0,
             interpolation="bicubic", run_defaults=MINICITY_DEFAULTS)

MINICITY_GTA2CS = _register(Benchmark(
    "minicity-gta2cs", 4, "MiniCity game -> real (GTA5 format), 19 classes; generated, runs anywhere",
    "gta5", "minicity", subsets=("19",), **_MINI))

MINICITY_SYNTHIA2CS = _register(Benchmark(
    "minicity-synthia2cs", 4,
    "MiniCity game -> real (SYNTHIA format), 16 and 13 classes; generated, runs anywhere",
    "synthia", "minicity", subsets=("16", "13"), **_MINI))
