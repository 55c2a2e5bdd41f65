"""The styled-artwork data source on tiny packages of every source kind the test builds itself
(nothing is downloaded): keys, framing, classes, caching, indistinguishable classes, fetching."""
import json
import os

import matplotlib
import numpy as np
import pytest
from PIL import Image

from metatpt_jax.data.artwork import catalog as catalog_lib
from metatpt_jax.data.artwork import kinds, packages, render, styles
from metatpt_jax.data.artwork.kinds import Style
from metatpt_jax.data.artwork.packages import Package
from metatpt_jax.errors import UserError

DEJAVU = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf")
# key -> (label, group, subgroup, skin-tone variants); DejaVu Sans has U+263A and U+2602.
ENTRIES = {"263A": ("smiling face", 0, 0, ()), "2602": ("umbrella", 5, 1, ()),
           "1F44B": ("waving hand", 1, 2, ("1F44B-1F3FB",)), "1F534": ("red circle", 8, 3, ()),
           "1F535": ("blue circle", 8, 3, ()), "1F1E6-1F1E8": ("flag: Ascension", 9, 4, ()),
           "0023-FE0F-20E3": ("keycap: #", 8, 5, ()), "1F3FB": ("light skin tone", 2, 6, ())}
GROUPS = {"0": "smileys-emotion", "1": "people-body", "2": "component", "5": "travel-places",
          "8": "symbols", "9": "flags"}
SUBGROUPS = {"0": "face-affection", "1": "sky-weather", "2": "hand-fingers-open",
             "3": "geometric", "4": "country-flag", "5": "keycap", "6": "skin-tone"}


def _write_json(path, data):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(data, f)


def _disc(size, pad, color, garbage=True):
  """RGBA: a disc of `color` filling the square but `pad` px; garbage colour under alpha 0."""
  yy, xx = np.mgrid[:size, :size] + 0.5
  r = size / 2 - pad
  inside = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= r * r
  rgba = np.zeros((size, size, 4), np.uint8)
  rgba[..., :3] = (17, 200, 93) if garbage else 0
  rgba[inside] = (*color, 255)
  return rgba


@pytest.fixture
def cache(tmp_path):
  """A cache holding an emojibase-data package and one tiny package per source kind."""
  root = packages.package_root(catalog_lib.EMOJIBASE, str(tmp_path))
  entries = [dict(label=label, hexcode=code, group=g, subgroup=s, order=i, tags=["t"],
                  skins=[dict(hexcode=v) for v in skins])
             for i, (code, (label, g, s, skins)) in enumerate(ENTRIES.items())]
  _write_json(os.path.join(root, "en", "data.json"), entries + [dict(label="A", hexcode="1F1E6")])
  _write_json(os.path.join(root, "meta", "groups.json"), dict(groups=GROUPS, subgroups=SUBGROUPS))
  for name, pad in (("png", 1), ("webp", 12)):  # two packers, two paddings
    folder = os.path.join(packages.package_root(_pkg(name), str(tmp_path)), "img")
    os.makedirs(folder)
    for code, color in (("1f534", (220, 0, 0)), ("1f535", (0, 0, 220)), ("1f44b", (250, 200, 0)),
                        ("1f44b-1f3fb", (255, 220, 180)), ("2602-fe0f", (90, 60, 200))):
      Image.fromarray(_disc(64, pad, color)).save(os.path.join(folder, f"{code}.{name}"),
                                                  lossless=True)
  svg = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><circle cx="16" cy="16" '
         'r="{}" fill="none" stroke="#000" stroke-width="2"/></svg>')
  folder = os.path.join(packages.package_root(_pkg("svg"), str(tmp_path)), "black")
  os.makedirs(folder)
  for code in ("1F534", "1F535", "263A-FE0F"):  # the circles differ only in colour: same line art
    with open(os.path.join(folder, f"{code}.svg"), "w") as f:
      f.write(svg.format(12 if code.startswith("1F5") else 6))
  icons = os.path.join(packages.package_root(_pkg("iconify"), str(tmp_path)), "icons.json")
  _write_json(icons, dict(width=32, height=32, icons={
      "umbrella": dict(body='<path fill="#808" d="M4 16 A12 12 0 0 1 28 16 Z"/>'),
      "red-circle": dict(body='<circle cx="16" cy="16" r="10" fill="#d00"/>')},
      aliases={"umbrella-alias": dict(parent="umbrella")}))
  _write_json(os.path.join(os.path.dirname(icons), "chars.json"),
              {"2602": "umbrella-alias", "1f534": "red-circle"})
  font_root = packages.package_root(_pkg("font"), str(tmp_path))
  os.makedirs(font_root)
  os.symlink(DEJAVU, os.path.join(font_root, "font.ttf"))
  return str(tmp_path)


