"""`python -m entrypoint`: read the settings, run the job, turn user errors into exit code 2."""

from __future__ import annotations

import logging
import os
import sys

from entrypoint.errors import EXIT_BUG, EXIT_CONFIG, EXIT_OK, EXIT_PREEMPTED, ConfigError, Preempted


def main(argv: list[str]) -> int:
    from entrypoint import reference

    unknown = [a for a in argv if a not in ("--dry-run", "--help", "-h")]
    if unknown:
        print(f"error: unknown argument {unknown[0]!r}; settings are environment variables (see --help)",
              file=sys.stderr)
        return EXIT_CONFIG
    if "--help" in argv or "-h" in argv:
        sys.stdout.write(reference.text())
        return EXIT_OK
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        from entrypoint.job import run
        from entrypoint.logs import setup_logging
        from entrypoint.settings import load_settings, secret_setting_values

        settings = load_settings()
        setup_logging(settings.log_format, secret_setting_values(settings))
        if "--dry-run" in argv and os.environ.get("RANK", "0") == "0":  # one table, not one a process
            from entrypoint.presets import table

            print(table(settings), flush=True)
        result = run(settings, dry_run="--dry-run" in argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except Preempted as exc:
        print(f"preempted: {exc}", file=sys.stderr)
        return EXIT_PREEMPTED
    except Exception:  # a bug: its traceback goes through the log handler, so secrets are masked there too
        logging.getLogger("entrypoint").exception("the job failed with an unexpected error")
        return EXIT_BUG
    if result is not None:
        print(result.summary())
    return EXIT_OK


def cli() -> None:
    """The `dpo-job` console script and `python -m entrypoint`."""
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    cli()
