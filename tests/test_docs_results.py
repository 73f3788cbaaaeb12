"""The documentation's measured tables are what ``benchmarks.docs_results`` makes of the
committed result files: a benchmark rerun without regenerating the docs fails here."""

from pathlib import Path

import pytest

from benchmarks import docs_results

ROOT = Path(__file__).resolve().parents[1]


def test_committed_tables_and_readme_headline_match_the_results(capsys):
    code = docs_results.main(["--check"])
    out = capsys.readouterr().out
    assert code == 0, f"regenerate with `python -m benchmarks.docs_results`:\n{out}"


def test_check_lists_a_stale_table_and_writes_nothing(tmp_path, capsys):
    docs = tmp_path / "docs"
    (docs / "results").mkdir(parents=True)
    stale = docs / "results" / "headline.md"
    stale.write_text("| model |\n|---|\n| typed by hand |\n")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{docs_results.HEADLINE_START}\nold\n{docs_results.HEADLINE_END}\n"
                      "rest\n")
    assert docs_results.main(["--check", "--out", str(docs), "--readme", str(readme)]) == 1
    out = capsys.readouterr().out
    assert str(stale) in out and str(readme) in out
    assert stale.read_text().endswith("typed by hand |\n")
    assert "old" in readme.read_text()
    assert not (docs / "_static").exists()


def test_readme_headline_replaces_only_between_the_markers():
    text = f"a\n{docs_results.HEADLINE_START}\nold\n{docs_results.HEADLINE_END}\nb\n"
    new = docs_results.readme_with_headline(text, "| t |\n")
    assert new.startswith(f"a\n{docs_results.HEADLINE_START}\n")
    assert new.endswith(f"| t |\n{docs_results.HEADLINE_END}\nb\n")
    assert "old" not in new
    assert docs_results.readme_with_headline("no markers\n", "| t |\n") is None


def test_every_table_has_provenance_and_no_hand_typed_placeholder():
    for name, text in docs_results.tables().items():
        assert "|---" in text, name
        if name != "headline":
            assert "easured " in text and "command `" in text, name
            assert "commit" in text, name


def test_a_plot_is_written_with_one_colour_per_model(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.image as mpimg

    colours = {m: docs_results.colour(m) for m in docs_results.OURS}
    assert len(set(colours.values())) == len(colours)
    assert all(docs_results.colour(f"{m}@floor") == c for m, c in colours.items())
    [path] = docs_results.plots(tmp_path, ["efficiency_train_cpu.png"])
    assert path == tmp_path / "efficiency_train_cpu.png"
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    image = mpimg.imread(path)[..., :3]
    for model in ("LRURec", "LinRec", "ELASTIC", "SoftmaxSASRec"):
        rgb = [int(colours[model][i:i + 2], 16) / 255 for i in (1, 3, 5)]
        close = (abs(image - rgb) < 0.02).all(axis=-1)
        assert close.sum() > 50, f"{model}'s colour is not in the plot"