def _pkg(name):
  return Package("npm" if name != "font" else "debian", f"fixture-{name}", "1.0")


FIXTURE_STYLES = {
    "png": Style("png", "png_folder", _pkg("png"), "img"),
    "webp": Style("webp", "webp_folder", _pkg("webp"), "img"),
    "svg": Style("svg", "svg_folder", _pkg("svg"), "black"),
    "iconify": Style("iconify", "iconify_json", _pkg("iconify"), "icons.json"),
    "font": Style("font", "font", _pkg("font"), "font.ttf"),
}


@pytest.fixture
def fixture_styles(monkeypatch):
  monkeypatch.setattr(styles, "STYLES", FIXTURE_STYLES)
  # Everything is in the cache: a download would be a bug.
  monkeypatch.setattr(packages.subprocess, "run", lambda *a, **k: pytest.fail(f"fetched {a}"))


@pytest.mark.parametrize("text,key", [
    ("1F44B-1F3FB", "1f44b-1f3fb"), ("0023-FE0F-20E3", "0023-20e3"), ("263a_fe0f", "263a"),
    ("23", "0023")])
def test_keys_are_normalised_code_points(text, key):
  assert kinds.normalize_key(text) == key


def test_the_catalog_keeps_base_emoji_and_maps_skin_tones_to_them(cache, fixture_styles):
  cat = styles.load_catalog(cache)
  assert list(cat.classes) == ["263a", "2602", "1f44b", "1f534", "1f535"]  # no flag/keycap/tone
  assert cat.classes["2602"].group == "travel-places" and cat.classes["2602"].tags == ("t",)
  assert cat.variant_of == {"1f44b-1f3fb": "1f44b"}


@pytest.mark.parametrize("name,expected", [
    ("png", ["1f44b", "1f44b", "1f534", "1f535", "2602"]),
    ("webp", ["1f44b", "1f44b", "1f534", "1f535", "2602"]),
    ("svg", ["1f534", "1f535", "263a"]), ("iconify", ["1f534", "2602"]),
    ("font", ["2602", "263a"])])
def test_every_source_kind_gives_framed_pictures_of_catalog_classes(cache, fixture_styles, name,
                                                                    expected):
  got = styles.load_style(name, size=32, cache_dir=cache)
  assert sorted(got.keys) == expected
  assert got.images.shape == (len(expected), 32, 32, 3) and got.images.dtype == np.uint8
  assert got.variant.sum() == (1 if "1f44b" in expected else 0)  # the light-skin-tone picture
  # Every picture is content on white, framed alike: the corners are background.
  assert (got.images[:, 0, 0] == 255).all()
  assert ((got.images < 230).any(axis=-1).mean(axis=(1, 2)) > 0.05).all()  # and content


def test_padding_and_scale_do_not_give_the_style_away(cache, fixture_styles):
  """The same drawing packed with 1 px and 12 px of padding frames to the same picture."""
  png = styles.load_style("png", size=48, cache_dir=cache)
  webp = styles.load_style("webp", size=48, cache_dir=cache)
  assert png.keys == webp.keys
  diff = np.abs(png.images.astype(float) - webp.images.astype(float))
  assert diff.mean() < 4.0, diff.mean()  # resampling only; unframed they differ by ~60
  # The content's box spans 1 - 2 * margin of the side, whatever the source's padding.
  box = render.content_box(np.dstack([webp.images[0], 255 - webp.images[0].min(-1)]), 20)
  assert box[2] - box[0] == pytest.approx(48 * 0.8, abs=2)


