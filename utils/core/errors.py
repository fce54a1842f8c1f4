"""One-line user errors: raised anywhere, printed once by the script's entry point."""
import errno
import sys
from typing import Callable

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
KEPT = "finished folds and epoch checkpoints are kept; rerun the same command to resume"


class TrustSerError(Exception):
    """A mistake the user can fix; its message is the whole story, in one line."""


def is_out_of_memory(err: BaseException) -> bool:
    """torch's OutOfMemoryError (CUDA), or the RuntimeError other accelerators raise, or a host MemoryError."""
    torch = sys.modules.get("torch")        # not imported: cannot be torch's error
    if torch is not None and isinstance(err, getattr(torch, "OutOfMemoryError", ())):
        return True
    return isinstance(err, MemoryError) or (isinstance(err, RuntimeError) and "out of memory" in str(err).lower())


def explain(err: BaseException) -> str | None:
    """The one line for an error the user can act on; None for a bug (which keeps its traceback)."""
    if isinstance(err, TrustSerError):
        return " ".join(str(err).splitlines())
    if is_out_of_memory(err):
        return (f"out of memory ({type(err).__name__}); lower --batch_size (training) or --eval_batch_size "
                f"(feature passes, evaluation) and rerun: {KEPT}")
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" writing {err.filename}" if err.filename else ""
        return f"no space left on the device{where}; free some or point project_dir elsewhere: {KEPT}"
    if isinstance(err, OSError) and err.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and err.filename:
        return f"{err.filename}: {err.strerror} (check its permissions, or point project_dir / --output elsewhere)"
    return None


def run_main(main: Callable[[], None]) -> None:
    """Run a script's main(); a user error becomes one `error: ...` line on stderr and exit status 2."""
    try:
        main()
    except KeyboardInterrupt:
        print(f"interrupted: {KEPT}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as err:
        message = explain(err)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
