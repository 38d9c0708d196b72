"""Execute the numbered notebooks headless with papermill (run_all.sh and the tests).

    python -m sosvae_core.runner --profile quick [--data-root DIR] [--device cpu] [--only 02 05] [--output outputs]
                                 [--runs-dir DIR] [--jobs N] [--param KEY=VALUE ...]

Each notebook NN_name.ipynb is executed with its `parameters` cell set, into
<output>/NN_name.ipynb, with its figures and metrics.json in <output>/NN_name/.
What its cells print (which model is trained or loaded, a line per training epoch)
is shown as it comes, indented under the notebook's name.
With notebook 01 among them, every model the notebooks use is trained first, `--jobs N` runs
at a time on a CPU (`pool.py`); the notebooks then run N at a time as well, each kernel with its
share of the cores, their printed lines marked with their number, and notebook 11 last.
A summary (wall time and key numbers of every notebook) goes to <output>/summary.json,
and the claims scorecard of notebook 11 is printed at the end and copied to
<output>/scorecard.json. The results page <output>/index.html (`report.py`) gathers the
scorecard, Table 1 and every figure; it is rewritten when the notebooks start, after each one, and
when the run stops (a failure, Ctrl-C or SIGTERM), so that even a killed run leaves the last
complete page. Trained models are found in, and written to, the runs folder that the command line
and Jupyter share (`paths.runs_root`). The first failing notebook stops the run with its name,
cell and error.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Iterable, Optional

from .paths import ENV_DATA_ROOT, ENV_RUNS_DIR, os_error_message, runs_root, write_json, write_text

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


class NotebookFailed(RuntimeError):
    pass


class Stopped(BaseException):
    """SIGTERM: stop where the run is; the `finally` blocks write the results page on the way out."""


def _stop(signum, frame):
    raise Stopped()


def _kernel_manager():
    """jupyter_client's kernel manager, except that shutting a kernel down sends no SIGINT first.

    Its shutdown interrupts the kernel before asking it to exit. Papermill shuts the kernel down
    right after the reply to its last request (kernel_info), while the kernel may still be in
    that request's handler, where SIGINT raises: the kernel then logs "KeyboardInterrupt caught in
    kernel." to the run's output, though every cell succeeded. A kernel that has run every cell
    has nothing to interrupt, and the shutdown request alone ends it (or, after a grace period,
    the manager kills it)."""
    from jupyter_client.manager import AsyncKernelManager

    class KernelManager(AsyncKernelManager):
        async def _async_interrupt_kernel(self) -> None:
            if not self.shutting_down:
                await super()._async_interrupt_kernel()

    return KernelManager


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
        out = []
        for piece in text.splitlines(keepends=True):
            if self.at_line_start:
                out.append(self.prefix)
            out.append(piece)
            self.at_line_start = piece.endswith("\n")
        self.stream.write("".join(out))  # one write: whole lines stay whole beside another notebook's
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


class _Locked:
    """A text stream shared by threads: each write whole, under one lock."""

    def __init__(self, stream, lock):
        self.stream, self.lock = stream, lock

    def write(self, text: str) -> int:
        with self.lock:
            return self.stream.write(text)

    def flush(self) -> None:
        with self.lock:
            self.stream.flush()


def declared_parameters(path: Path) -> set:
    """The names a notebook's `parameters` cell assigns."""
    import nbformat
    cells = [c for c in nbformat.read(path, as_version=4).cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    return {m.group(1) for c in cells for m in re.finditer(r"^([A-Za-z_]\w*)\s*=", c.source, re.M)}


def parse_params(pairs) -> dict:
    """--param KEY=VALUE … → {KEY: value} (a Python literal, else the text)."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--param takes KEY=VALUE, got {pair!r}; e.g. --param k=1000 'ranks=[1, 5, 25]'")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def run_notebook(path: Path, output: Path, parameters: dict, kernel: str = "python3", stream=None,
                 prefix: str = "    │ ") -> dict:
    """Execute one notebook into `output`; what its cells print goes to `stream` as it comes (if given),
    each line after `prefix`."""
    import papermill as pm
    name = path.stem
    out_dir = output / name
    out_dir.mkdir(parents=True, exist_ok=True)
    params = dict(parameters, output_dir=str(out_dir))
    t0 = time.time()
    try:
        pm.execute_notebook(str(path), str(output / path.name), parameters=params, kernel_name=kernel,
                            cwd=str(NOTEBOOKS.parent), progress_bar=False, kernel_manager_class=_kernel_manager(),
                            stdout_file=_Indented(stream, prefix) if stream is not None else None)
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


# Notebook 11 reads the others' results, so it runs after them. Of the rest notebook 12's
# inpainting and the FID notebooks take longest, so they start first, in this order, when
# notebooks run side by side.
RUN_LAST = ("11",)
START_FIRST = ("12", "13", "08", "09")


def _write_summary(output: Path, summary: dict) -> None:
    """summary.json, and the results page from what the output folder holds now."""
    from .report import build_index
    summary["notebooks"].sort(key=lambda r: r["notebook"])
    write_json(output / "summary.json", summary, sort_keys=False)
    build_index(output)


def _checked_params(books, params: dict) -> dict:
    """{notebook: the parameters its parameters cell declares}; a parameter that none of `books`
    declares is refused in one line."""
    declared = {book: declared_parameters(book) for book in books}
    unknown = sorted(set(params) - set().union(*declared.values()))
    if unknown:
        raise ValueError(f"no notebook among those run takes the parameter(s) {unknown}; see the parameters cell "
                         f"of the notebook you mean (e.g. --only 13 --param k=1000)")
    return declared


def _side_by_side(books, execute, jobs: int) -> None:
    """Execute `books` `jobs` at a time, the START_FIRST ones first, each kernel with its share of
    the cores (the environment is restored afterwards); the first failure, in notebook order, is
    raised. SIGTERM or Ctrl-C leaves without waiting for the notebooks still running."""
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    from .pool import scoped_environment, thread_environment
    books = sorted(books, key=lambda b: (START_FIRST.index(b.name[:2]) if b.name[:2] in START_FIRST
                                         else len(START_FIRST), b.name))
    # each kernel inherits its share of the cores
    with scoped_environment(thread_environment(jobs) if jobs > 1 else {}):
        pool = ThreadPoolExecutor(max_workers=jobs)
        stopping = False
        try:
            futures = [pool.submit(execute, b) for b in books]
            _, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for f in pending:
                f.cancel()
            for f in futures:  # the first failure, in notebook order
                if f.done() and not f.cancelled() and f.exception():
                    raise f.exception()
        except (Stopped, KeyboardInterrupt):
            stopping = True
            raise
        finally:
            pool.shutdown(wait=not stopping, cancel_futures=True)


def _report_scorecard(output: Path, summary: dict, profile: str) -> None:
    """Notebook 11's scorecard, if it ran: copied to <output>/scorecard.json, printed, summarised."""
    card = output / "11_claims_scorecard" / "scorecard.json"
    if not card.exists():
        return
    from .scorecard import format_scorecard
    text = card.read_text()
    write_text(output / "scorecard.json", text)
    data = json.loads(text)
    print(f"\nClaims scorecard (profile {profile}, dataset {data.get('dataset')}):", flush=True)
    print(format_scorecard(data["claims"]), flush=True)
    summary["scorecard"] = {"passed": data["passed"], "measured": data["measured"]}
    _write_summary(output, summary)


def _parameters(profile: str, dataset, data_root, device: str, runs: Path, seed: int) -> dict:
    """The parameters every notebook is given; the dataset only where one is named (else each
    notebook's own)."""
    parameters = {"profile": profile, "data_root": str(data_root) if data_root else None, "device": device,
                  "runs_dir": str(runs), "seed": seed}
    if dataset:
        parameters["dataset"] = dataset
    return parameters


def _train_first(ctx, runs: Path, device: str, jobs: int, summary: dict, t0: float) -> None:
    """Train every model the notebooks of `ctx` use into `runs`, `jobs` at a time (`pool.train_all`);
    the time since `t0` and the runs trained now go into `summary`."""
    from .pool import train_all
    trained = train_all(ctx.planned_configs(), runs_dir=runs, data_root=ctx.data_root, device=device, jobs=jobs)
    summary["training_wall_time_s"] = round(time.time() - t0, 1)
    summary["trained_now"] = trained
    if trained:
        print(f"    trained {len(trained)} run(s) in {summary['training_wall_time_s']:.0f} s", flush=True)


def run_all(profile: str = "quick", data_root=None, device: str = "auto", only=None,
            output="outputs", dataset=None, seed: int = 0, runs_dir=None, jobs: Optional[int] = None,
            params: Optional[dict] = None) -> dict:
    """Execute the notebooks (all, or `only`) into `output`. Trained models come from, and go
    to, the runs folder shared with the command line and Jupyter (`paths.runs_root`).

    jobs: runs trained, and notebooks executed, at once (default `pool.default_jobs`: one
    per CPU core up to 4, one on a GPU). When notebook 01 is among those run, every model
    the notebooks use is trained first, `jobs` at a time (`pool.train_all`); then the
    notebooks run `jobs` at a time, each kernel with its share of the cores, and
    notebook 11 (the scorecard, which reads the others' results) last. `params` sets more
    parameters, each in the notebooks whose parameters cell declares it."""
    from .notebook import context
    from .pool import default_jobs, parse_jobs
    output = Path(output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    runs = runs_root(runs_dir).resolve()
    books = list_notebooks(only)
    params = params or {}
    declared = _checked_params(books, params)
    jobs = parse_jobs(jobs) if jobs is not None else default_jobs(device)
    parameters = _parameters(profile, dataset, data_root, device, runs, seed)
    summary = {"profile": profile, "data_root": parameters["data_root"], "device": device, "runs_dir": str(runs),
               "jobs": jobs, "notebooks": []}
    print(f"trained models: {runs} (found there when already trained)", flush=True)
    t0 = time.time()
    lock = threading.Lock()

    def execute(book: Path) -> None:
        prefix = f"    {book.name[:2]} │ " if jobs > 1 else "    │ "
        with lock:
            print(f"[{time.strftime('%H:%M:%S')}] {book.name} …", flush=True)
        extra = {k: v for k, v in params.items() if k in declared[book]}
        result = run_notebook(book, output, {**parameters, **extra}, stream=_Locked(sys.stdout, lock), prefix=prefix)
        with lock:
            print(f"[{time.strftime('%H:%M:%S')}] {book.name} done in {result['wall_time_s']:.0f} s; "
                  f"figures: {', '.join(result['figures']) or 'none'}", flush=True)
            summary["notebooks"].append(result)
            summary["total_wall_time_s"] = round(time.time() - t0, 1)
            _write_summary(output, summary)

    try:
        _write_summary(output, summary)
        if any(b.name.startswith("01_") for b in books):
            ctx = context(profile, dataset, data_root, device, seed=seed, runs_dir=runs)
            _train_first(ctx, runs, device, jobs, summary, t0)
        _side_by_side([b for b in books if b.name[:2] not in RUN_LAST], execute, jobs)
        for book in books:
            if book.name[:2] in RUN_LAST:
                execute(book)
        _report_scorecard(output, summary, profile)
    finally:  # the results page, also of a run that stopped early (what it has so far)
        with lock:
            _write_summary(output, summary)
        summary["index"] = str(output / "index.html")
        print(f"results page: {summary['index']}", flush=True)
    return summary


def build_parser() -> argparse.ArgumentParser:
    from .configs import PROFILES, experiment_names
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick", choices=PROFILES)
    ap.add_argument("--data-root", default=os.environ.get(ENV_DATA_ROOT))
    ap.add_argument("--dataset", help=f"override the notebooks' default dataset: {experiment_names()}")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--only", nargs="*", help="notebook numbers, e.g. 02 05")
    ap.add_argument("--output", default="outputs")
    ap.add_argument("--jobs", help="runs trained and notebooks executed at once (default: one per CPU core "
                                   "up to 4, one on a GPU; $SOSVAE_JOBS)")
    ap.add_argument("--runs-dir", help=f"parent of the run folders (default: ${ENV_RUNS_DIR}, else runs/ of the checkout)")
    ap.add_argument("--param", nargs="*", metavar="KEY=VALUE",
                    help="a notebook parameter, set in each notebook that declares it, e.g. --only 13 --param k=1000")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.data_root and not Path(args.data_root).is_dir():
        print(f"error: data root {args.data_root} is not a folder; pass --data-root DIR "
              f"(the folder holding celeba/ and brain_oasis/)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _stop)
    try:
        summary = run_all(args.profile, args.data_root, args.device, args.only, args.output, args.dataset,
                          runs_dir=args.runs_dir, jobs=args.jobs, params=parse_params(args.param))
    except (NotebookFailed, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"error: {os_error_message(err)}", file=sys.stderr)
        return 1
    except (Stopped, KeyboardInterrupt) as err:
        print(f"stopped ({'SIGTERM' if isinstance(err, Stopped) else 'interrupted'}); the results so far: "
              f"{Path(args.output).resolve() / 'index.html'}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        # now, without waiting for the notebooks still running in their threads (their kernels
        # exit with their parent process)
        os._exit(143 if isinstance(err, Stopped) else 130)
    print(f"all {len(summary['notebooks'])} notebooks ran in {summary['total_wall_time_s']:.0f} s; "
          f"outputs in {Path(args.output).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
