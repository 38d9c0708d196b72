"""Execute the numbered notebooks headless with papermill (run_all.sh and the tests).

    python -m sosvae_core.runner --profile quick [--data-root DIR] [--device cpu] [--only 02 05] [--output outputs]
                                 [--runs-dir DIR]

Each notebook NN_name.ipynb is executed with its `parameters` cell set, into
<output>/NN_name.ipynb, with its figures and metrics.json in <output>/NN_name/.
What its cells print (which model is trained or loaded, a line per training epoch)
is shown as it comes, indented under the notebook's name.
A summary (wall time and key numbers of every notebook) goes to <output>/summary.json,
and the claims scorecard of notebook 11 is printed at the end and copied to
<output>/scorecard.json. The results page <output>/index.html (`report.py`) gathers the
scorecard, Table 1 and every figure. Trained models are found in, and written to, the runs folder
that the command line and Jupyter share (`paths.runs_root`). The first failing notebook stops the run with its name, cell
and error.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Iterable, Optional

from .paths import ENV_DATA_ROOT, ENV_RUNS_DIR, runs_root

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


class NotebookFailed(RuntimeError):
    pass


def list_notebooks(only: Optional[Iterable[str]] = None, folder: Path = NOTEBOOKS):
    books = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    if only:
        wanted = {str(o).zfill(2) for o in only}
        books = [b for b in books if b.name[:2] in wanted]
        if not books:
            raise ValueError(f"no notebook numbered {sorted(wanted)} in {folder}")
    return books


class _Indented:
    """A text stream that indents each line it writes (a notebook's printed output under its name)."""

    def __init__(self, stream, prefix: str = "    │ "):
        self.stream, self.prefix, self.at_line_start = stream, prefix, True

    def write(self, text: str) -> int:
        for piece in text.splitlines(keepends=True):
            if self.at_line_start:
                self.stream.write(self.prefix)
            self.stream.write(piece)
            self.at_line_start = piece.endswith("\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def run_notebook(path: Path, output: Path, parameters: dict, kernel: str = "python3", stream=None) -> dict:
    """Execute one notebook into `output`; what its cells print goes to `stream` as it comes (if given)."""
    import papermill as pm
    name = path.stem
    out_dir = output / name
    out_dir.mkdir(parents=True, exist_ok=True)
    params = dict(parameters, output_dir=str(out_dir))
    t0 = time.time()
    try:
        pm.execute_notebook(str(path), str(output / path.name), parameters=params, kernel_name=kernel,
                            cwd=str(NOTEBOOKS.parent), progress_bar=False,
                            stdout_file=_Indented(stream) if stream is not None else None)
    except pm.PapermillExecutionError as err:
        first_line = (err.source or "").strip().splitlines()[0] if err.source else ""
        # the execution count, as the notebook shows it (papermill's cell_index counts the
        # error banner and injected-parameter cells it adds)
        raise NotebookFailed(f"notebook {path.name} failed in cell In [{err.exec_count}] ('{first_line}'): "
                             f"{err.ename}: {err.evalue.splitlines()[0] if err.evalue else ''} "
                             f"(executed copy: {output / path.name})") from None
    metrics_file = out_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    return {"notebook": path.name, "wall_time_s": round(time.time() - t0, 1), "metrics": metrics,
            "figures": sorted(p.name for p in out_dir.glob("*.png"))}


def run_all(profile: str = "quick", data_root=None, device: str = "auto", only=None,
            output="outputs", dataset=None, seed: int = 0, runs_dir=None) -> dict:
    """Execute the notebooks (all, or `only`) into `output`. Trained models come from, and go
    to, the runs folder shared with the command line and Jupyter (`paths.runs_root`)."""
    output = Path(output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    runs = runs_root(runs_dir).resolve()
    parameters = {"profile": profile, "data_root": str(data_root) if data_root else None, "device": device,
                  "runs_dir": str(runs), "seed": seed}
    if dataset:
        parameters["dataset"] = dataset
    summary = {"profile": profile, "data_root": parameters["data_root"], "device": device, "runs_dir": str(runs),
               "notebooks": []}
    print(f"trained models: {runs} (found there when already trained)", flush=True)
    t0 = time.time()
    try:
        for book in list_notebooks(only):
            print(f"[{time.strftime('%H:%M:%S')}] {book.name} …", flush=True)
            result = run_notebook(book, output, parameters, stream=sys.stdout)
            print(f"    done in {result['wall_time_s']:.0f} s; figures: {', '.join(result['figures']) or 'none'}",
                  flush=True)
            summary["notebooks"].append(result)
            summary["total_wall_time_s"] = round(time.time() - t0, 1)
            tmp = output / ".summary.json.tmp"
            tmp.write_text(json.dumps(summary, indent=2, default=float))
            os.replace(tmp, output / "summary.json")
        card = output / "11_claims_scorecard" / "scorecard.json"
        if card.exists():
            from .scorecard import format_scorecard
            text = card.read_text()
            (output / "scorecard.json").write_text(text)
            data = json.loads(text)
            print(f"\nClaims scorecard (profile {profile}, dataset {data.get('dataset')}):", flush=True)
            print(format_scorecard(data["claims"]), flush=True)
            summary["scorecard"] = {"passed": data["passed"], "measured": data["measured"]}
    finally:  # the results page, also of a run that stopped early (what it has so far)
        from .report import build_index
        summary["index"] = str(build_index(output))
        print(f"results page: {summary['index']}", flush=True)
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick", choices=["smoke", "quick", "paper"])
    ap.add_argument("--data-root", default=os.environ.get(ENV_DATA_ROOT))
    ap.add_argument("--dataset", help="override the notebooks' default dataset")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--only", nargs="*", help="notebook numbers, e.g. 02 05")
    ap.add_argument("--output", default="outputs")
    ap.add_argument("--runs-dir", help=f"parent of the run folders (default: ${ENV_RUNS_DIR}, else runs/ of the checkout)")
    args = ap.parse_args(argv)
    if args.data_root and not Path(args.data_root).is_dir():
        print(f"error: data root {args.data_root} is not a folder; pass --data-root DIR "
              f"(the folder holding celeba/ and brain_oasis/)", file=sys.stderr)
        return 2
    try:
        summary = run_all(args.profile, args.data_root, args.device, args.only, args.output, args.dataset,
                          runs_dir=args.runs_dir)
    except (NotebookFailed, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"all {len(summary['notebooks'])} notebooks ran in {summary['total_wall_time_s']:.0f} s; "
          f"outputs in {Path(args.output).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
