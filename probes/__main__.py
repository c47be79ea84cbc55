"""`python -m probes`: the censorscope command."""

from probes.cli import main

main()
