"""Runs command lines of ``captum_mamba.apps.cli``, each in its own process, and reports their
exit codes, stderr and run times as JSON (``python tests/cli_driver.py cases.json``).

The package is imported once; every case runs in a process forked from this one (a
real process with its own exit code and stderr), so that a table of dozens of error
cases does not pay for importing torch and transformers dozens of times.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time


def run_case(argv: list[str], env: dict[str, str]) -> dict[str, object]:
    from captum_mamba.apps.cli import main

    with tempfile.TemporaryFile(mode="w+") as err, tempfile.TemporaryFile(mode="w+") as out:
        start = time.perf_counter()
        pid = os.fork()
        if pid == 0:  # the child: run the command line, exit with its code
            os.dup2(err.fileno(), 2)
            os.dup2(out.fileno(), 1)
            os.environ.update(env)
            code = 0
            try:
                main(argv)
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else 1
            except BaseException:  # an uncaught error: print it as Python would
                import traceback

                traceback.print_exc()
                code = 99
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        seconds = time.perf_counter() - start
        err.seek(0)
        out.seek(0)
        return {
            "code": os.waitstatus_to_exitcode(status),
            "stderr": err.read(),
            "stdout": out.read(),
            "seconds": seconds,
        }


def main() -> None:
    with open(sys.argv[1]) as handle:
        cases = json.load(handle)
    import torch

    torch.set_num_threads(1)
    results = [run_case(case["argv"], case.get("env", {})) for case in cases]
    print(json.dumps(results))


if __name__ == "__main__":
    main()
