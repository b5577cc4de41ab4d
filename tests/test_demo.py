"""``make demo``: the whole pipeline as a script, on a tiny synthetic tissue."""

from __future__ import annotations

import pytest

from nichekd.demo import FIGURES, main


def test_demo_writes_every_output_and_prints_the_table(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["--out", str(out), "--n-cells", "1000", "--epochs", "2", "--seed", "1", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    table = printed.split("Niches on the held-out test strip")[1]
    for row in ("student_niche", "he_leiden_niche", "he_teacher_niche"):
        assert row in table
    for col in ("ari", "nmi", "accuracy", "composition_jsd"):
        assert col in table
    for name in FIGURES:
        png = out / f"{name}.png"
        assert png.read_bytes()[:4] == b"\x89PNG", name
    assert (out / "synthetic.zarr" / "zarr.json").exists()
    assert any((out / "student_model").iterdir())

    import pandas as pd
    import spatialdata as sd

    from nichekd.models import NicheStudent

    metrics = pd.read_csv(out / "metrics.csv", index_col=0)
    assert metrics.loc["student_niche", "n_cells"] > 50  # the test strip of a 1000-cell tissue
    assert metrics[["ari", "nmi"]].notna().all().all()
    back = sd.read_zarr(out / "synthetic.zarr").tables["table"]
    assert {"teacher_niche", "student_niche", "split", "he_leiden_niche"} <= set(back.obs)
    student = NicheStudent.load(out / "student_model")
    assert list(student.niche_names) == list(back.obs["teacher_niche"].cat.categories)


def test_demo_rejects_a_tissue_too_small(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "x"), "--n-cells", "100"]) == 2
    assert "n_cells=100" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("flag", ["--architecture", "--n-cells"])
def test_demo_rejects_bad_arguments(flag):
    with pytest.raises(SystemExit):
        main([flag, "nonsense"])
