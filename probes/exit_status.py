"""The exit statuses of `censorscope` (a contract, DESIGN.md section 2), in one place.

0 success; 1 any other failure; 2 bad usage or bad input (the message names the file, line or
field); 3 every input was measured and stored but no control helper answered (verdicts null);
4 `censorscope verify`: the dataset was read, but some published findings do not hold when
re-derived from its measurements (or a file differs from SHA256SUMS); 130 interrupted by Ctrl-C
(128 + SIGINT, the shell's convention; what finished is stored).
"""

from __future__ import annotations

from typing import Final

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_BAD_INPUT: Final = 2
EXIT_HELPER_UNREACHABLE: Final = 3
EXIT_NOT_REPRODUCED: Final = 4
EXIT_INTERRUPTED: Final = 130
