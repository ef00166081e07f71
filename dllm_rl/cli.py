"""How every command-line entry point runs: quiet third-party logging, one-line user errors, exit code 2.

    if __name__ == "__main__":
        run_main(main)

`run_main` turns absl / Orbax / TensorFlow logging down to errors before `main(argv)` runs (Orbax alone logs a
warning per parameter when restoring a model folder). A user mistake (an exception listed in `USER_ERRORS`, a
gin parse error, a missing file) is printed as one `error: ...` line on stderr and exits with code 2 and no
traceback. Any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from typing import Callable, NoReturn

from dllm_rl.checkpoint.hf import CheckpointError
from dllm_rl.models.llada import ConfigError
from dllm_rl.parallel.multihost import DistributedError
from dllm_rl.rl.config import TrainError
from dllm_rl.sampling import SamplerInputError
from dllm_rl.tokenizer import TokenizerError

USAGE_EXIT_CODE = 2
# The package's own user-error classes: each message already names the thing and the fix.
USER_ERRORS = (TrainError, CheckpointError, ConfigError, TokenizerError, SamplerInputError, DistributedError)
# Errors gin raises for a bad config file or binding (typo, syntax, missing file); only when raised inside gin.
GIN_ERRORS = (ValueError, SyntaxError, OSError)
GIN_HINT = "fix the --gin file or --gin_binding; a binding reads e.g. dllm_rl.TrainConfig.seed=1"
NOISY_LOGGERS = ("absl", "orbax", "jax._src.xla_bridge", "tensorflow")


def make_parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser whose --help shows the whole module docstring, working example included."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def mesh_flag(text: str) -> dict[str, int]:
    """The type of the --mesh flags: 'data=1,fsdp=8,tensor=1' -> {'data': 1, 'fsdp': 8, 'tensor': 1}."""
    try:
        return {k.strip(): int(v) for k, v in (kv.split("=") for kv in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give axis sizes as data=1,fsdp=8,tensor=1 "
                                         "(-1 on one axis takes the remaining devices)") from None


def add_distributed_flags(parser: argparse.ArgumentParser) -> None:
    """The multi-host flags every JAX entry point takes (passed to `jax.distributed.initialize`)."""
    group = parser.add_argument_group(
        "multi-host", "one process per host, the same command on every host; on a Cloud TPU VM the distributed "
        "runtime always starts and finds its peers itself (none of these flags needed)")
    group.add_argument("--coordinator_address", help="HOST:PORT of process 0's coordinator")
    group.add_argument("--num_processes", type=int, help="number of processes (one per host)")
    group.add_argument("--process_id", type=int, help="this process's index in [0, num_processes)")
    group.add_argument("--distributed", action="store_true",
                       help="start the distributed runtime with auto-detected arguments (Cloud TPU VM, Slurm, "
                            "Open MPI, GKE)")


def start_distributed(args: argparse.Namespace, parser: argparse.ArgumentParser) -> bool:
    """Starts JAX's distributed runtime as the flags (or a Cloud TPU VM) ask, before any device is touched."""
    from dllm_rl.parallel import multihost

    explicit = (args.coordinator_address, args.num_processes, args.process_id)
    if any(v is not None for v in explicit) and any(v is None for v in explicit):
        parser.error("--coordinator_address, --num_processes and --process_id go together")
    return multihost.start(*explicit, distributed=args.distributed)


def add_compilation_cache_flag(parser: argparse.ArgumentParser, default_help: str) -> None:
    parser.add_argument("--compilation_cache", default=None, metavar="DIR",
                        help="persistent XLA compilation cache (local or gs://), so a restart does not compile "
                             f"every program again; {default_help}")


def use_compilation_cache(directory: str | None) -> None:
    """Points JAX's persistent compilation cache at `directory` (nothing when empty or None). Programs that
    compile in under a second are not cached (JAX's default threshold)."""
    if not directory:
        return
    import jax

    jax.config.update("jax_compilation_cache_dir", directory)


def use_cpu() -> None:
    """Runs this process's arrays on the CPU backend whatever JAX_PLATFORMS says, for the file-to-file tools
    (convert, export): on a TPU VM a lone process would otherwise wait for its slice peers in TPU initialisation,
    or fail when a training job holds the chips. Call before any array is made."""
    import jax

    jax.config.update("jax_platforms", "cpu")


def quiet_third_party_logging() -> None:
    """Third-party INFO/WARNING chatter off the normal path; errors still show."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from absl import logging as absl_logging
    except ImportError:
        return
    absl_logging.set_verbosity(absl_logging.ERROR)


def _raised_in_gin(exc: BaseException) -> bool:
    """True when the innermost frame of `exc`'s traceback is gin's own code (a parse or binding error)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and f"{os.sep}gin{os.sep}" in tb.tb_frame.f_code.co_filename


def one_line(text: str) -> str:
    """A possibly multi-line message as one line."""
    return "; ".join(line.strip().rstrip(".") for line in str(text).splitlines() if line.strip())


def user_error_message(exc: BaseException) -> str | None:
    """The one-line message for a user mistake, or None when `exc` is a bug."""
    if isinstance(exc, USER_ERRORS):
        return one_line(exc)
    if isinstance(exc, GIN_ERRORS) and _raised_in_gin(exc):
        return f"{one_line(exc)}; {GIN_HINT}"
    if isinstance(exc, (FileNotFoundError, NotADirectoryError)) and exc.filename:
        fix = "; check the path" if exc.errno == errno.ENOENT and exc.strerror == os.strerror(errno.ENOENT) else ""
        return f"{exc.filename}: {exc.strerror}{fix}"
    if isinstance(exc, KeyError) and exc.args and isinstance(exc.args[0], str) and " " in exc.args[0]:
        return one_line(exc.args[0])  # the package's lookups (get_task) raise KeyError with a sentence
    return None


def run_main(main: Callable, argv: list[str] | None = None) -> NoReturn:
    """Runs `main(argv)` the CLI way and exits: its int return value, 0 for any other, 2 on a user error."""
    quiet_third_party_logging()
    try:
        result = main(argv)
    except Exception as exc:  # noqa: BLE001 - user errors become one line, everything else is re-raised
        message = user_error_message(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(USAGE_EXIT_CODE)
    sys.exit(result if isinstance(result, int) and not isinstance(result, bool) else 0)
