"""``aria sample``: the labelled grid (layout, enlargement, labels), the run's teacher by default,
--no-teacher, backend.cpu_threads, the run folder as the default destination, and the example prompt."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aria.errors import UserError
from aria.experiment import sample
from conftest import FakeEncoder, make_teacher

ROOT = Path(__file__).resolve().parents[1]


def columns_of(n_prompts: int, size: int = 32, models: int = 2) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (n_prompts, size, size, 3), dtype=np.uint8) for _ in range(models)]


def test_grid_enlarges_small_images_and_places_every_cell():
    prompts = ["a large blue fish on the left", "a small red apple in the center", "p3"]
    columns = columns_of(len(prompts))
    image = sample.labelled_grid(columns, prompts, ["student", "teacher"])
    cell = 128  # 32 px x 4, nearest neighbour
    assert image.shape[0] > len(prompts) * cell and image.shape[1] > 2 * cell + sample.LABEL_WIDTH - 1
    for i in range(len(prompts)):
        for j in range(2):
            y, x = sample.cell_origin(i, j, cell)
            got = image[y:y + cell, x:x + cell]
            assert np.array_equal(got, columns[j][i].repeat(4, 0).repeat(4, 1))
    assert image[:sample.HEADER_HEIGHT].min() < 128  # the headers hold text (dark pixels)


@pytest.mark.parametrize("size, factor", [(16, 8), (32, 4), (100, 2), (128, 1), (512, 1)])
def test_enlarge_reaches_the_minimum_with_an_integer_factor(size, factor):
    images = np.zeros((2, size, size, 3), np.uint8)
    assert sample.enlarge(images).shape == (2, size * factor, size * factor, 3)


def test_labels_are_drawn_for_every_prompt_and_header(monkeypatch):
    calls = []

    def spy(text, width, height, align="left"):
        calls.append((text, width, height, align))
        return np.zeros((height, width, 3), np.uint8)

    monkeypatch.setattr(sample, "label_image", spy)
    prompts = ["a large blue fish on the left", "there is a tiny golden star in the upper right corner"]
    image = sample.labelled_grid(columns_of(2), prompts, ["student", "teacher"])
    texts = [c[0] for c in calls]
    assert texts == ["student", "teacher", *prompts]
    y, _ = sample.cell_origin(1, 0, 128)
    assert (image[y:y + 128, :sample.LABEL_WIDTH] == 0).all()  # the prompt's label sits beside its row
    assert all(c[3] == "left" for c in calls[2:]) and all(c[3] == "center" for c in calls[:2])


def test_a_long_prompt_wraps_inside_its_box():
    text = "there is a tiny golden star in the upper right corner on a dark textured background " * 3
    box = sample.label_image(text, sample.LABEL_WIDTH, 128)
    assert box.shape == (128, sample.LABEL_WIDTH, 3)
    dark_rows = np.flatnonzero((box < 100).any(axis=(1, 2)))
    assert len(dark_rows) and dark_rows.max() - dark_rows.min() > 3 * sample.FONT_SIZE  # several lines


def write_run(root: Path, teacher_dir: Path, cpu_threads: int = 1, save_teacher: bool = True) -> Path:
    """A run folder holding an exported student (a random UNet shaped as the conftest teacher) and its
    aria.json, whose config names ``teacher_dir`` (written there with ``save_teacher``)."""
    from aria.config import config_to_dict
    from conftest import tiny_config

    teacher = make_teacher()
    config = tiny_config(root, backend={"cpu_threads": cpu_threads})
    if save_teacher:
        teacher.unet.save_pretrained(teacher_dir)
    config.teacher.path = teacher_dir
    student = make_teacher(seed=1).unet
    folder = root / "run" / "student"
    student.save_pretrained(folder)
    card = {"teacher": str(teacher_dir), "config": config_to_dict(config),
            "scheduler": {k: v for k, v in teacher.scheduler_config.items() if not k.startswith("_")}}
    (folder / "aria.json").write_text(json.dumps(card, default=str))
    return root / "run"


def test_sample_uses_the_runs_teacher_threads_and_folder(tmp_path, monkeypatch):
    threads = []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    run = write_run(tmp_path, tmp_path / "teacher", cpu_threads=1)
    out = sample.sample_grid(run, ["p1", "p2"], steps=2, device="cpu", encoder=FakeEncoder())
    assert out.parent == run / "samples" and re.fullmatch(r"p1\+1-seed0-[0-9a-f]{8}\.png", out.name) and out.is_file()
    assert threads == [1]
    image = np.asarray(Image.open(out))
    cell = 128  # 16 px x 8
    assert image.shape == (sample.cell_origin(2, 0, cell)[0], sample.cell_origin(0, 2, cell)[1], 3)
    (y, x0), (_, x1) = sample.cell_origin(0, 0, cell), sample.cell_origin(0, 1, cell)
    assert not np.array_equal(image[y:y + cell, x0:x0 + cell], image[y:y + cell, x1:x1 + cell])
    assert not list((run / "samples").glob(".*.tmp"))  # written through a renamed temporary file

    alone = sample.sample_grid(run / "student", ["p1"], tmp_path / "alone.png", steps=2, device="cpu",
                               encoder=FakeEncoder(), with_teacher=False)
    assert np.asarray(Image.open(alone)).shape[1] == sample.cell_origin(0, 1, cell)[1]  # one column


def test_the_default_name_differs_for_every_setting_that_changes_the_picture(tmp_path):
    """Two grids land on one default file only when they draw the same picture: another second prompt,
    --steps, --guidance, --teacher (or none), --seed or device is another name; the same inputs the same."""
    run = write_run(tmp_path, tmp_path / "teacher")
    base = {"steps": 25, "guidance": 2.0, "device": "cpu", "teacher": str(tmp_path / "teacher")}
    name = lambda prompts=("p1", "p2"), seed=0, **change: sample.default_out(  # noqa: E731
        run, list(prompts), seed, {**base, **change})
    others = [name(("p1", "p3")), name(steps=10), name(guidance=4.0), name(teacher=str(tmp_path / "other")),
              name(teacher=None), name(seed=1), name(device="cuda"), name(("p1",))]
    assert name() == name() and name().parent == run / "samples" and name().name.startswith("p1+1-seed0-")
    assert len({name(), *others}) == len(others) + 1


def test_sample_grids_of_other_settings_never_overwrite_each_other(tmp_path):
    """Default names: a second prompt or --steps of their own gives a file of their own (the first grid is
    kept, byte for byte); the same call again writes the same file; --out names the file written."""
    run = write_run(tmp_path, tmp_path / "teacher")
    grid = lambda prompts, **kw: sample.sample_grid(run, prompts, device="cpu", encoder=FakeEncoder(),  # noqa: E731
                                                     **{"steps": 1, **kw})
    first = grid(["p1", "p2"])
    kept = first.read_bytes()
    second, more_steps = grid(["p1", "p3"]), grid(["p1", "p2"], steps=2)
    assert len({first, second, more_steps}) == 3 and first.read_bytes() == kept
    assert grid(["p1", "p2"]) == first
    assert sorted(p.name for p in (run / "samples").iterdir()) == sorted(p.name for p in (first, second, more_steps))
    chosen = grid(["p1", "p2"], out=tmp_path / "mine.png")
    assert chosen == tmp_path / "mine.png" and chosen.is_file()


def test_a_missing_recorded_teacher_names_both_ways_out(tmp_path):
    run = write_run(tmp_path, tmp_path / "gone", save_teacher=False)
    with pytest.raises(UserError, match="--teacher PATH, or --no-teacher"):
        sample.sample_grid(run, ["p1"], steps=1, device="cpu", encoder=FakeEncoder())
    with pytest.raises(UserError, match="cannot be combined"):
        sample.sample_grid(run, ["p1"], teacher=tmp_path, steps=1, device="cpu", encoder=FakeEncoder(),
                           with_teacher=False)


def test_the_example_prompts_are_world_captions_and_shown_in_readme_and_help():
    """The README's and --help's example prompts name a concept, colour, size and position that the
    concepts world parses; with the quickstart's split (seed 0) the first is seen, the second unseen."""
    from click.testing import CliRunner

    from aria.cli.experiment import SAMPLE_EXAMPLE, sample_command
    from aria.config import load_config
    from aria.data import bundle
    from aria.world import captions, splits

    prompts = re.findall(r"--prompt '([^']+)'", SAMPLE_EXAMPLE)
    assert len(prompts) == 2
    regimes = splits.concept_regimes(bundle.concepts_regimes(load_config(ROOT / "configs" / "concepts-quick.yaml")))
    parsed = [captions.parse_caption(p) for p in prompts]
    assert all(min(p.values()) >= 0 for p in parsed)  # every attribute read back
    assert [int(regimes[p["concept"]]) for p in parsed] == [0, 2]  # seen, unseen
    help_text = " ".join(CliRunner().invoke(sample_command, ["--help"]).output.split())
    assert " ".join(SAMPLE_EXAMPLE.split()) in help_text
    readme = " ".join((ROOT / "README.md").read_text().split())  # lines wrap inside the prompts
    assert all(f"--prompt '{p}'" in readme for p in prompts)


