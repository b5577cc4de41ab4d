"""The tutorials and the paper-protocol notebook run top to bottom, so that they cannot rot.

Each notebook runs as a temporary copy in a temporary working directory, with ``NICHEKD_DATA_DIR`` passed
through; notebooks on real data skip where that data is absent. ``python tests/test_notebooks.py`` executes
them all and stores their outputs in the repository copies (what the docs show).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted([*(REPO / "tutorials").glob("*.ipynb"), *(REPO / "notebooks").glob("*.ipynb")])
# real datasets each notebook reads (folders under NICHEKD_DATA_DIR)
NEEDS = {
    "02_mouse_olfactory_bulb": ["st_mob"],
    "04_your_own_data": ["visium_tiny", "visium_mouse_brain", "xenium_hest_tiny"],
    "05_dlpfc_external_truth": ["dlpfc_donor1"],
    "06_visium_hd_kidney": ["visium_hd_kidney_crop"],
}
CELL_TIMEOUT_S = 600


def _data_dir() -> Path:
    return Path(os.environ.get("NICHEKD_DATA_DIR", REPO.parent / "shared" / "data")).resolve()


def _tidy(nb) -> None:
    """Keep what a reader needs in the outputs: a progress bar's final state, no machine paths."""
    home = str(Path.home())
    replace = {str(_data_dir()): "$NICHEKD_DATA_DIR", str(REPO): "<repo>", home: "~"}
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        merged = []  # a progress bar arrives as many small stream outputs: join them first
        for out in cell.get("outputs", []):
            prev = merged[-1] if merged else None
            if out.get("output_type") == "stream" and prev and prev.get("output_type") == "stream":
                if prev["name"] == out["name"]:
                    prev["text"] += out["text"]
                    continue
            merged.append(out)
        if cell.cell_type == "code":
            cell.outputs = merged
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                # a progress bar redraws itself with carriage returns; keep only what a terminal ends with
                text = "\n".join(line.rsplit("\r", 1)[-1] for line in out["text"].split("\n"))
                out["text"] = text
            for key in ("text", "evalue"):
                if isinstance(out.get(key), str):
                    for old, new in replace.items():
                        out[key] = out[key].replace(old, new)
            data = out.get("data", {})
            if isinstance(data.get("text/plain"), str):
                for old, new in replace.items():
                    data["text/plain"] = data["text/plain"].replace(old, new)
            if isinstance(data.get("text/html"), str):
                for old, new in replace.items():
                    data["text/html"] = data["text/html"].replace(old, new)
        # temporary folders of the run (the working directory) say nothing to a reader
        for out in cell.get("outputs", []):
            if isinstance(out.get("text"), str):
                out["text"] = re.sub(r"/tmp/[\w./-]*?nb-run-\w+/", "", out["text"])
                out["text"] = re.sub(r"/tmp/ipykernel_\d+/\d+\.py", "<cell>", out["text"])


def execute(path: Path, workdir: Path):
    """Run a notebook in ``workdir`` and return it with its outputs."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    env = {
        "NICHEKD_DATA_DIR": str(_data_dir()),
        "HF_HUB_OFFLINE": "1",
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        client = NotebookClient(
            nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
        )
        client.execute(cwd=str(workdir))
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


# notebooks that predict niches state a verdict (markdown "**Verdict:** ... student leads|ties|loses ...")
# and print the computed one (nk.tl.verdict); they must agree, in order
VERDICT_NOTEBOOKS = {
    "01_quickstart",
    "02_mouse_olfactory_bulb",
    "03_he_only",
    "05_dlpfc_external_truth",
    "06_visium_hd_kidney",
    "paper_protocol",
}
_OUTCOME = re.compile(r"student (leads|ties|loses)")


def verdicts(nb) -> tuple[list[str], list[str]]:
    """``(stated, computed)`` outcomes: from markdown cells holding ``**Verdict:**`` and from printed
    ``Verdict: the student ...`` lines of code outputs."""
    stated, computed = [], []
    for cell in nb.cells:
        if cell.cell_type == "markdown" and "**Verdict:**" in cell.source:
            stated += _OUTCOME.findall(cell.source.split("**Verdict:**", 1)[1])[:1]
        for out in cell.get("outputs", []):
            text = out.get("text") or out.get("data", {}).get("text/plain", "")
            for line in str(text).splitlines():
                line = line.strip().strip("'\"")
                if line.startswith("Verdict: the student"):
                    computed += _OUTCOME.findall(line)[:1]
    return stated, computed


def test_verdicts_are_parsed():
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("**Verdict:** the student loses to Leiden here."),
        nbformat.v4.new_code_cell(
            "x", outputs=[nbformat.v4.new_output("stream", text="Verdict: the student leads on ARI")]
        ),
    ]
    assert verdicts(nb) == (["loses"], ["leads"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    from conftest import dataset_path

    for name in NEEDS.get(path.stem, []):
        dataset_path(name)  # skips with the reason when absent
    nb = execute(path, tmp_path)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert sum(c.cell_type == "code" for c in nb.cells) >= 5
    stated, computed = verdicts(nb)
    if path.stem in VERDICT_NOTEBOOKS:
        assert computed, f"{path.name} prints no verdict (nk.tl.verdict) under its table"
    assert stated == computed, f"{path.name}: the text says the student {stated}, the tables say {computed}"


def test_notebooks_are_stored_with_outputs_and_no_machine_paths():
    assert {p.stem for p in NOTEBOOKS} >= {
        "01_quickstart",
        "02_mouse_olfactory_bulb",
        "03_he_only",
        "04_your_own_data",
        "paper_protocol",
    }
    for path in NOTEBOOKS:
        text = path.read_text()
        assert '"output_type": "display_data"' in text, f"{path.name} is stored without figures"
        assert str(REPO) not in text and "/tmp/" not in text, f"{path.name} leaks a path of this machine"


if __name__ == "__main__":  # store outputs: python tests/test_notebooks.py [name ...]
    import time

    import nbformat

    chosen = [p for p in NOTEBOOKS if len(sys.argv) < 2 or p.stem in sys.argv[1:]]
    for path in chosen:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="nb-run-") as tmp:
            nb = execute(path, Path(tmp))
        _tidy(nb)
        nbformat.write(nb, path)
        print(f"{path.relative_to(REPO)}: {time.perf_counter() - t0:.0f} s", flush=True)