def test_transparent_garbage_colour_never_shows():
  rgba = _disc(16, 2, (0, 0, 0))
  framed = render.frame_artwork(rgba, 16)
  # Black on white: any green tint would be the garbage colour under alpha 0 showing through.
  assert np.abs(framed.astype(int) - framed[..., :1]).max() <= 1 and framed[0].min() > 240
  assert render.frame_artwork(np.zeros((8, 8, 4), np.uint8), 16) is None  # nothing to frame


def test_colour_only_classes_are_indistinguishable_in_line_art(cache, fixture_styles):
  line_art = styles.load_style("svg", size=32, cache_dir=cache)
  assert styles.indistinguishable_groups(line_art) == [("1f534", "1f535")]
  assert styles.indistinguishable_groups(styles.load_style("png", size=32, cache_dir=cache)) == []


def test_a_style_renders_once_then_reads_its_cache(cache, fixture_styles, monkeypatch):
  first = styles.load_style("iconify", size=32, cache_dir=cache)
  monkeypatch.setattr(kinds, "read_rgba", lambda *a: pytest.fail("rendered again"))
  again = styles.load_style("iconify", size=32, cache_dir=cache)
  np.testing.assert_array_equal(first.images, again.images)
  assert first.keys == again.keys


def test_unknown_styles_and_missing_tools_are_one_line_errors(tmp_path, monkeypatch):
  with pytest.raises(UserError, match="Unknown artwork style 'gogle'"):
    styles.get_style("gogle")
  monkeypatch.setattr(packages.shutil, "which", lambda name: None)
  with pytest.raises(UserError, match="needs `npm`, which is not installed") as err:
    packages.fetch(Package("npm", "emojibase-data", "17.0.0"), str(tmp_path))
  assert "\n" not in str(err.value)
  assert not os.listdir(tmp_path)  # nothing half-fetched is left behind


def test_the_manifest_lists_classes_styles_and_indistinguishable_groups(cache, fixture_styles):
  from metatpt_jax.data.artwork import build
  build.main(["--styles", "png,svg", "--size", "16", "--cache-dir", cache])
  with open(os.path.join(cache, "manifest.json")) as f:
    got = json.load(f)
  by_key = {c["key"]: c for c in got["classes"]}
  assert by_key["1f44b"]["pictures"] == {"png": 2}  # the base picture and its skin tone
  assert by_key["1f534"]["pictures"] == {"png": 1, "svg": 1}
  assert by_key["263a"]["name"] == "smiling face" and by_key["263a"]["pictures"] == {"svg": 1}
  assert got["styles"]["svg"]["indistinguishable"] == [["1f534", "1f535"]]


@pytest.fixture
def fixture_world(cache, fixture_styles, monkeypatch):
  from metatpt_jax.data.artwork import world
  monkeypatch.setattr(world, "SOURCE_STYLES", ("png", "webp"))
  monkeypatch.setattr(world, "HELD_OUT_STYLES", ("iconify", "svg"))
  monkeypatch.setenv(packages.CACHE_ENV, cache)
  world.class_universe.cache_clear()
  yield world
  world.class_universe.cache_clear()


def test_world_domains_split_classes_into_dev_and_test(fixture_world):
  world = fixture_world
  universe = world.class_universe(None, 32)
  assert universe == ("2602", "1f44b", "1f534", "1f535")  # in every source style
  dev = world.dev_classes(universe, {k: str(k[:3]) for k in universe})
  assert len(dev) == 1 and dev < set(universe)
  splits = {s: world.load_domain("iconify", "plain", s, image_size=32) for s in world.SPLITS}
  for d in splits.values():
    assert d.class_names == ["umbrella", "waving hand", "red circle", "blue circle"]
  seen = [set(d.labels.tolist()) for d in splits.values()]
  assert not seen[0] & seen[1] and seen[0] | seen[1] == {0, 2}  # iconify draws 2602 and 1f534
  # The two circles are one line drawing in "svg": dropped there, so nothing is left.
  assert sum(len(world.load_domain("svg", "plain", s, image_size=32).labels)
             for s in world.SPLITS) == 0


