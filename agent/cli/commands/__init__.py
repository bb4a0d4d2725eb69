"""One module per command (or small group of commands). Each offers the operation as a function of a
loaded configuration (what the demo calls) and a `run(args)` that the parser dispatches to."""
