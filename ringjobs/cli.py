"""The `ringjobs` command line: argument parsing and printing only (SPEC 8, 11).

Every call pays this module's import time, so it loads the standard library and
`ringjobs.client` / `ringjobs.exitcodes` only; `interpolate` is loaded by `apply`,
the daemon by `ringjobs daemon`.
"""

from __future__ import annotations

import argparse
import codecs
import functools
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence

from ringjobs import exitcodes
from ringjobs.client import (
    TERMINAL_STATUSES,
    ApiError,
    Client,
    ClientError,
    ConnectionLost,
    DaemonUnreachable,
    SocketPermissionDenied,
    default_socket_path,
    printable,
)

# `typing` costs ~4 ms of start-up; mypy honours a plain TYPE_CHECKING constant.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import datetime
    from typing import Any, TextIO, TypeAlias

    JSON: TypeAlias = dict[str, Any]
    Commands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

Handler = Callable[[argparse.Namespace], int]
RUN_STATUSES = ("pending", "starting", "running", "completed", "failed", "cancelled")
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
FAILURE_LOG_LINES = 20


class CommandFailed(Exception):
    """A local error (unreadable file, bad variable); `str()` is the message."""

    def __init__(self, message: str, code: int = exitcodes.ERROR) -> None:
        super().__init__(message)
        self.code = code


# -- entry point -----------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry: parse, run one command, return its exit code (SPEC 8)."""
    try:
        arguments = sys.argv[1:] if argv is None else list(argv)
        args = build_parser(arguments).parse_args(arguments)
    except SystemExit as exc:  # --help, --version and usage errors (exit 2)
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    try:
        handler: Handler = args.handler
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        _silence_stdout()
        return 141
    except (CommandFailed, ClientError) as exc:
        return _report_error(exc)


def _report_error(exc: CommandFailed | ClientError) -> int:
    if isinstance(exc, ApiError):
        _print_problem(exc)
        return exitcodes.for_http_status(exc.status)
    if isinstance(exc, DaemonUnreachable):
        _print_unreachable(exc.socket_path)
        return exitcodes.UNREACHABLE
    _error(str(exc))
    if isinstance(exc, CommandFailed):
        return exc.code
    if isinstance(exc, SocketPermissionDenied):
        return exitcodes.USAGE
    if isinstance(exc, ConnectionLost):
        return exitcodes.UNREACHABLE
    return exitcodes.ERROR


def _silence_stdout() -> None:
    # The reader went away (`| head`): point stdout at /dev/null so the final
    # flush at interpreter exit does not print a second BrokenPipeError.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


# -- parser ----------------------------------------------------------------------------
#
# argparse is slow to build: every parser and argument costs gettext look-ups and a
# formatter. So `build_parser(argv)` builds in full only the command that argv names;
# the others are bare entries that keep `ringjobs --help` complete.

ArgumentAdder = Callable[[argparse.ArgumentParser], None]
_SOCKET_HELP = "daemon socket (default: $RINGJOBS_SOCKET, else the daemon's default path)"


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The CLI's parser; given `argv`, only the command it names is built in full."""
    words = None if argv is None else _command_words(argv)
    parser = argparse.ArgumentParser(
        prog="ringjobs",
        description="Run one-shot jobs in hardened Docker containers (client of the daemon).",
        formatter_class=_Formatter,
        allow_abbrev=False,  # `--sock X` would hide the command word from _command_words
    )
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
    parser.add_argument("--socket", metavar="PATH", help=_SOCKET_HELP)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False, formatter_class=_Formatter)
    # SUPPRESS: `--socket` after the command overrides, its absence keeps the global one.
    common.add_argument("--socket", metavar="PATH", default=argparse.SUPPRESS, help=_SOCKET_HELP)
    for name in _TOP_LEVEL:
        if name in _GROUPS:
            _add_group(commands, name, common, words)
        else:
            _add_leaf(commands, name, name, common, words is None or words[:1] == [name])
    return parser


def _command_words(argv: Sequence[str]) -> list[str]:
    """The command and sub-command words: the first non-options, past `--socket PATH`."""
    words: list[str] = []
    tokens = iter(argv)
    for token in tokens:
        if token == "--socket":
            next(tokens, None)
        elif not token.startswith("-"):
            words.append(token)
            if len(words) == 2 or words[0] not in _GROUPS:
                break
    return words


def _add_group(
    commands: Commands, name: str, common: argparse.ArgumentParser, words: list[str] | None
) -> None:
    help = _GROUPS[name]
    parser = commands.add_parser(name, help=help, description=help, formatter_class=_Formatter)
    if words is not None and words[:1] != [name]:
        return
    group = parser.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")
    for leaf in _GROUP_LEAVES[name]:
        full = words is None or words[1:2] in ([], [leaf])
        _add_leaf(group, leaf, f"{name} {leaf}", common, full)


def _add_leaf(
    commands: Commands, name: str, key: str, common: argparse.ArgumentParser, full: bool
) -> None:
    help, handler, add_arguments = _LEAVES[key]
    if not full:
        commands.add_parser(name, help=help, formatter_class=_Formatter)
        return
    parents = [] if key == "daemon" else [common]  # the daemon has its own --socket
    parser = commands.add_parser(
        name, help=help, description=help, parents=parents, formatter_class=_Formatter
    )
    parser.set_defaults(handler=handler)
    add_arguments(parser)


