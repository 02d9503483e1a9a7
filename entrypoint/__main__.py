"""`python -m entrypoint`: read the settings, run the job, turn what a user can act on into its exit code (2: a bad
setting or input, 3: out of GPU memory, 65: an on-policy round without pairs, 69: a sampler or judge endpoint down,
75: preempted, 76: a restart on a GPU too small, to recover elsewhere; errors.py)."""

from __future__ import annotations

import gc
import logging
import os
import sys

from entrypoint.errors import (
    EXIT_BUG,
    EXIT_CONFIG,
    EXIT_DATA,
    EXIT_OK,
    EXIT_OUT_OF_MEMORY,
    EXIT_PREEMPTED,
    EXIT_RECOVER_ELSEWHERE,
    EXIT_UNAVAILABLE,
    ConfigError,
    EndpointUnavailable,
    NoTrainingData,
    OutOfMemory,
    Preempted,
    RecoverElsewhere,
)


def main(argv: list[str]) -> int:
    from entrypoint.config import reference
    from entrypoint.run.rerun import from_run_argument

    from_run, argv = from_run_argument(argv)
    unknown = [a for a in argv if a not in ("--dry-run", "--help", "-h")]
    if from_run == "" and not unknown:
        print("error: --from-run needs a run: its directory, its manifest.json, or s3://.../manifest.json",
              file=sys.stderr)
        return EXIT_CONFIG
    if unknown:
        print(f"error: unknown argument {unknown[0]!r}; settings are environment variables (see --help)",
              file=sys.stderr)
        return EXIT_CONFIG
    if "--help" in argv or "-h" in argv:
        sys.stdout.write(reference.text())
        return EXIT_OK
    # Start-up allocates millions of objects (torch, transformers, the data) and few cycles: the collector,
    # paused until training starts (job.start_collecting_garbage), took about 1.2 s of a 4.5 s start on 2 cores.
    gc.disable()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        from entrypoint.config.settings import load_settings, secret_setting_values
        from entrypoint.logs import setup_logging
        from entrypoint.run.rerun import announce, start

        recorded = None
        if from_run:  # the recorded run's settings, under any DPO_* variable set here
            recorded = start(from_run)
        settings = load_settings()
        setup_logging(settings.log_format, secret_setting_values(settings))
        first_rank = os.environ.get("RANK", "0") == "0"
        if recorded:
            announce(recorded, settings, show=first_rank)
        dry_run = "--dry-run" in argv
        if dry_run and first_rank:  # one table, not one a process
            from entrypoint.config.origin import table

            print(table(settings), flush=True)
        if not dry_run and (code := earlier_failure_code(settings)):
            return code
        from entrypoint.job import run  # the stages' modules load once the settings are good

        result = run(settings, dry_run=dry_run, recorded=recorded)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OutOfMemory as exc:
        print(f"out of memory: {exc}", file=sys.stderr)
        return failed(settings, EXIT_OUT_OF_MEMORY, str(exc))
    except Preempted as exc:
        print(f"preempted: {exc}", file=sys.stderr)
        return EXIT_PREEMPTED
    except NoTrainingData as exc:
        print(f"error: {exc}", file=sys.stderr)
        return failed(settings, EXIT_DATA, str(exc))
    except EndpointUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE  # not recorded as a failure: the endpoint may be back on the next attempt
    except RecoverElsewhere as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_RECOVER_ELSEWHERE
    except Exception:  # a bug: its traceback goes through the log handler, so secrets are masked there too
        logging.getLogger("entrypoint").exception("the job failed with an unexpected error")
        return EXIT_BUG
    if result is not None:
        print(result.summary())
    return EXIT_OK


def earlier_failure_code(settings) -> int | None:
    """An earlier attempt of this SkyPilot managed job ended with a failure retrying cannot fix (run/failed.py): the
    same exit code at once, not a second model load."""
    from entrypoint.run.failed import earlier_failure
    from entrypoint.run.paths import run_paths

    earlier = earlier_failure(run_paths(settings).checkpoint_dir)
    if earlier is None:
        return None
    print(f"error: not retried: this managed job's last attempt ended with exit {earlier['exit_code']}, and the same "
          f"settings end the same way; change them and launch again. It said: {earlier['message']}", file=sys.stderr)
    return int(earlier["exit_code"])


def failed(settings, code: int, message: str) -> int:
    """Record a failure retrying cannot fix for SkyPilot's restarts; returns `code`."""
    from entrypoint.run.failed import record_failure
    from entrypoint.run.paths import run_paths

    record_failure(run_paths(settings).checkpoint_dir, code, message)
    return code


def cli() -> None:
    """The `dpo-job` console script and `python -m entrypoint`."""
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    cli()