def test_cluttered_rendering_is_seeded_and_small(fixture_world, monkeypatch):
  from metatpt_jax.data import domains
  world = fixture_world
  monkeypatch.setattr(world, "HELD_OUT_STYLES", ("png",))  # four pictures to make collages of
  plain = world.load_domain("png", "plain", "test", image_size=32)
  a, b = (domains.load_domain("artwork:png:cluttered", split="test", image_size=32, seed=s)
          for s in (0, 1))
  again = domains.load_domain("artwork:png:cluttered", split="test", image_size=32, seed=0)
  np.testing.assert_array_equal(a.images, again.images)
  assert not np.array_equal(a.images, b.images) and not np.array_equal(a.images, plain.images)
  np.testing.assert_array_equal(a.labels, plain.labels)
  with pytest.raises(UserError, match="choose a held-out style"):
    domains.load_domain("artwork:google:plain", image_size=32)


def test_compose_draws_the_named_look_over_a_background():
  import jax
  import jax.numpy as jnp

  from metatpt_jax.pretrain import artwork
  picture = _disc(32, 2, (220, 30, 30))
  picture[12:20, 12:20, :3] = (30, 30, 220)  # a blue square inside: one inner boundary
  rgba = render.frame_rgba(picture, 32).astype(np.float32) / 255.0
  cfg = artwork.compose_config()
  cfg.background_probs = (1.0, 0.0, 0.0)  # white, so the looks are easy to read
  cfg.scale, cfg.brightness, cfg.contrast = (1.0, 1.0), 0.0, (1.0, 1.0)
  cfg.thick_prob = 0.0
  looks = {name: np.asarray(artwork.compose(jnp.asarray(rgba), jax.random.key(0), i, cfg))
           for i, (name, _) in enumerate(artwork.DESCRIBED)}
  centre = {name: image[16, 16] for name, image in looks.items()}
  assert centre["none"][2] > 0.8 > 0.2 > centre["none"][0]                    # blue
  assert np.ptp(centre["greyscale"]) < 1e-6 and 0.1 < centre["greyscale"][0] < 0.6  # grey
  row = looks["silhouette"][16, :, 0]  # black fill, a white line where red meets blue
  assert centre["silhouette"].max() < 0.05 and row[6:10].max() < 0.05
  assert row[10:14].max() > 0.7 and row[0] > 0.95  # the inner line, the white background
  row = looks["outline"][16, :, 0]     # white, dark strokes on both boundaries only
  assert centre["outline"].min() > 0.95 and row[6:10].min() > 0.95
  assert row[:6].min() < 0.3 and row[10:14].min() < 0.3
  assert looks["small"].mean() > looks["none"].mean() + 0.1                    # more white
  for image in looks.values():
    assert image.shape == (32, 32, 3) and 0.0 <= image.min() and image.max() <= 1.0


def test_pretraining_v3_runs_on_artwork_and_reports_dev_zero_shot(fixture_world, tmp_path):
  from metatpt_jax.pretrain import train
  from tests.config_files import config_module
  config = config_module("pretrain_v3").get_config("tiny")
  config.sources, config.source_weights = ("png", "webp"), (1.0, 1.0)
  config.workdir, config.progress_bar = str(tmp_path / "run"), False
  metadata = train.run(config)
  assert metadata["finished"] and metadata["steps"] == 2
  assert metadata["data"]["class_names"] == ["umbrella", "waving hand", "red circle",
                                             "blue circle"]
  report = metadata["zero_shot_test"]
  # held-out styles on their development split only; the sources on their own pictures
  assert set(report) == {"iconify (dev)", "svg (dev)", "png (train pictures)",
                         "webp (train pictures)"}
  assert report["svg (dev)"] == dict(accuracy=None, num_images=0)  # its classes were dropped
  assert report["png (train pictures)"]["num_images"] > 0
  # exported in float16 (the v3 config's export_dtype), loaded back as float32
  from safetensors.numpy import load_file

  from metatpt_jax.clip import checkpoint
  assert {t.dtype for t in load_file(str(tmp_path / "run" / "model.safetensors")).values()} == {
      np.dtype(np.float16)}
  params, _ = checkpoint.load_clip(str(tmp_path / "run"))
  assert params["logit_scale"].dtype == np.float32