class _Formatter(argparse.HelpFormatter):
    """Sized without `shutil`, which HelpFormatter imports and queries for every argument."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        super().__init__(prog, indent_increment, max_help_position, width or _help_width())


@functools.cache
def _help_width() -> int:
    try:
        columns = int(os.environ.get("COLUMNS", "")) or os.get_terminal_size(1).columns
    except (ValueError, OSError):
        columns = 80
    return max(columns - 2, 40)


class _VersionAction(argparse.Action):
    """`--version`, read only when asked for."""

    def __init__(self, option_strings: list[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from importlib.metadata import version

        parser.exit(message=f"ringjobs {version('ringjobs')}\n")


def _add_output(parser: argparse.ArgumentParser, default: str = "table") -> None:
    parser.add_argument(
        "-o", "--output", choices=(default, "json"), default=default, help="output format"
    )


def _add_document_output(parser: argparse.ArgumentParser) -> None:
    _add_output(parser, default="text")


def _add_wait(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait",
        action="store_true",
        help="block until the run ends; exit with its code (0, the job's code, 137 OOM, "
        "124 deadline, 130 cancelled, 1 other failure)",
    )
    parser.add_argument(
        "--logs", action="store_true", help="stream the run's logs while waiting (implies --wait)"
    )


def _apply_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-f",
        "--file",
        dest="files",
        action="append",
        required=True,
        metavar="FILE",
        help="manifest file, directory of .yaml/.yml/.json files, or - for stdin (repeatable)",
    )
    parser.add_argument(
        "--env-file",
        dest="env_files",
        action="append",
        metavar="FILE",
        help="KEY=VALUE variables for $VAR interpolation (repeatable; later files win). "
        "As in docker compose, the shell environment wins over env files",
    )
    parser.add_argument("--dry-run", action="store_true", help="validate and print the jobs")
    parser.add_argument("--skip-workers", action="store_true", help="skip kind: worker entries")
    _add_wait(parser)
    _add_output(parser)


def _namespace_filter(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--namespace", help="only this namespace")
    _add_output(parser)


def _job_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", type=_job_ref, metavar="NAMESPACE/NAME")


def _job_inspect_arguments(parser: argparse.ArgumentParser) -> None:
    _job_argument(parser)
    _add_document_output(parser)


def _job_run_arguments(parser: argparse.ArgumentParser) -> None:
    _job_argument(parser)
    _add_overrides(parser)
    _add_wait(parser)


def _rerun_arguments(parser: argparse.ArgumentParser) -> None:
    _run_argument(parser)
    _add_overrides(parser)
    _add_wait(parser)


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--command",
        dest="command_override",
        metavar="CMD",
        help="replace the command for this run (split like a shell)",
    )
    parser.add_argument(
        "--env",
        action="append",
        metavar="NAME=VALUE",
        default=[],
        help="set a variable for this run (repeatable)",
    )
    parser.add_argument("--timeout", metavar="D", help="deadline for this run (30m, none)")
    parser.add_argument(
        "--backoff-limit", type=_natural_int, metavar="N", help="retries for this run"
    )


def _exec_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--namespace", required=True, help="namespace of the run")
    parser.add_argument("--image", help="image to run")
    parser.add_argument(
        "--from",
        dest="source",
        metavar="SOURCE",
        help="borrow a running container's image and environment: NAME, "
        "compose:PROJECT/SERVICE or label:KEY=VALUE",
    )
    parser.add_argument(
        "--env",
        action="append",
        metavar="NAME=VALUE",
        default=[],
        help="a variable for the container (repeatable)",
    )
    parser.add_argument("--timeout", metavar="D", help="deadline (30m, none)")
    _add_wait(parser)
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ...")


def _run_list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--job", metavar="NAME", help="only runs of this job")
    parser.add_argument("--status", choices=RUN_STATUSES, help="only runs in this status")
    parser.add_argument("--limit", type=_positive_int, metavar="N", help="at most N runs")
    parser.add_argument("--before", type=_positive_int, metavar="ID", help="runs older than ID")
    _namespace_filter(parser)


def _run_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=_positive_int, metavar="ID")


def _run_inspect_arguments(parser: argparse.ArgumentParser) -> None:
    _run_argument(parser)
    _add_document_output(parser)


def _run_wait_arguments(parser: argparse.ArgumentParser) -> None:
    _run_argument(parser)
    parser.add_argument("--logs", action="store_true", help="stream the run's logs while waiting")


def _run_events_arguments(parser: argparse.ArgumentParser) -> None:
    _run_argument(parser)
    parser.add_argument("-f", "--follow", action="store_true", help="until the run ends")
    _add_output(parser)


def _logs_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=_positive_int, metavar="RUN")
    parser.add_argument("-f", "--follow", action="store_true", help="until the run ends")
    parser.add_argument("--tail", type=_natural_int, metavar="N", help="only the last N lines")
    parser.add_argument("--since", metavar="D", help="only lines newer than 10m or RFC 3339")
    parser.add_argument("--stream", choices=("stdout", "stderr"), help="only this stream")
    parser.add_argument("--timestamps", action="store_true", help="prefix lines with their time")


def _prune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("namespace", metavar="NS", nargs="?")
    parser.add_argument(
        "--all-namespaces", action="store_true", help="every namespace (never implied)"
    )
    parser.add_argument(
        "--older-than", metavar="D", help="only runs finished more than D ago (30d, 12h)"
    )
    parser.add_argument(
        "--keep-last", type=_natural_int, metavar="N", help="keep each job's newest N runs"
    )
    parser.add_argument(
        "--status",
        dest="statuses",
        action="append",
        choices=RUN_STATUSES,
        metavar="S",
        help="only runs with this status (repeatable; active ones need --all)",
    )
    parser.add_argument("--all", action="store_true", help="cancel and remove active runs too")
    parser.add_argument("--dry-run", action="store_true", help="only say what would go")
    _add_output(parser)


def _secret_create_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME")
    parser.add_argument("-n", "--namespace", required=True, help="namespace of the secret")
    parser.add_argument(
        "-v", "--value", help="the value (visible in shell history; prefer stdin or a file)"
    )
    parser.add_argument("--from-file", metavar="FILE", help="read the value from FILE")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing value")


def _secret_list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--namespace", help="only this namespace")
    _add_output(parser)


def _secret_delete_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME")
    parser.add_argument("-n", "--namespace", required=True, help="namespace of the secret")
    parser.add_argument(
        "--force", action="store_true", help="delete even if jobs or runs still refer to it"
    )


def _schedule_fires_arguments(parser: argparse.ArgumentParser) -> None:
    _job_argument(parser)
    parser.add_argument(
        "--limit", type=_positive_int, metavar="N", help="newest N fires (default 20, max 100)"
    )
    _add_output(parser)


def _daemon_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML config file")
    parser.add_argument("--socket", dest="daemon_socket", metavar="PATH", help="listen here")
    parser.add_argument("--database", metavar="PATH", help="SQLite database file")


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def _job_ref(text: str) -> tuple[str, str]:
    namespace, _, name = text.partition("/")
    if not namespace or not name or "/" in name:
        raise argparse.ArgumentTypeError(f"expected NAMESPACE/NAME, got {text!r}")
    return namespace, name


def _natural_int(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(text)


def _positive_int(text: str) -> int:
    value = _natural_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number from 1, got {text!r}")
    return value


# -- commands --------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> Client:
    return Client(getattr(args, "socket", None))


def cmd_apply(args: argparse.Namespace) -> int:
    manifests = _read_manifests(args.files, args.env_files or [])
    client = _client(args)
    result = client.apply(manifests, dry_run=args.dry_run, skip_workers=args.skip_workers)
    for warning in result.get("warnings") or []:
        print(f"warning: {warning}", file=sys.stderr)
    if args.dry_run:
        _print_json([job.get("spec") for job in result.get("jobs", [])])
        return exitcodes.OK
    _print_apply(result, args.output)
    if not (args.wait or args.logs):
        return exitcodes.OK
    run_ids = [job["run_id"] for job in result.get("jobs", []) if job.get("run_id") is not None]
    if not run_ids:
        print("no run was started; nothing to wait for", file=sys.stderr)
        return exitcodes.OK
    return _wait_for_runs(client, run_ids, args.logs)


def _print_apply(result: JSON, output: str) -> None:
    if output == "json":
        _print_json(result)
        return
    for namespace in result.get("namespaces") or []:
        if namespace.get("action") not in (None, "unchanged"):
            print(f"namespace {namespace.get('name')}: {namespace['action']}")
    for job in result.get("jobs", []):
        name = f"{job.get('namespace')}/{job.get('name')}"
        print(f"job {name}: {job.get('action')} (revision {job.get('revision')})")
        if job.get("run_id") is not None:
            print(f"run {job['run_id']} started")


def cmd_job_list(args: argparse.Namespace) -> int:
    result = _client(args).list_jobs(args.namespace)
    if args.output == "json":
        _print_json(result)
        return exitcodes.OK
    headers = ("NAMESPACE", "NAME", "REV", "SCHEDULE", "SUSPEND", "LAST RUN", "STATUS", "UPDATED")
    _print_table(headers, [_job_row(job) for job in result.get("jobs", [])])
    return exitcodes.OK


def _job_row(job: JSON) -> list[object]:
    last = job.get("last_run") or {}
    return [
        job.get("namespace"),
        job.get("name"),
        job.get("revision"),
        job.get("schedule"),
        job.get("suspend"),
        last.get("id"),
        last.get("status"),
        _local_time(job.get("updated_at")),
    ]


def cmd_job_inspect(args: argparse.Namespace) -> int:
    namespace, name = args.job
    _print_document(_client(args).get_job(namespace, name), args.output)
    return exitcodes.OK


def cmd_job_delete(args: argparse.Namespace) -> int:
    namespace, name = args.job
    result = _client(args).delete_job(namespace, name)
    print(f"job {result.get('deleted') or f'{namespace}/{name}'} deleted")
    return exitcodes.OK


def cmd_job_run(args: argparse.Namespace) -> int:
    namespace, name = args.job
    client = _client(args)
    return _started(client, client.start_job_run(namespace, name, _overrides(args)), args)


def cmd_run_rerun(args: argparse.Namespace) -> int:
    client = _client(args)
    return _started(client, client.rerun(args.run, _overrides(args)), args)


def cmd_exec(args: argparse.Namespace) -> int:
    if bool(args.source) == bool(args.image):
        raise CommandFailed(
            "exec needs exactly one of --image IMAGE or --from SOURCE "
            "(NAME, compose:PROJECT/SERVICE or label:KEY=VALUE)",
            exitcodes.USAGE,
        )
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise CommandFailed(
            "exec needs a command after --, e.g. -- sh -c 'echo hi'", exitcodes.USAGE
        )
    request: JSON = {"namespace": args.namespace, "command": command}
    if args.image:
        request["image"] = args.image
    else:
        request["from"] = args.source  # the daemon parses the selector, for API users too
    if args.env:
        request["environment"] = _env_pairs(args.env)
    if args.timeout:
        request["timeout"] = args.timeout
    client = _client(args)
    return _started(client, client.exec_run(request), args, quiet_stdout=True)


def _started(
    client: Client, run: JSON, args: argparse.Namespace, quiet_stdout: bool = False
) -> int:
    # exec keeps stdout for the job's own output, as `docker run` does.
    print(f"run {run['id']} started", file=sys.stderr if quiet_stdout else sys.stdout)
    if not (args.wait or args.logs):
        return exitcodes.OK
    return _wait_for_runs(client, [run["id"]], args.logs)


def _overrides(args: argparse.Namespace) -> JSON:
    import shlex

    overrides: JSON = {}
    if args.command_override:
        overrides["command"] = shlex.split(args.command_override)
    if args.env:
        overrides["env"] = _env_pairs(args.env)
    if args.timeout:
        overrides["timeout"] = args.timeout
    if args.backoff_limit is not None:
        overrides["backoff_limit"] = args.backoff_limit
    return overrides


def _env_pairs(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise CommandFailed(f"--env {pair!r} must be NAME=VALUE", exitcodes.USAGE)
        env[name] = value
    return env


def cmd_run_list(args: argparse.Namespace) -> int:
    client = _client(args)
    result = client.list_runs(args.namespace, args.job, args.status, args.limit, args.before)
    if args.output == "json":
        _print_json(result)
        return exitcodes.OK
    headers = ("ID", "NAMESPACE", "JOB", "REV", "TRIGGER", "STATUS", "REASON", "EXIT")
    rows = [_run_row(run) for run in result.get("runs", [])]
    _print_table((*headers, "CREATED", "DURATION"), rows)
    return exitcodes.OK


def _run_row(run: JSON) -> list[object]:
    keys = ("id", "namespace", "job", "revision", "trigger", "status", "reason", "exit_code")
    return [run.get(key) for key in keys] + [_local_time(run.get("created_at")), _duration(run)]


def cmd_run_inspect(args: argparse.Namespace) -> int:
    _print_document(_client(args).get_run(args.run), args.output)
    return exitcodes.OK


def cmd_run_wait(args: argparse.Namespace) -> int:
    return _wait_for_runs(_client(args), [args.run], args.logs)


def cmd_run_cancel(args: argparse.Namespace) -> int:
    run = _client(args).cancel_run(args.run)
    if args.output == "json":
        _print_json(run)
    elif run.get("status") == "cancelled":
        print(f"run {run['id']} cancelled")
    else:
        print(f"run {run['id']}: cancel requested; stopping its container")
    return exitcodes.OK


def cmd_run_events(args: argparse.Namespace) -> int:
    for event in _client(args).stream_events(args.run, follow=args.follow):
        if args.output == "json":
            print(json.dumps(event), flush=args.follow)
            continue
        when, kind = _local_time(event.get("time")), event.get("type") or "-"
        print(f"{when}  {kind:<17}  {event.get('message') or ''}".rstrip(), flush=args.follow)
    return exitcodes.OK


def cmd_logs(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.follow:
        _follow_logs(client, args.run, args.tail, args.since, args.stream, args.timestamps)
        return exitcodes.OK
    _flush_both()  # nothing else is printed until the last line: no flush per line
    lines = client.print_logs(args.run, args.tail, args.since, args.stream, args.timestamps)
    previous = None
    decoders = {
        out: codecs.getincrementaldecoder("utf-8")("replace") for out in (sys.stdout, sys.stderr)
    }
    for stream, data in lines:
        out = sys.stdout if stream == "stdout" else sys.stderr
        if previous is not None and out is not previous:
            _flush_both()  # in order when both go to one place (2>&1)
        _write_bytes(out, data, text_flushed=True, decoder=decoders[out])
        previous = out
    _flush_both()
    return exitcodes.OK


def cmd_namespace_list(args: argparse.Namespace) -> int:
    result = _client(args).list_namespaces()
    if args.output == "json":
        _print_json(result)
        return exitcodes.OK
    keys = ("name", "jobs", "runs", "active_runs", "network", "secrets")
    rows = [
        [namespace.get(key) for key in keys] + [_environment_cell(namespace.get("environment"))]
        for namespace in result.get("namespaces", [])
    ]
    _print_table(("NAME", "JOBS", "RUNS", "ACTIVE", "NETWORK", "SECRETS", "ENVIRONMENT"), rows)
    return exitcodes.OK


def _environment_cell(environment: object) -> str:
    """NAME=value pairs as the API gives them (secret references are already redacted)."""
    if not isinstance(environment, dict):
        return ""
    return " ".join(f"{name}={value}" for name, value in environment.items())


def cmd_secret_create(args: argparse.Namespace) -> int:
    value = _secret_value(args)
    result = _client(args).create_secret(args.namespace, args.name, value, args.overwrite)
    print(f"secret {args.namespace}/{args.name} {result.get('action') or 'created'}")
    return exitcodes.OK


def _secret_value(args: argparse.Namespace) -> str:
    """From -v, --from-file or stdin; one trailing newline is dropped, as `$(cat f)` would."""
    if args.value is not None and args.from_file:
        raise CommandFailed("give the value with -v or --from-file, not both", exitcodes.USAGE)
    if args.value is not None:
        return str(args.value)
    if args.from_file:
        try:
            with open(args.from_file, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            raise CommandFailed(f"cannot read {args.from_file}: {exc.strerror}") from None
    elif sys.stdin.isatty():
        import getpass

        data = getpass.getpass(f"value of secret {args.name}: ").encode()
    else:
        data = sys.stdin.buffer.read()
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise CommandFailed("the secret value is not UTF-8 text") from None
    return text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text


def cmd_secret_list(args: argparse.Namespace) -> int:
    result = _client(args).list_secrets(args.namespace)
    if args.output == "json":
        _print_json(result)
        return exitcodes.OK
    rows = [
        [
            row.get("namespace"),
            row.get("name"),
            _local_time(row.get("updated_at")),
            ", ".join(row.get("referenced_by") or []),
        ]
        for row in result.get("secrets", [])
    ]
    _print_table(("NAMESPACE", "NAME", "UPDATED", "REFERENCED BY"), rows)
    return exitcodes.OK


def cmd_secret_delete(args: argparse.Namespace) -> int:
    result = _client(args).delete_secret(args.namespace, args.name, args.force)
    print(f"secret {result.get('deleted') or args.name} deleted")
    refs = result.get("referenced_by") or []
    if refs:
        print(f"warning: still referenced by {', '.join(refs)}", file=sys.stderr)
    return exitcodes.OK


def cmd_namespace_prune(args: argparse.Namespace) -> int:
    if bool(args.namespace) == bool(args.all_namespaces):
        raise CommandFailed("give one namespace, or --all-namespaces", exitcodes.USAGE)
    client = _client(args)
    names = [args.namespace] if args.namespace else _namespace_names(client)
    results = [
        client.prune_namespace(
            name,
            all=args.all,
            dry_run=args.dry_run,
            older_than=args.older_than,
            keep_last=args.keep_last,
            statuses=args.statuses,
        )
        for name in names
    ]
    if args.output == "json":
        _print_json(results[0] if args.namespace else results)
        return exitcodes.OK
    for name, result in zip(names, results, strict=True):
        _print_prune(name, result)
    return exitcodes.OK


def _namespace_names(client: Client) -> list[str]:
    return [str(ns["name"]) for ns in client.list_namespaces().get("namespaces", [])]


def _print_prune(namespace: str, result: JSON) -> None:
    run_ids = result.get("run_ids") or []
    dry_run = bool(result.get("dry_run"))
    count = max(int(result.get("runs_removed") or 0), len(run_ids))
    listed = ": " + _id_ranges(run_ids) if run_ids else ""
    runs = f"{count} run" if count == 1 else f"{count} runs"
    print(f"{'would remove' if dry_run else 'removed'} {runs} from {namespace}{listed}")
    cancelled = result.get("cancelled") or 0
    counts = {
        "log lines": result.get("log_lines_removed") or 0,
        "events": result.get("events_removed") or 0,
        "containers": result.get("containers_removed") or 0,
        "cancelled": len(cancelled) if isinstance(cancelled, list) else cancelled,
    }
    # A dry run may only list the runs; zero counts would then read as a promise.
    if not dry_run or any(counts.values()):
        print("  " + ", ".join(f"{name}: {value}" for name, value in counts.items()))


def _id_ranges(run_ids: list[int]) -> str:
    """`1-500, 502, 504-510`: thousands of pruned ids stay readable."""
    spans: list[list[int]] = []
    for run_id in sorted(run_ids):
        if spans and run_id == spans[-1][1] + 1:
            spans[-1][1] = run_id
        else:
            spans.append([run_id, run_id])
    parts = [[f"{a}-{b}"] if b - a >= 2 else [str(i) for i in range(a, b + 1)] for a, b in spans]
    return ", ".join(part for group in parts for part in group)


def cmd_job_suspend(args: argparse.Namespace) -> int:
    namespace, name = args.job
    _client(args).suspend_job(namespace, name)
    print(
        f"job {namespace}/{name}: suspended; its schedule does not fire until `ringjobs job resume`"
    )
    return exitcodes.OK


def cmd_job_resume(args: argparse.Namespace) -> int:
    namespace, name = args.job
    row = _client(args).resume_job(namespace, name)
    nxt = row.get("next_run_at")
    print(f"job {namespace}/{name}: resumed; next fire {nxt or '-'} (missed fires are not run)")
    return exitcodes.OK


def cmd_schedule_list(args: argparse.Namespace) -> int:
    result = _client(args).list_schedules(args.namespace)
    if args.output == "json":
        _print_json(result)
        return exitcodes.OK
    headers = [
        *("NAMESPACE", "JOB", "SCHEDULE", "TIME ZONE", "SUSPENDED"),
        *("NEXT (UTC)", "NEXT (LOCAL)", "LAST RUN", "STATUS"),
    ]
    _print_table(headers, [_schedule_row(row) for row in result.get("schedules", [])])
    return exitcodes.OK


def _schedule_row(row: JSON) -> list[object]:
    local = row.get("next_run_at_local")
    return [
        row.get("namespace"),
        row.get("job"),
        row.get("schedule"),
        row.get("time_zone"),
        row.get("suspended"),
        _utc_minute(row.get("next_run_at")),
        local[:16].replace("T", " ") + local[19:] if isinstance(local, str) else None,
        row.get("last_run_id"),
        row.get("last_status"),
    ]


def _utc_minute(value: object) -> str | None:
    return f"{value[:16].replace('T', ' ')}Z" if isinstance(value, str) else None


def cmd_schedule_fires(args: argparse.Namespace) -> int:
    namespace, name = args.job
    result = _client(args).list_fires(namespace, name, args.limit)
    if args.output == "json":
        _print_json(result)
        return exitcodes.OK
    rows = [
        [_utc_minute(f.get("fire_at")), f.get("outcome"), f.get("run_id"), f.get("message")]
        for f in result.get("fires", [])
    ]
    _print_table(("FIRE (UTC)", "OUTCOME", "RUN", "MESSAGE"), rows)
    return exitcodes.OK


def _audit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", type=_positive_int, metavar="ID", help="only changes to this run")
    parser.add_argument("--limit", type=_positive_int, metavar="N", help="at most N (100)")
    parser.add_argument("--before", type=_positive_int, metavar="ID", help="entries older than ID")
    _add_output(parser)


def cmd_audit(args: argparse.Namespace) -> int:
    """Who changed what through the socket, newest first."""
    result = _client(args).list_audit(args.run, args.limit, args.before)
    if args.output == "json":
        _print_json(result)
        return exitcodes.OK
    keys = ("id", "caller_uid", "caller_pid", "action", "target", "status", "run_id")
    rows = [
        [_local_time(event.get("time")), *(event.get(key) for key in keys)]
        for event in result.get("events", [])
    ]
    _print_table(("TIME", "ID", "UID", "PID", "ACTION", "TARGET", "STATUS", "RUN"), rows)
    return exitcodes.OK


def cmd_daemon(args: argparse.Namespace) -> int:
    # The only command that may load the heavy daemon stack (aiohttp, docker, pydantic).
    from pathlib import Path

    from ringjobs.launch import run_daemon

    socket = args.daemon_socket or getattr(args, "socket", None)
    paths = [Path(value) if value else None for value in (args.config, socket, args.database)]
    return int(run_daemon(*paths))


def cmd_doctor(args: argparse.Namespace) -> int:
    client = _client(args)
    checks = [_check_socket(client.socket_path)]
    unreachable = False
    try:
        checks += _health_checks(client.health())
    except (DaemonUnreachable, ConnectionLost) as exc:
        unreachable = True
        checks += _unanswered_checks(str(exc))
    except ClientError as exc:
        checks += _unanswered_checks(str(exc))
    for ok, name, detail in checks:
        print(f"{'ok' if ok else 'FAIL':<4}  {name}: {detail}")
    if unreachable:
        _print_unreachable(client.socket_path)
        return exitcodes.UNREACHABLE
    return exitcodes.OK if all(ok for ok, _, _ in checks) else exitcodes.ERROR


# -- doctor checks ---------------------------------------------------------------------

Check = tuple[bool, str, str]


def _check_socket(path: str) -> Check:
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return False, "socket", f"{path}: {exc.strerror}"
    if not stat.S_ISSOCK(mode):
        return False, "socket", f"{path} exists but is not a socket"
    return True, "socket", path


def _unanswered_checks(problem: str) -> list[Check]:
    unknown = "unknown: the daemon did not answer"
    return [(False, "daemon", problem), (False, "docker", unknown), (False, "database", unknown)]


def _health_checks(health: JSON) -> list[Check]:
    docker = health.get("docker") or {}
    database = health.get("database") or {}
    summary = (
        f"answers /v1/health (version {health.get('version', '?')}, "
        f"status {health.get('status', '?')}, {health.get('active_runs', 0)} active runs)"
    )
    if docker.get("ok"):
        docker_detail = f"reachable, version {docker.get('version') or '?'}"
    else:
        docker_detail = f"unreachable: {docker.get('error') or 'no detail'}"
    database_detail = str(database.get("path") or "-")
    if not database.get("ok"):
        database_detail += f": {database.get('error') or 'not usable'}"
    return [
        (True, "daemon", summary),
        (bool(docker.get("ok")), "docker", docker_detail),
        (bool(database.get("ok")), "database", database_detail),
    ]


# -- waiting and logs ------------------------------------------------------------------


def _wait_for_runs(client: Client, run_ids: list[int], with_logs: bool) -> int:
    """Wait for every run in turn; the exit code is the first non-zero one."""
    codes = [_wait_for_run(client, run_id, with_logs, len(run_ids) > 1) for run_id in run_ids]
    return next((code for code in codes if code), exitcodes.OK)


def _wait_for_run(client: Client, run_id: int, with_logs: bool, banner: bool) -> int:
    if with_logs:
        if banner:
            print(f"==> logs of run {run_id} <==", file=sys.stderr, flush=True)
        _follow_logs(client, run_id)
    run = client.wait_until_terminal(run_id, on_reconnect=_say_reconnecting)
    status = run.get("status", "")
    code = exitcodes.for_finished_run(status, run.get("reason"), run.get("exit_code"))
    if status == "completed":
        print(f"run {run_id} completed", file=sys.stderr)
    else:
        print(_failure_line(run), file=sys.stderr)
        if not with_logs:
            _print_last_lines(client, run_id)
    return code


def _failure_line(run: JSON) -> str:
    status = run.get("status")
    text = f"run {run.get('id')} {status}"
    if status == "failed":
        text += f": {run.get('reason') or 'unknown reason'}"
    if run.get("exit_code") is not None:
        text += f" (exit code {run['exit_code']})"
    if run.get("message"):
        text += f": {run['message']}"
    return text


def _print_last_lines(client: Client, run_id: int) -> None:
    try:
        records = list(client.stream_logs(run_id, tail=FAILURE_LOG_LINES))
    except ClientError:
        return  # the failure line is already out; missing logs must not hide it
    if not records:
        return
    print(f"--- last {len(records)} log lines of run {run_id} ---", file=sys.stderr)
    for record in records:
        _write_log(record, False, flush=False, out=sys.stderr)
    _flush_both()


def _say_reconnecting(error: ClientError) -> None:
    print(f"warning: {error}; reconnecting for up to a minute", file=sys.stderr, flush=True)


class _LogCursor:
    """The last record shown, so that a follow resumed after a restart skips repeats."""

    def __init__(self) -> None:
        self.last: dict[object, tuple[int, int]] = {}  # per completion of a fan-out run
        self.since: str | None = None

    def is_new(self, record: JSON) -> bool:
        key = (int(record.get("attempt") or 0), int(record.get("seq") or 0))
        completion = record.get("completion")
        last = self.last.get(completion)
        if last is not None and key <= last:
            return False
        self.last[completion], self.since = key, record.get("time") or self.since
        return True


def _follow_logs(
    client: Client,
    run_id: int,
    tail: int | None = None,
    since: str | None = None,
    stream: str | None = None,
    timestamps: bool = False,
) -> None:
    """Print the logs as they arrive until the run ends, riding out a daemon restart."""
    cursor = _LogCursor()
    reconnector = client.reconnector(_say_reconnecting)
    while True:
        resumed = cursor.since is not None
        records = client.stream_logs(
            run_id, True, None if resumed else tail, cursor.since or since, stream
        )
        try:
            for record in records:
                reconnector.reset()
                if cursor.is_new(record):
                    _write_log(record, timestamps, flush=True)
            return
        except ClientError as exc:
            if not reconnector.pause(exc):
                raise


def _write_log(
    record: JSON,
    timestamps: bool,
    flush: bool,
    out: TextIO | None = None,
    text_flushed: bool = False,
) -> None:
    """stdout records to stdout, stderr and `system` records to stderr, as bytes."""
    if out is None:
        out = sys.stdout if record.get("stream") == "stdout" else sys.stderr
    _write_bytes(out, printable(record, timestamps), text_flushed)
    if flush:
        out.flush()
        buffer = getattr(out, "buffer", None)
        if buffer is not None:
            buffer.flush()


def _write_bytes(
    out: TextIO, data: bytes, text_flushed: bool, decoder: codecs.IncrementalDecoder | None = None
) -> None:
    """`text_flushed`: the caller flushed both streams and prints no text meanwhile, so
    the text layer holds nothing to keep in order with (a flush per line is a write
    per line: 30% of `logs RUN`'s CPU). `decoder`, for a stream that takes text only:
    one for all of its pieces, which may cut a character in two."""
    buffer = getattr(out, "buffer", None)
    if buffer is None:
        out.write(decoder.decode(data) if decoder else data.decode("utf-8", "replace"))
    else:
        if not text_flushed:
            out.flush()  # keep order with text already printed on this stream
        buffer.write(data)


def _flush_both() -> None:
    for out in (sys.stdout, sys.stderr):
        out.flush()
        buffer = getattr(out, "buffer", None)
        if buffer is not None:
            buffer.flush()


# -- manifests -------------------------------------------------------------------------


def _read_manifests(paths: list[str], env_files: list[str]) -> list[JSON]:
    """Read and interpolate every manifest; report every problem before sending anything."""
    from ringjobs.interpolate import InterpolationError, interpolate

    env = _environment(env_files)
    manifests: list[JSON] = []
    errors: list[str] = []
    for source, text in _manifest_texts(paths):
        try:
            manifests.append({"source": source, "content": interpolate(text, env)})
        except InterpolationError as exc:
            errors.append(f"{source}: " + str(exc).replace("\n", "\n  "))
    if errors:
        raise CommandFailed("\n".join(errors))
    return manifests


def _environment(env_files: list[str]) -> dict[str, str]:
    """Env files in order (later wins), then the shell environment on top (compose's rule)."""
    from ringjobs.interpolate import parse_env_file

    env: dict[str, str] = {}
    for path in env_files:
        try:
            env.update(parse_env_file(_read_text(path), path))
        except ValueError as exc:
            raise CommandFailed(str(exc)) from None
    env.update(os.environ)
    return env


def _manifest_texts(paths: list[str]) -> Iterator[tuple[str, str]]:
    for path in paths:
        if path == "-":
            yield "<stdin>", sys.stdin.read()
        elif os.path.isdir(path):
            yield from _directory_texts(path)
        else:
            yield path, _read_text(path)


def _directory_texts(directory: str) -> Iterator[tuple[str, str]]:
    names = sorted(name for name in os.listdir(directory) if name.endswith(MANIFEST_SUFFIXES))
    if not names:
        raise CommandFailed(f"{directory} holds no .yaml, .yml or .json file")
    for name in names:
        path = os.path.join(directory, name)
        yield path, _read_text(path)


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except UnicodeDecodeError:
        raise CommandFailed(f"cannot read {path}: it is not UTF-8 text") from None
    except OSError as exc:
        raise CommandFailed(f"cannot read {path}: {exc.strerror or exc}") from None


# -- printing --------------------------------------------------------------------------


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def _print_problem(exc: ApiError) -> None:
    _error(f"{exc.title}: {exc.detail}" if exc.detail else exc.title)
    for violation in exc.violations:
        parts = (violation.get(key) for key in ("source", "path", "message"))
        print("  " + ": ".join(str(part) for part in parts if part), file=sys.stderr)


def _print_unreachable(socket_path: str) -> None:
    import shlex

    command = "ringjobs daemon"
    if socket_path != default_socket_path():
        command += f" --socket {shlex.quote(socket_path)}"
    _error(
        f"cannot reach the ringjobs daemon at {socket_path} (is it running?); "
        f"start it with: {command}"
    )


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2))


