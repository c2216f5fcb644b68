"""The report: method table from metrics.json, ablation figures from run outputs, refusal of mixed models."""

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from lit_hspace import report
from lit_hspace.cli import main
from test_cli import STRENGTHS, write_config

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
    assert "<td>haas</td>" in page and "mse_vs_strength.png" in page and "strength_row.png" in page
    assert Image.open(out / "mse_vs_strength.png").size[0] > 100


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
    init = {"method": {"class_path": "lit_hspace.methods.JIVE"}, "directions": "reference.safetensors"}
    run = report.Run(tmp_path, {"model": {"init_args": init}}, {}, rows)
    head, body = report.direction_table([run])
    assert head[-1] == "moves its named factor most"
    assert body == [["jive", "smile", "2", "0.5 ± 0", "1/2"]]


def test_rank_grid(tmp_path, tiny_model_dir):
    for r_c, r_a in ((1, 1), (1, 2), (2, 1), (2, 2)):
        main(["test", "--config", str(write_config(tmp_path, tiny_model_dir, jive(r_c, r_a), {"seeds": [0]}, regions=("eyes", "mouth"), name=f"j{r_c}{r_a}"))])
    out = tmp_path / "report"
    report.main([str(tmp_path / "runs"), "--out", str(out)])
    assert (out / "rank_grid.png").is_file()
    assert "Rank grid" in (out / "index.html").read_text()


def test_composition_of_one_direction_is_its_edit(method_runs):
    """Cell (a, 1) of the composition grid is the run's own edit along its first direction at strength a."""
    (run,) = [r for r in report.load_runs([method_runs]) if r.method == "rbe"]
    cells = report.compose(run, [STRENGTHS[-1]], 2)
    assert set(cells) == {(STRENGTHS[-1], 1), (STRENGTHS[-1], 2)}
    written = np.asarray(Image.open(run.path / "images" / "seed000000" / f"d00_mouth_a{STRENGTHS[-1]:+g}.png"), dtype=np.float32) / 255
    assert np.abs(cells[(STRENGTHS[-1], 1)] - written).max() <= 1 / 255 + 1e-4
    assert np.abs(cells[(STRENGTHS[-1], 2)] - written).max() > 1e-3  # two directions differ from one


def test_runs_of_different_models_are_refused(method_runs, tmp_path):
    other = tmp_path / "other"
    (run,) = [r for r in report.load_runs([method_runs]) if r.method == "haas"]
    config = yaml.safe_load((run.path / "config.yaml").read_text())
    config["model"]["init_args"]["model"] = "elsewhere"
    other.mkdir()
    (other / "config.yaml").write_text(yaml.safe_dump(config))
    for name in ("edits.csv", "metrics.json"):
        (other / name).write_bytes((run.path / name).read_bytes())
    with pytest.raises(ValueError, match=r"different models \(.*: 2 runs; elsewhere: 1 runs\)"):
        report.load_runs([method_runs, other])


def test_nothing_to_report(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no finished test run"):
        report.load_runs([tmp_path])