def test_the_teacher_of_a_run_without_teacher_path_is_its_worlds(tmp_path):
    """`aria sample` of a run without teacher.path draws the teacher recorded at export (the one it distilled
    from), else the one its world ships: concepts -> the concepts teacher (the shapes one shares its shapes, so
    nothing else would notice); a files run without teacher.path names teacher.path in one line."""
    from aria.config import load_config
    from aria.world.worlds import ASSETS

    model = tmp_path / "run" / "student"
    for source, teacher in (("concepts", ASSETS / "concepts-teacher"), ("shapes", ASSETS / "teacher")):
        config = load_config(None, [f"data.source={source}"])
        assert config.teacher.path is None
        assert sample.run_teacher(model, {"teacher": str(tmp_path / "gone")}, config) == teacher
        assert sample.run_teacher(model, {}, config) == teacher
        # a run made before the default teacher followed the world: the teacher it recorded, which it learned from
        assert sample.run_teacher(model, {"teacher": str(ASSETS / "teacher")}, config) == ASSETS / "teacher"
    config = load_config(None, ["data.source=files", f"data.prompts_file={tmp_path / 'p.txt'}",
                                f"data.paired_dir={tmp_path}"])
    with pytest.raises(UserError, match="teacher.path") as err:
        sample.run_teacher(model, {"teacher": ""}, config)
    assert "\n" not in str(err.value) and str(err.value).startswith(f"--model {model}: ")