def _print_document(document: JSON, output: str) -> None:
    if output == "json":
        _print_json(document)
    else:
        print("\n".join(_render(document)))


def _render(value: object, indent: int = 0) -> Iterator[str]:
    """YAML-like `key: value` lines for a JSON document, for people to read."""
    pad = "  " * indent
    if isinstance(value, dict):
        for key, item in value.items():
            if _is_leaf(item):
                yield f"{pad}{key}: {_scalar(item)}"
            else:
                yield f"{pad}{key}:"
                yield from _render(item, indent + 1)
    elif isinstance(value, list):
        for item in value:
            lines = list(_render(item, indent + 1)) if not _is_leaf(item) else []
            if lines:
                lines[0] = f"{pad}- {lines[0][len(pad) + 2 :]}"
                yield from lines
            else:
                yield f"{pad}- {_scalar(item)}"
    else:
        yield pad + _scalar(value)


def _is_leaf(value: object) -> bool:
    return not isinstance(value, dict | list) or not value


def _scalar(value: object) -> str:
    if isinstance(value, str) and value and "\n" not in value and value.strip() == value:
        return value
    return json.dumps(value)


def _cell(value: object) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _print_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    cells = [list(headers)] + [[_cell(value) for value in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print(
            "   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def _parse_time(value: object) -> datetime.datetime | None:
    import datetime

    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


def _local_time(value: object) -> str:
    """RFC 3339 UTC as local `YYYY-MM-DD HH:MM:SS`; anything unparsable as is."""
    moment = _parse_time(value)
    if moment is None:
        return "-" if value is None else str(value)
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _duration(run: JSON) -> str:
    import datetime

    started = _parse_time(run.get("started_at"))
    finished = _parse_time(run.get("finished_at"))
    if finished is None and run.get("status") not in TERMINAL_STATUSES:
        finished = datetime.datetime.now(datetime.UTC)
    if started is None or finished is None:
        return "-"
    return _format_seconds((finished - started).total_seconds())


def _format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{max(seconds, 0.0):.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


# -- command table ---------------------------------------------------------------------

_TOP_LEVEL = (
    "apply",
    "job",
    "run",
    "logs",
    "exec",
    "namespace",
    "secret",
    "schedule",
    "audit",
    "daemon",
    "doctor",
)
_GROUPS = {
    "job": "list, inspect, run, delete, suspend and resume jobs",
    "run": "list, inspect, wait for, cancel and follow runs",
    "namespace": "list and prune namespaces",
    "secret": "create, list and delete encrypted namespace secrets",
    "schedule": "list schedules and their fires",
}
_GROUP_LEAVES = {
    "job": ("list", "inspect", "delete", "run", "suspend", "resume"),
    "run": ("list", "inspect", "wait", "cancel", "rerun", "events"),
    "namespace": ("list", "prune"),
    "secret": ("create", "list", "delete"),
    "schedule": ("list", "fires"),
}
_LEAVES: dict[str, tuple[str, Handler, ArgumentAdder]] = {
    "apply": ("create or update jobs from manifests", cmd_apply, _apply_arguments),
    "job list": ("list jobs", cmd_job_list, _namespace_filter),
    "job inspect": ("show a job and its spec", cmd_job_inspect, _job_inspect_arguments),
    "job delete": ("delete a job (its runs stay)", cmd_job_delete, _job_argument),
    "job run": ("start a run of the current revision", cmd_job_run, _job_run_arguments),
    "job suspend": ("stop a job's schedule fires", cmd_job_suspend, _job_argument),
    "job resume": ("restart a job's schedule fires", cmd_job_resume, _job_argument),
    "run list": ("list runs, newest first", cmd_run_list, _run_list_arguments),
    "run inspect": ("show a run", cmd_run_inspect, _run_inspect_arguments),
    "run wait": ("wait for a run; exit with its code", cmd_run_wait, _run_wait_arguments),
    "run cancel": ("cancel a pending or running run", cmd_run_cancel, _run_inspect_arguments),
    "run rerun": ("replay a run's snapshot", cmd_run_rerun, _rerun_arguments),
    "exec": ("run a recorded one-off command", cmd_exec, _exec_arguments),
    "run events": ("show a run's events", cmd_run_events, _run_events_arguments),
    "logs": ("print a run's logs", cmd_logs, _logs_arguments),
    "namespace list": ("list namespaces", cmd_namespace_list, _add_output),
    "namespace prune": ("remove finished runs", cmd_namespace_prune, _prune_arguments),
    "secret create": (
        "store a secret (value from stdin, --from-file or -v)",
        cmd_secret_create,
        _secret_create_arguments,
    ),
    "secret list": ("list secrets (names only)", cmd_secret_list, _secret_list_arguments),
    "secret delete": ("delete a secret", cmd_secret_delete, _secret_delete_arguments),
    "schedule list": ("list schedules and next fires", cmd_schedule_list, _namespace_filter),
    "schedule fires": ("show a job's recent fires", cmd_schedule_fires, _schedule_fires_arguments),
    "audit": ("who changed what, with uid and pid", cmd_audit, _audit_arguments),
    "daemon": ("run the daemon in the foreground", cmd_daemon, _daemon_arguments),
    "doctor": ("check the socket, daemon, Docker, database", cmd_doctor, _no_arguments),
}


if __name__ == "__main__":
    sys.exit(main())