def test_collage_background_is_dimmed_clutter_of_the_other_pictures():
  import jax
  import jax.numpy as jnp

  from metatpt_jax.pretrain import artwork
  rgba = jnp.asarray(render.frame_rgba(_disc(32, 2, (220, 30, 30)), 32), jnp.float32) / 255.0
  others = jnp.stack([jnp.asarray(render.frame_rgba(_disc(32, 2, c), 32), jnp.float32) / 255.0
                      for c in ((0, 0, 0),) * 4])  # four black discs
  cfg = artwork.compose_config()
  cfg.background_probs = (0.0, 0.0, 0.0, 1.0)
  cfg.scale, cfg.brightness, cfg.contrast = (0.3, 0.3), 0.0, (1.0, 1.0)
  cfg.collage_contrast = (0.5, 0.5)
  assert artwork.uses_collage(cfg)
  image = np.asarray(artwork.compose(rgba, jax.random.key(1), 0, cfg, others))
  grey = image.min(-1)
  # the background holds the dimmed black discs (0.5 of the way to white), never full black
  # away from the red picture, and still white between the discs
  assert np.isclose(np.percentile(grey, 25), 0.5, atol=0.05) and grey.max() > 0.95
  red = (image[..., 0] > 0.7) & (image[..., 1] < 0.3)
  assert 0 < red.sum() < 0.15 * 32 * 32  # the picture, small, is there in full colour
  # without `others`, the collage kind falls back to white
  plain = np.asarray(artwork.compose(rgba, jax.random.key(1), 0, cfg))
  assert np.percentile(plain.min(-1), 25) > 0.95


def test_class_subsets_are_nested_stratified_and_relabelled(fixture_world):
  from metatpt_jax.data import domains
  world = fixture_world
  universe = tuple(f"k{i}" for i in range(12))
  subgroups = {k: ("a", "b", "c")[i % 3] for i, k in enumerate(universe)}
  order = world.class_order(universe, subgroups)
  assert sorted(order) == sorted(universe)
  assert {subgroups[k] for k in order[:3]} == {"a", "b", "c"}  # every prefix is stratified
  subsets = {s: domains.load_domain("artwork:iconify:plain:2_classes", split=s, image_size=32)
             for s in world.SPLITS}
  fulls = {s: domains.load_domain("artwork:iconify:plain", split=s, image_size=32)
           for s in world.SPLITS}
  for split, sub in subsets.items():  # M-way among the split's own classes
    assert sub.name == "artwork:iconify:plain:2_classes" and 1 <= len(sub.class_names) <= 2
    present = {fulls[split].class_names[i] for i in fulls[split].labels}
    assert {sub.class_names[i] for i in sub.labels} <= present  # the split's own pictures
  assert not set(subsets["dev"].class_names) & set(subsets["test"].class_names)
  split = "dev" if len(subsets["dev"].labels) else "test"
  sub, full = subsets[split], fulls[split]
  assert len(sub.labels) >= 1
  for label, image in zip(sub.labels, sub.images):  # each image keeps its class, relabelled
    match = [i for i, x in enumerate(full.images) if np.array_equal(x, image)]
    assert full.class_names[full.labels[match[0]]] == sub.class_names[label]
  for bad in ("artwork:iconify:plain:x_classes", "artwork:iconify:plain:1_classes"):
    with pytest.raises(UserError, match="class"):
      domains.load_domain(bad, split="test", image_size=32)
