"""The report: method table from metrics.json, ablation figures from run outputs, refusal of mixed models."""


import numpy as np
import pytest
from PIL import Image

from lit_hspace import report
from lit_hspace.composition import compose
from lit_hspace.cli import main
from lit_hspace.figures import FONT_SIZE, PAD
from lit_hspace.layout import RunLayout, RunManifest
from conftest import STRENGTHS, write_config

HAAS = {"class_path": "lit_hspace.methods.Haas", "init_args": {"k": 2, "max_iter": 3}}
RBE = {"class_path": "lit_hspace.methods.RBE", "init_args": {"k": 2, "n_outside": 2, "max_iter": 3}}


def jive(r_c, r_a):
    return {"class_path": "lit_hspace.methods.JIVE", "init_args": {"k": 2, "rank_joint": r_c, "rank_individual": r_a, "max_iter": 3}}


@pytest.fixture(scope="module")
def method_runs(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("report")
    for name, method in (("haas", HAAS), ("rbe", RBE)):
        main(["test", "--config", str(write_config(tmp, tiny_model_dir, method, {"seeds": [0, 1]}, name=name))])
    return tmp / "runs"


def test_method_table_and_figures(method_runs, tmp_path):
    out = tmp_path / "report"
    report.main([str(method_runs), "--out", str(out)])
    runs = report.load_runs([method_runs])
    head, body = report.method_table(runs)
    assert head == ["method", "runs", "MSE inside", "MSE outside ↓"]
    for row in body:  # each cell is its run's metrics.json value
        (run,) = [r for r in runs if r.method == row[0]]
        assert float(row[2]) == pytest.approx(run.metrics["test/mse_inside"], rel=1e-3)
        assert float(row[3]) == pytest.approx(run.metrics["test/mse_outside"], rel=1e-3)
    assert [row[0] for row in body] == ["haas", "rbe"]
    page = (out / "index.html").read_text()
    assert "<td>haas</td>" in page and "mse_vs_strength.png" in page and "strength_row.png" in page and "outside_vs_inside.png" in page


def test_strength_rows_show_every_method(method_runs, tmp_path):
    """One row per method: cell (method, a) is that run's first edit at strength a, upscaled 8 times."""
    out = tmp_path / "report"
    report.main([str(method_runs), "--out", str(out)])
    runs = {r.label: r for r in report.load_runs([method_runs])}
    figure = np.asarray(Image.open(out / "strength_row.png").convert("RGB"), dtype=np.int16)
    assert figure.shape[0] == FONT_SIZE + 2 * PAD + 2 * (128 + PAD)  # two rows: haas and rbe
    left = figure.shape[1] - len(STRENGTHS) * (128 + PAD)
    for i, label in enumerate(("haas", "rbe")):
        for j, a in enumerate(STRENGTHS):
            cell = np.asarray(runs[label].edit_image(a)[0], dtype=np.int16).repeat(8, 0).repeat(8, 1)
            y, x = FONT_SIZE + 2 * PAD + i * (128 + PAD), left + j * (128 + PAD)
            assert np.array_equal(figure[y : y + 128, x : x + 128], cell), (label, a)


def test_matched_table_interpolates_outside_at_common_inside_levels(method_runs):
    """Each method's MSE outside at a common MSE inside, interpolated on its own (inside, outside) curve over
    |a|; the levels are fractions of the largest inside change that every method reaches."""
    runs = report.load_runs([method_runs])
    curves = report.outside_against_inside(runs)
    head, body = report.matched_table(runs, fractions=(0.5, 1.0))
    reach = min(inside.max() for inside, _ in curves.values())
    assert head[1] == f"MSE outside at MSE inside {0.5 * reach:.4g}"
    for label, half, full in body:
        inside, outside = curves[label]
        # By hand: |a| = 0 and 40 give two points; the line through them at half the common reach.
        (i0, i1), (o0, o1) = inside, outside
        for level, shown in ((0.5 * reach, half), (reach, full)):
            assert float(shown) == pytest.approx(o0 + (o1 - o0) * (level - i0) / (i1 - i0), rel=1e-3)


def test_direction_table_is_mean_and_spread_over_images(method_runs):
    runs = report.load_runs([method_runs])
    head, body = report.direction_table(runs)
    assert head == ["method", "direction", "images", "MSE inside", "MSE outside", "share inside"]
    (rbe,) = [r for r in runs if r.method == "rbe"]
    (row,) = [row for row in body if row[:2] == ["rbe", "mouth 0"]]
    # Written out: per image, the mean over non-zero strengths of direction 0's MSE inside; then over images.
    per_image = []
    for image in ("seed000000", "seed000001"):
        values = [float(r["mse_inside"]) for r in rbe.rows if r["image"] == image and r["direction"] == "0" and float(r["strength"]) != 0]
        per_image.append(sum(values) / len(values))
    mean, sd = np.mean(per_image), np.std(per_image, ddof=1)
    assert row[2] == "2"
    shown_mean, shown_sd = row[3].split(" ± ")
    assert float(shown_mean) == pytest.approx(mean, rel=2e-3) and float(shown_sd) == pytest.approx(sd, rel=5e-2)


def test_direction_table_counts_images_where_a_named_direction_moves_its_factor_most(tmp_path):
    def row(image, strength, smile, mouth_open):
        return {"image": image, "direction": "0", "label": "mouth", "name": "smile", "strength": str(strength),
                "inside_share": "0.5", "d_smile": str(smile), "d_mouth_open": str(mouth_open)}

    rows = [row("a", 50, 0.4, 0.1), row("a", -50, -0.3, 0.1), row("a", 0, 0, 0),  # a: smile moves most
            row("b", 50, 0.1, 0.3), row("b", -50, -0.2, -0.4)]  # b: mouth_open does (|-0.2| + 0.1 < 0.3 + 0.4)
    manifest = RunManifest("test", "m", "f", "jive", {}, [], 0.6, 600, 50, {"source": "seeds"}, {}, "reference.safetensors")
    run = report.Run(RunLayout(tmp_path), manifest, rows, label="jive")
    head, body = report.direction_table([run])
    assert head[-1] == "moves its named factor most"
    assert body == [["jive", "smile", "2", "0.5 ± 0", "1/2"]]


def test_rank_grid(tmp_path, tiny_model_dir):
    for r_c, r_a in ((1, 1), (1, 2), (2, 1), (2, 2)):
        main(["test", "--config", str(write_config(tmp_path, tiny_model_dir, jive(r_c, r_a), {"seeds": [0]}, regions=("eyes", "mouth"), name=f"j{r_c}{r_a}"))])
    out = tmp_path / "report"
    report.main([str(tmp_path / "runs"), "--out", str(out)])
    assert "Rank grid" in (out / "index.html").read_text()
    # Cell (r_C, r_A) of the grid is that run's edit, upscaled 8 times (16 px to 128 px).
    runs = {r.ranks: r for r in report.load_runs([tmp_path / "runs"])}
    grid = np.asarray(Image.open(out / "rank_grid.png").convert("RGB"), dtype=np.int16)
    left = grid.shape[1] - 2 * (128 + PAD)  # two columns after the row labels
    for i, r_c in enumerate((1, 2)):
        for j, r_a in enumerate((1, 2)):
            cell = np.asarray(runs[(r_c, r_a)].edit_image()[0], dtype=np.int16).repeat(8, 0).repeat(8, 1)
            y, x = FONT_SIZE + 2 * PAD + i * (128 + PAD), left + j * (128 + PAD)
            assert np.array_equal(grid[y : y + 128, x : x + 128], cell), (r_c, r_a)


def test_composition_of_one_direction_is_its_edit(method_runs):
    """Cell (a, 1) of the composition grid is the run's own edit along its first direction at strength a."""
    (run,) = [r for r in report.load_runs([method_runs]) if r.method == "rbe"]
    cells, captions = compose(run.layout, run.manifest, [STRENGTHS[-1]], 2)
    assert captions == ["mouth 0", "mouth 1"]  # one region: its first directions
    assert set(cells) == {(STRENGTHS[-1], 1), (STRENGTHS[-1], 2)}
    written = np.asarray(Image.open(run.layout.edit_image("seed000000", 0, "mouth", STRENGTHS[-1])), dtype=np.float32) / 255
    assert np.abs(cells[(STRENGTHS[-1], 1)] - written).max() <= 1 / 255 + 1e-4
    assert np.abs(cells[(STRENGTHS[-1], 2)] - written).max() > 1e-3  # two directions differ from one


def test_runs_of_different_models_are_refused(method_runs, tmp_path):
    other = tmp_path / "other"
    (run,) = [r for r in report.load_runs([method_runs]) if r.method == "haas"]
    manifest = run.manifest
    manifest.model = "elsewhere"
    manifest.write(RunLayout(other))
    (other / "edits.csv").write_bytes((run.path / "edits.csv").read_bytes())
    with pytest.raises(ValueError, match=r"different models \(.*: 2 runs; elsewhere: 1 runs\)"):
        report.load_runs([method_runs, other])


def test_nothing_to_report(tmp_path):
    with pytest.raises(FileNotFoundError, match="no finished test run"):
        report.load_runs([tmp_path])


def test_runs_that_do_not_compare_are_separated_and_failed_runs_listed(method_runs, tmp_path, tiny_model_dir):
    """A run on another region gets a section of its own, headed by the regions; a rerun that reused the stored
    sets is labelled by where its directions came from; a failed run is listed with its error, not compared."""
    experiment = tmp_path / "runs"
    config = write_config(tmp_path, tiny_model_dir, RBE, {"seeds": [0, 1]}, name="rbe")
    for extra in ([], [], ["--model.init_args.regions", "[eyes]"]):
        main(["test", "--config", str(config), *extra])
    failed = RunManifest.read(RunLayout(experiment / "rbe" / "version_0"))
    failed.status, failed.error = "failed", "RuntimeError: planted"
    failed.write(RunLayout(experiment / "rbe" / "version_9"))
    out = tmp_path / "report"
    report.main([str(experiment), "--out", str(out)])
    runs, others = report.find_runs([experiment])
    groups = report.comparable_groups(runs)
    assert [(heading, len(members)) for heading, members in groups] == [
        ("regions mouth (box [0.33, 0.67, 0.67, 0.82])", 2), ("regions eyes (box [0.25, 0.44, 0.75, 0.56])", 1)]
    mouth = next(members for heading, members in groups if heading.startswith("regions mouth"))
    assert sorted(r.label for r in mouth) == ["rbe directions=discovered", "rbe directions=reused"]
    assert [(o.status, o.error) for o in others] == [("failed", "RuntimeError: planted")]
    page = (out / "index.html").read_text()
    assert "<h1>regions mouth" in page and "<h1>regions eyes" in page and "group_1/mse_vs_strength.png" in page
    assert "failed (RuntimeError: planted)" in page
    assert "href='../runs/rbe/version_1/grids/seed000000.png'" in page  # the per-image grids, linked
    assert "href='../runs/rbe/version_1/overview.png'>overview</a>" in page  # and the run's overview


def test_composition_works_on_a_run_that_reused_its_directions(method_runs, tmp_path):
    """A rerun stores no set of its own; its run.json says where each set came from and the composition grid uses it."""
    (haas,) = [r for r in report.load_runs([method_runs]) if r.method == "haas"]
    rerun = tmp_path / "rerun"
    manifest = RunManifest.read(haas.layout)
    manifest.directions = {image: RunManifest.read(haas.layout).origin(image, haas.layout) for image in manifest.images}
    assert manifest.directions["seed000000"].source == "discovered"
    manifest.directions = {image: type(origin)("reused", origin.file) for image, origin in manifest.directions.items()}
    manifest.write(RunLayout(rerun))
    cells, _ = compose(RunLayout(rerun), manifest, [STRENGTHS[-1]], 1)
    written = np.asarray(Image.open(haas.layout.edit_image("seed000000", 0, "mouth", STRENGTHS[-1])), dtype=np.float32) / 255
    assert np.abs(cells[(STRENGTHS[-1], 1)] - written).max() <= 1 / 255 + 1e-4


def test_composition_starts_from_the_latent_the_run_edited(tmp_path, tiny_model_dir, face_png):
    """An image inverted to T and sampled back down, with DDPM inversion's noise maps: the composition grid's
    one-direction cell is the run's own edit (not a re-inversion of the 8-bit input PNG, which loses both)."""
    config = write_config(tmp_path, tiny_model_dir, RBE, {"images": [str(face_png)]}, name="inverted")
    main(["test", "--config", str(config), "--model.init_args.diffusion.invert_to=T",
          "--model.init_args.diffusion.inversion.method=ddpm"])
    (run,) = report.load_runs([tmp_path / "runs"])
    cells, _ = compose(run.layout, run.manifest, [STRENGTHS[-1]], 1)
    written = np.asarray(Image.open(run.layout.edit_image("face", 0, "mouth", STRENGTHS[-1])), dtype=np.float32) / 255
    assert np.abs(cells[(STRENGTHS[-1], 1)] - written).max() <= 1 / 255 + 1e-4


def test_the_report_reads_runs_without_lightning_or_diffusers():
    import subprocess
    import sys

    code = "import sys, lit_hspace.report; print(sorted(m for m in ('lightning', 'diffusers') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
