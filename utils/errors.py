"""One-line user errors: raised anywhere, printed once by the script's entry point."""
import sys
from typing import Callable


class TrustSerError(Exception):
    """A mistake the user can fix; its message is the whole story, in one line."""


def run_main(main: Callable[[], None]) -> None:
    """Run a script's main(); a TrustSerError becomes `error: ...` and exit status 2."""
    try:
        main()
    except TrustSerError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: finished folds and epoch checkpoints are kept; rerun to resume", file=sys.stderr)
        sys.exit(130)
